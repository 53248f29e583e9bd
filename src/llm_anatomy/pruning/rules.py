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

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

RULES = ("encoder", "decoder")
SIDES = ("two", "one")


class RuleError(ValueError):
    """A pruning configuration that cannot be applied; the message names the value and the fix."""


def resolve_focusing(spec, num_layers: int) -> list[int]:
    """Focusing layers for a model of `num_layers` layers, from a symbolic or explicit spec.

    even-from-third+last   the even layers l with ceil(L/3) <= l < L-1, plus the last layer
                           (L=12: 4,6,8,10,11 -- the paper's BERT set)
    last-N/12              the last ceil(N * L / 12) layers (L=12: the last N -- the paper's GPT-2 sets)
    [i, j, ...]            these layers exactly (each must be < L)
    """
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
        layers = np.arange(L, dtype=np.float64)
        if self.kind == "encoder":
            t = self.alpha * c[:L] + k * self.beta * layers
            t[L - 1] = self.alpha * c[L - 1]
        else:
            t = k * self.alpha * c[:L]
        return t


def prune_masks(scores: Sequence[np.ndarray], thresholds: Sequence[float], sides: Sequence[str]) -> list[np.ndarray]:
    """Per layer, the sorted indices of the neurons the thresholds prune."""
    out = []
    for s, t, side in zip(scores, thresholds, sides):
        s = np.asarray(s, dtype=np.float64)
        hit = np.abs(s) < t if side == "two" else s < t
        out.append(np.flatnonzero(hit))
    return out


def apply_rule(rule: ThresholdRule, c, scores) -> tuple[np.ndarray, list[np.ndarray]]:
    L = len(scores)
    t = rule.thresholds(c, L)
    return t, prune_masks(scores, t, rule.sides(L))


def layer_table(rule: ThresholdRule, c, scores, thresholds, pruned, high: float) -> pd.DataFrame:
    """One row per layer: the Figure-4a numbers (threshold, neurons masked) and context."""
    L = len(scores)
    sides = rule.sides(L)
    rows = []
    for l in range(L):
        width = len(scores[l])
        rows.append(dict(layer=l, c=float(c[l]), focusing=l in rule.focusing, threshold=float(thresholds[l]),
                         sided=sides[l], width=width, masked=len(pruned[l]),
                         masked_pct=100.0 * len(pruned[l]) / width,
                         high=int((np.asarray(scores[l]) > high).sum())))
    return pd.DataFrame(rows)


def figure4a_lines(table: pd.DataFrame) -> list[str]:
    """The paper's log format: 'Threshold of layer l are between t and -t number of neurons ...'."""
    lines = []
    for r in table.itertuples():
        if r.sided == "two":
            lines.append(f"Threshold of layer {r.layer} are between {r.threshold:.6g} and {-r.threshold:.6g} "
                         f"number of neurons being masked in layer {r.layer}: {r.masked}")
        else:
            lines.append(f"Threshold of layer {r.layer} is {r.threshold:.6g} "
                         f"number of neurons being masked in layer {r.layer}: {r.masked}")
    return lines


def rule_from_config(cfg: dict, num_layers: int, focus_multiplier: float) -> ThresholdRule:
    """A ThresholdRule from one params.yaml configuration (focusing resolved for this depth); a
    configuration's own `focus_multiplier` wins over the global `pruning.focus_multiplier` given."""
    return ThresholdRule(kind=cfg["rule"], alpha=float(cfg.get("alpha", 0.0)), beta=float(cfg.get("beta", 0.0) or 0.0),
                         focusing=tuple(resolve_focusing(cfg.get("focusing", "none"), num_layers)),
                         focus_multiplier=float(cfg.get("focus_multiplier", focus_multiplier)),
                         sided=cfg.get("sided", "two"), last_sided=cfg.get("last_sided"))
