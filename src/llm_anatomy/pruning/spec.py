"""A pruning method as one record (`MethodSpec`), and the target names that spell it.

A target is one method on one model. Its name is the method's, or an alias that resolves into one
(`pruning.targets.Targets.spec` reads the aliases' settings from params.yaml):

  <criterion>-<allocation>-<compensation>-<pct>  the registry's methods at pct% of all FFN neurons:
                         criteria `pruning.criteria`, allocations `pruning.allocation`, compensations
                         `pruning.compensation` (e.g. fluctuation-searched-refit-70)
  flap-<pct>             FLAP (An et al. 2024): fluctuation-<pruning.flap.allocation>-bias-<pct> (or -none-)
  sweep-<pct>            the paper's threshold rule (criterion cosine, allocation threshold), alpha bisected to
                         prune pct%; the other settings from the configuration pruning.sweep.<encoder|decoder>
  sweep-<scoring>-<pct>  decoders: the same in another decoder scoring (docs/ANATOMY.md)
  <config>               a named Figure-5a configuration (pruning.configs): the threshold rule at its own alpha
  <criterion>-<ffn|heads|joint>-<compensation>-x<speedup>  a speed target (`joint.SpeedMethod`): FFN neurons,
                         attention heads or both pruned to meet a speedup on this machine's latency table
                         (a joint target with another head criterion: <ffn criterion>+<head criterion>-joint-...)

A method parameter is a field with `param` metadata: the key under params.yaml's `pruning` it is read from,
and the methods it applies to (only those read it, so changing it reruns exactly their plans). The command
line offers every such field as an option, with the schema's default and description.
No torch and no file access here: the workflow reads this module when it loads.
"""
from __future__ import annotations

import functools
import itertools
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace

from .allocation import ALLOCATIONS
from .compensation import FITTED, METHODS as COMPENSATIONS
from .criteria import CRITERIA

THRESHOLD = "threshold"  # the paper's rules' allocation: per-layer thresholds t_l on the cosine scores


def _alternatives(names) -> str:
    return "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))


METHOD_RE = rf"({_alternatives(CRITERIA)})-({_alternatives(ALLOCATIONS)})-({_alternatives(COMPENSATIONS)})"
# obs ranks within a layer (its removal order), so its global cut equals its uniform one: one curve, not two
ALL_METHODS = [f"{c}-{a}-{m}" for c, a, m in itertools.product(CRITERIA, ALLOCATIONS, COMPENSATIONS)
               if not (c == "obs" and a == "global")]
CURVE_ORDER = {"named": 0, "sweep": 1, "sweep-prenorm": 2, "sweep-gain": 3, "flap": 4}
CURVE_PATTERN = rf"(?:{'|'.join(list(CURVE_ORDER)[1:])}|{METHOD_RE.replace('(', '(?:')})-\d+"  # a curve point


STRUCTURES = ("ffn", "heads", "joint")  # what a speed target prunes: FFN neurons, attention heads, or both
SPEED = "speed"  # a speed target's allocation and family: per-layer choices under the latency budget (`allocate`)
# <criterion>[+<head criterion>]-<structures>-<compensation>-x<speedup>, the criteria read loosely (no torch, so the
# workflow recognises a speed name when it loads); `SpeedMethod.parse` checks each part against its registry
SPEED_PATTERN = (rf"(?P<criterion>[a-z0-9][a-z0-9_-]*?)(?:\+(?P<head>[a-z0-9][a-z0-9_-]*?))?-(?P<structures>"
                 rf"{'|'.join(STRUCTURES)})-(?P<compensation>{_alternatives(COMPENSATIONS)})-x(?P<speedup>.*)")
SPEED_FORM = ("<criterion>-<ffn|heads|joint>-<compensation>-x<speedup> (a joint plan whose heads follow another "
              "criterion: <ffn criterion>+<head criterion>-joint-...), e.g. fluctuation-joint-refit-x1.6")


def speed_curve(name: str) -> str | None:
    """The curve of a speed target's name (the name without -x<speedup>), else None. Only the grammar is read:
    `SpeedMethod.parse` says what is wrong with a name that has the form but not valid parts."""
    m = re.fullmatch(SPEED_PATTERN, name)
    return name[: name.rindex("-x")] if m else None


def is_speed_curve(curve: str) -> bool:
    """Whether `curve` (`spec.curve_of`'s) is a speed target's."""
    return speed_curve(f"{curve}-x2") == curve


def curve_of(name: str) -> tuple[str, int | None]:
    """(curve, target percentage) of a curve point's name (curve: sweep, sweep-<scoring>, flap, or a method
    <criterion>-<allocation>-<compensation>); (the name without -x<speedup>, None) of a speed target's
    (`joint.SpeedMethod`, `speed_curve`), else ('named', None)."""
    if (speed := speed_curve(name)) is not None:
        return speed, None
    if not re.fullmatch(CURVE_PATTERN, name):
        return "named", None
    curve, pct = name.rsplit("-", 1)
    return curve, int(pct)


def method_of(curve: str) -> tuple[str, str, str] | None:
    """(criterion, allocation, compensation) of a method curve, else None."""
    m = re.fullmatch(METHOD_RE, curve)
    return m.groups() if m else None


def curve_order(curve: str) -> int:
    """Sort key of curves in tables and comparisons: the paper's, then FLAP, then the registry's methods."""
    return CURVE_ORDER.get(curve, len(CURVE_ORDER))


def _param(key: str, applies: Callable[["MethodSpec"], bool]):
    return field(default=None, metadata=dict(param=key, applies=applies))


def _threshold(s: "MethodSpec") -> bool:
    return s.allocation == THRESHOLD


class MethodRecord:
    """What a plan's method (`MethodSpec`, `joint.SpeedMethod`: dataclasses with a `compensation`) offers the plan:
    whether its compensation is fitted, and its record as a dict of the fields that are set."""

    @property
    def fitted(self) -> bool:
        """Whether the compensation is fitted on calibration reviews when the plan is materialised."""
        return self.compensation in FITTED

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, d: dict):
        return cls(**d)


@dataclass(frozen=True)
class MethodSpec(MethodRecord):
    """Which neurons a method prunes and how it compensates: the plan's whole input besides the scores."""

    criterion: str                  # ranks the neurons (pruning.criteria); the threshold rules: cosine
    allocation: str                 # uniform | global | searched | threshold
    compensation: str = "none"      # none | bias | rescale | refit
    target: float | None = None     # fraction of all FFN neurons; None: a named threshold rule at its own alpha
    # method parameters read from params.yaml's `pruning` section (see the module doc)
    ridge: float | None = _param("methods.ridge", lambda s: s.compensation in FITTED)
    readout_ridge: float | None = _param("methods.readout_ridge", lambda s: s.compensation in FITTED)
    max_layer_fraction: float | None = _param("methods.max_layer_fraction", lambda s: s.allocation == "global")
    focus_multiplier: float | None = _param("focus_multiplier", _threshold)  # a configuration's own wins
    negative_alpha: bool | None = _param("sweep.negative_alpha", lambda s: _threshold(s) and s.target is not None)
    # the threshold rule's configuration (pruning.configs; pruning.rules)
    rule: str | None = None         # encoder | decoder
    alpha: float | None = None
    beta: float | None = None
    focusing: str | list | None = None
    sided: str | None = None
    last_sided: str | None = None
    scoring: str | None = None      # decoder scoring of the cosine (default paper)
    alias: str | None = None        # flap | sweep | sweep-<scoring> | a configuration's name

    def __post_init__(self):
        checks = (("criterion", CRITERIA), ("allocation", (*ALLOCATIONS, THRESHOLD)),
                  ("compensation", COMPENSATIONS))
        for key, valid in checks:
            if getattr(self, key) not in valid:
                raise ValueError(f"{key} {getattr(self, key)!r} is not one of {sorted(valid)}")
        if self.target is not None and not 0.0 < self.target < 1.0:
            raise ValueError(f"target {self.target}: give the fraction of FFN neurons to prune, in (0, 1)")
        for key in ("ridge", "readout_ridge"):
            if (getattr(self, key) or 0) < 0:
                raise ValueError(f"{key} {getattr(self, key)}: a ridge is a non-negative multiple of the mean "
                                 "Gram diagonal, e.g. 0.01")

    # ---- the aliases -------------------------------------------------------------------------
    @classmethod
    def flap(cls, target: float, allocation: str, bias_compensation: bool) -> "MethodSpec":
        """FLAP: the fluctuation criterion with its mean-output fold (or none)."""
        return cls("fluctuation", allocation, "bias" if bias_compensation else "none", target, alias="flap")

    @classmethod
    def threshold_rule(cls, config: dict, alias: str, target: float | None = None, **extra) -> "MethodSpec":
        """A threshold rule from one `pruning.configs` entry (`target`: alpha bisected to reach it)."""
        keys = ("rule", "focus_multiplier", "alpha", "beta", "focusing", "sided", "last_sided", "scoring")
        return cls("cosine", THRESHOLD, target=target, alias=alias, **{**{k: config[k] for k in keys if k in config},
                                                                       **extra})

    def with_params(self, pruning: dict) -> "MethodSpec":
        """The method parameters that apply to this method, from params.yaml's `pruning` section (a value the
        record already holds, such as a configuration's own focus_multiplier, wins)."""
        return self.with_values({name: functools.reduce(dict.__getitem__, key.split("."), pruning)
                                 for name, key in method_params()})

    def with_values(self, values: dict) -> "MethodSpec":
        """The method parameters in `values` (name -> value) that apply to this method and it does not hold yet."""
        applies = {f.name: f.metadata["applies"] for f in fields(self) if "param" in f.metadata}
        return replace(self, **{k: v for k, v in values.items() if getattr(self, k) is None and applies[k](self)})

    # ---- names ---------------------------------------------------------------------------------
    @property
    def named(self) -> bool:
        return self.allocation == THRESHOLD and self.target is None

    @property
    def curve(self) -> str:
        return "named" if self.named else self.alias or f"{self.criterion}-{self.allocation}-{self.compensation}"

    @property
    def name(self) -> str:
        """The target name: the configuration's, or <curve>-<pct>."""
        return self.alias if self.named else f"{self.curve}-{round(100 * self.target)}"

    @property
    def family(self) -> str:
        """What metrics.json calls the rule: encoder | decoder (threshold rules), flap, or criterion (the rest)."""
        return self.rule if self.allocation == THRESHOLD else "flap" if self.alias == "flap" else "criterion"



def method_params() -> list:
    """The MethodSpec fields read from params.yaml (name, `pruning` key): the command line's method options."""
    return [(f.name, f.metadata["param"]) for f in fields(MethodSpec) if "param" in f.metadata]
