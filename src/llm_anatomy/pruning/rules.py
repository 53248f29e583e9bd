"""The paper's per-layer pruning thresholds, as reconstructed from its Figure 4a log.

Notation (docs/PRUNING.md): L layers; c[l] = mean cosine between the target token entering
layer l (hidden state l; c[0] is the embedding output) and the final target token;
s[l][j] = mean score of neuron j of layer l; F = focusing layers; k_l = `focus_multiplier`
if l is in F else 1.

  encoder: t_l = alpha * c_l + k_l * beta * l  for l < L-1, prune when |s_lj| < t_l;
           last layer t = alpha * c_{L-1}, prune when s_lj < t (one-sided).
  decoder: t_l = k_l * alpha * c_l, prune when |s_lj| < t_l (a negative t prunes nothing).
"""
from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

RULES = ("encoder", "decoder")
SIDES = ("two", "one")


class RuleError(ValueError):
    """A pruning configuration that cannot be applied; the message names the value and the fix."""


def resolve_focusing(spec, num_layers: int) -> list[int]:
    """Focusing layers for a model of `num_layers` layers, from a symbolic or explicit spec.

    even-from-third+last   the even layers l with ceil(L/3) <= l < L-1, plus the last layer
                           (L=12: 4,6,8,10,11 -- the paper's BERT set)
    last-N/12              the last ceil(N * L / 12) layers (L=12: the last N -- the paper's GPT-2 sets)
    [i, j, ...]            these layers exactly (each must be < L)"""
    L = int(num_layers)
    if isinstance(spec, str):
        if spec == "even-from-third+last":
            start = math.ceil(L / 3)
            return sorted({l for l in range(start, L - 1) if l % 2 == 0} | {L - 1})
        if spec.startswith("last-") and spec.endswith("/12"):
            try:
                n = int(spec[len("last-"):-len("/12")])
            except ValueError:
                n = -1
            if 1 <= n <= 12:
                count = min(L, math.ceil(n * L / 12))
                return list(range(L - count, L))
        if spec == "none":
            return []
        raise RuleError(f"focusing: {spec!r} is not understood; use even-from-third+last, last-N/12 "
                        "(N in 1..12), none, or a list of layer indices")
    layers = sorted(set(int(x) for x in spec))
    bad = [l for l in layers if not 0 <= l < L]
    if bad:
        raise RuleError(f"focusing layers {bad} do not exist in a model of {L} layers (valid: 0..{L - 1}); "
                        "use a symbolic spec such as even-from-third+last or last-N/12, which scales with depth")
    return layers


@dataclass(frozen=True)
class ThresholdRule:
    kind: str                       # encoder | decoder
    alpha: float
    beta: float = 0.0               # encoder only
    focusing: tuple[int, ...] = ()  # resolved layer indices
    focus_multiplier: float = 3.0
    sided: str = "two"              # two: |s| < t; one: s < t
    last_sided: str | None = None   # None: the rule's default (encoder one, decoder two)

    def __post_init__(self):
        if self.kind not in RULES:
            raise RuleError(f"rule: {self.kind!r} is not one of {RULES}")
        for name in ("sided", "last_sided"):
            v = getattr(self, name)
            if v is not None and v not in SIDES:
                raise RuleError(f"{name}: {v!r} is not one of {SIDES}")

    def with_alpha(self, alpha: float) -> "ThresholdRule":
        return replace(self, alpha=float(alpha))

    def sides(self, num_layers: int) -> list[str]:
        last = self.last_sided or ("one" if self.kind == "encoder" else "two")
        return [self.sided] * (num_layers - 1) + [last]

    def thresholds(self, c: Sequence[float], num_layers: int) -> np.ndarray:
        """t_l for l = 0..L-1 from the layer scores c (length >= L; c[l] = hidden state l)."""
        c = np.asarray(c, dtype=np.float64)
        L = int(num_layers)
        if len(c) < L:
            raise RuleError(f"{len(c)} layer scores given for a model of {L} layers (need L or L+1)")
        k = np.array([self.focus_multiplier if l in self.focusing else 1.0 for l in range(L)])
        if self.kind == "encoder":
            t = self.alpha * c[:L] + k * self.beta * np.arange(L, dtype=np.float64)
            t[L - 1] = self.alpha * c[L - 1]
        else:
            t = k * self.alpha * c[:L]
        return t


def apply_rule(rule: ThresholdRule, c, scores) -> tuple[np.ndarray, list[np.ndarray]]:
    """The thresholds t_l and, per layer, the sorted indices of the neurons they prune."""
    L = len(scores)
    t = rule.thresholds(c, L)
    as64 = (np.asarray(s, dtype=np.float64) for s in scores)
    return t, [np.flatnonzero(np.abs(s) < tl if side == "two" else s < tl) for s, tl, side in zip(as64, t, rule.sides(L))]


def layer_table(rule: ThresholdRule, c, scores, thresholds, pruned, high: float) -> pd.DataFrame:
    """One row per layer: the Figure-4a numbers (threshold, neurons masked) and context."""
    sides = rule.sides(len(scores))
    return pd.DataFrame([dict(layer=l, c=float(c[l]), focusing=l in rule.focusing, threshold=float(thresholds[l]),
                              sided=sides[l], width=len(scores[l]), masked=len(pruned[l]),
                              masked_pct=100.0 * len(pruned[l]) / len(scores[l]), high=int((np.asarray(scores[l]) > high).sum()))
                         for l in range(len(scores))])


def figure4a_lines(table: pd.DataFrame) -> list[str]:
    """The paper's log format: 'Threshold of layer l are between t and -t number of neurons ...'."""
    return [(f"Threshold of layer {r.layer} are between {r.threshold:.6g} and {-r.threshold:.6g} " if r.sided == "two"
             else f"Threshold of layer {r.layer} is {r.threshold:.6g} ")
            + f"number of neurons being masked in layer {r.layer}: {r.masked}" for r in table.itertuples()]


def rule_from_spec(spec, num_layers: int) -> ThresholdRule:
    """The ThresholdRule of a threshold-rule MethodSpec, its focusing resolved for this depth."""
    extra = {} if spec.focus_multiplier is None else dict(focus_multiplier=float(spec.focus_multiplier))
    return ThresholdRule(kind=spec.rule, alpha=float(spec.alpha or 0.0), beta=float(spec.beta or 0.0),
                         focusing=tuple(resolve_focusing(spec.focusing or "none", num_layers)),
                         sided=spec.sided or "two", last_sided=spec.last_sided, **extra)


# ---- target sparsity: the alpha at which a rule prunes a wanted fraction of all FFN neurons ----------------
# The pruned count is a step function of alpha, non-decreasing wherever c_l >= 0 (every threshold grows with
# alpha). Bisection over alpha (everything else fixed) stops when the count equals round(target * total), or
# when the bracket is narrower than float precision (then the count is within the one step it straddles, at
# most one neuron per layer). The paper's alpha is non-negative, so by default the search stays in alpha >= 0:
# a target below what alpha = 0 already prunes (the encoder's beta term prunes on its own) is reported as not
# reached, at alpha = 0, rather than met with a negative alpha the paper never used (`negative_alpha` lifts it).
def bisect_alpha(rule: ThresholdRule, c, scores, target_fraction: float, max_iter: int = 200,
                 negative_alpha: bool = False) -> tuple[float, int, bool]:
    """(alpha, pruned count, reached) for the wanted fraction of all neurons."""
    if not 0.0 <= target_fraction <= 1.0:
        raise ValueError(f"target fraction {target_fraction} is outside [0, 1]; give a fraction such as 0.5")
    total = sum(len(s) for s in scores)
    want = int(round(target_fraction * total))

    def count(alpha: float) -> int:
        return sum(len(p) for p in apply_rule(rule.with_alpha(alpha), c, scores)[1])

    hi = 0.05
    while count(hi) < want and hi < 1e6:
        hi *= 2
    lo = -hi if negative_alpha else 0.0
    while negative_alpha and count(lo) > want and lo > -1e6:
        lo *= 2
    n_lo, n_hi = count(lo), count(hi)
    reachable = n_lo <= want <= n_hi
    for _ in range(max_iter if reachable else 0):
        if n_hi == want:
            return float(hi), n_hi, True
        if n_lo == want:
            return float(lo), n_lo, True
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        n_mid = count(mid)
        if n_mid < want:
            lo, n_lo = mid, n_mid
        else:
            hi, n_hi = mid, n_mid
    best, n = (hi, n_hi) if abs(n_hi - want) <= abs(n_lo - want) else (lo, n_lo)
    if not reachable:
        log.warning("target %.1f%% (%d neurons) is out of this rule's reach (%d..%d neurons for alpha in "
                    "[%g, %g]); using alpha=%g and reporting the target as not reached", 100 * target_fraction, want,
                    n_lo, n_hi, lo, hi, best)
    return float(best), n, reachable and abs(n - want) <= len(scores)
