"""Which prune targets a profile has, the method each one names, and how each is sized.

A target is one name on one model (the grammar: `pruning.spec`): the named Figure-5a configurations of the
model's rule, then the paper rule's curve (`sweep-<pct>`, and decoders' `sweep-<scoring>-<pct>`), FLAP's
(`flap-<pct>`), and the registry's methods (`<criterion>-<allocation>-<compensation>-<pct>`), at the
percentages the profile's sizing lists, then the speed targets (`joint.SpeedMethod`,
`<criterion>-<structures>-<compensation>-x<speedup>`) at the structures and speedups it lists. Everything here
reads the validated params (schema defaults already filled in, see `config.check_schema`), so no default is
restated. Where the files are: `layout`;
which files each rule reads: `pipeline`.
"""
from __future__ import annotations

import difflib
import functools
from dataclasses import dataclass, replace

from ..config import model_kind
from .joint import SpeedMethod
from .spec import ALL_METHODS, SPEED_FORM, THRESHOLD, MethodSpec, curve_of, is_speed_curve, method_of


class TargetError(ValueError):
    """A requested target that the model does not have; the message names the valid ones."""


PERCENT_RANGE = range(1, 100)  # a curve point's percentage of FFN neurons pruned: strictly between 0 and 100


@dataclass(frozen=True)
class Sizing:
    """How one target is evaluated, timed and calibrated (from `profiles.<p>.pruning`)."""

    test_limit: int          # accuracy on the first N test reviews (the dense model: every target's largest)
    baseline_limit: int      # the baselines (random seeds, uncompensated) on the first N of those
    time_limit: int          # timing on the first N of those
    batch_size: int
    repeats: int             # alternating timed passes per variant
    time_zeroed: bool        # also time the zeroed model (the paper's way), beside dense and removed
    random_seeds: int
    equality_check_reviews: int
    calibration_reviews: int
    calibration_batch_size: int  # float32 calibration passes and fitted compensations
    search_reviews: int      # validation reviews of the searched allocation's layer sensitivity
    speed_search_reviews: int  # validation reviews of the speed targets' per-layer costs (rule speed_sensitivity)
    speed_latency: str       # measured (this machine's latency table) | macs (multiply-adds; rule latency_table)


class Targets:
    """The prune targets of the active profile. `config` is the validated params.yaml."""

    def __init__(self, config: dict):
        self.pruning = config["pruning"]
        self.profile_name = config["profile"]
        self.profile = config["profiles"][config["profile"]]
        self.sizing_tree = self.profile["pruning"]
        self.named = list(self.pruning["configs"])
        self.kinds = {m: model_kind(spec, f"profiles.{config['profile']}.models.{m}")
                      for m, spec in self.profile["models"].items()}

    @property
    def models(self) -> list[str]:
        return list(self.kinds)

    def names(self, model: str) -> list[str]:
        """The model's targets: named configurations of its rule, the paper rule's curve, FLAP's, the methods'."""
        kind = self.kinds[model]
        sizing = self.sizing_tree[kind]
        named = [c for c in self.named if self.pruning["configs"][c]["rule"] == kind]
        has_sweep = kind in self.pruning.get("sweep", {})
        sweep = [f"sweep-{p}" for p in sizing["sweep"]] if has_sweep else []
        if has_sweep and kind == "decoder":
            sweep += [f"sweep-{v}-{p}" for v in self.pruning["sweep"]["decoder_scorings"]
                      for p in sizing.get("scoring_sweep", [])]
        flap = [f"flap-{p}" for p in sizing.get("flap", [])]
        methods = sizing.get("methods", {})
        curves = methods.get("curves", [])  # <criterion>-<allocation>-<compensation>; `all` is the full grid
        return named + sweep + flap + [f"{c}-{p}" for c in (ALL_METHODS if curves == "all" else curves)
                                       for p in methods.get("percents", [])] + (
            self.speed_names(model) if self.sizing_tree["speed_targets"] else [])

    def speed_names(self, model: str) -> list[str]:
        """The model's speed points: per group of `profiles.<p>.pruning.<kind>.speed.points`, every structure at
        every speedup, with the model's speed criteria and `pruning.speed`'s compensation. Targets of the run
        where `profiles.<p>.pruning.speed_targets` says so."""
        ffn, head = self.speed_criteria(model)
        compensation = self.pruning["speed"]["compensation"]
        return [SpeedMethod(head if s == "heads" else ffn, s, compensation, x, head).name
                for group in self.sizing_tree[self.kinds[model]]["speed"]["points"]
                for s in group["structures"] for x in group["speedups"]]

    def speed_criteria(self, model: str) -> tuple[str, str]:
        """The (FFN, head) criteria of the model's speed points: its kind's `speed` sizing, else `pruning.speed`'s."""
        kind, p = self.sizing_tree[self.kinds[model]]["speed"], self.pruning["speed"]
        return tuple(kind.get(k, p[k]) for k in ("ffn_criterion", "head_criterion"))

    def pairs(self) -> list[tuple[str, str]]:
        """Every (model, target) of the profile."""
        return [(m, t) for m in self.models for t in self.names(m)]

    def check_name(self, model: str, name: str) -> None:
        """A TargetError unless `name` is a target `model` can have: a named configuration of its rule,
        or a point <curve>-<pct> of one of its curves with pct in 1..99 (the profile's lists need not hold
        it: any such point can be asked for). Called by the input functions, so a bad name given to
        `snakemake` stops the DAG before any job, with the valid names."""
        curve, pct = curve_of(name)
        if pct is not None and pct not in PERCENT_RANGE:
            raise TargetError(f"{name}: {pct}% is outside the valid range 1..99 (a whole percentage of FFN "
                              f"neurons pruned, strictly between 0 and 100); e.g. {curve}-50")
        if curve == "named" and name not in self.pruning["configs"]:
            names = self.names(model)
            close = difflib.get_close_matches(name, names, n=1, cutoff=0.8)
            listed = ", ".join(names[:40]) + (f" ... ({len(names) - 40} more)" if len(names) > 40 else "")
            curves = "sweep, " + ("sweep-prenorm, sweep-gain, " if self.kinds[model] == "decoder" else "") + "flap"
            raise TargetError(
                f"{name!r} is not a prune target of {model}" + (f" (did you mean {close[0]!r}?)" if close else "")
                + f". Its targets in profile {self.profile_name}: {listed}. Besides these, any point "
                f"<curve>-<pct> with pct in 1..99 of the curves {curves} or <criterion>-<allocation>-<compensation> "
                f"(docs/PRUNING.md), e.g. flap-50, and any speed target {SPEED_FORM}")
        try:
            self.spec(model, name)  # a configuration of the other rule; a scoring encoders lack
        except ValueError as err:
            raise TargetError(str(err)) from None

    def checked_spec(self, model: str, name: str) -> MethodSpec:
        """`spec` of a name asked for from outside (a Snakemake target): one that is no target of the model
        raises TargetError with the valid names (`check_name`), before any job."""
        self.check_name(model, name)
        return self.spec(model, name)

    def check_config(self, name: str) -> None:
        """A TargetError unless `name` is a configuration under pruning.configs (a DVC metrics file's name)."""
        if name not in self.pruning["configs"]:
            close = difflib.get_close_matches(name, self.named, n=1, cutoff=0.8)
            raise TargetError(f"{name!r} is not a configuration under pruning.configs"
                              + (f" (did you mean {close[0]!r}?)" if close else "")
                              + f"; the DVC metrics files are results/metrics/<profile>/prune/<name>.json for {self.named}")

    def models_for(self, name: str) -> list[str]:
        """Models of the profile that a named configuration applies to (none: the name has no target here)."""
        if name not in self.pruning["configs"]:
            raise KeyError(f"{name!r} is not a configuration under pruning.configs; choose one of {self.named}")
        return [m for m in self.models if self.kinds[m] == self.pruning["configs"][name]["rule"]]

    def named_with_models(self) -> list[str]:
        return [c for c in self.named if self.models_for(c)]

    @functools.cache  # noqa: B019 (one Targets per workflow load; the input functions ask for each spec often)
    def spec(self, model: str, name: str) -> MethodSpec | SpeedMethod:
        """The method a target name spells on this model, its aliases resolved with params.yaml's settings."""
        kind = self.kinds[model]
        curve, pct = curve_of(name)
        configs = self.pruning["configs"]
        if is_speed_curve(curve):
            spec = SpeedMethod.parse(name)
            if spec.fitted:  # the ridges of the registry's fitted methods
                methods = self.pruning["methods"]
                spec = replace(spec, ridge=methods["ridge"], readout_ridge=methods["readout_ridge"])
            return spec
        if curve.startswith("sweep"):
            if kind not in self.pruning.get("sweep", {}):
                raise ValueError(f"no pruning.sweep.{kind} configuration: {name} does not exist for {model}")
            base = configs[self.pruning["sweep"][kind]]
            scoring = curve.split("-", 1)[1] if "-" in curve else base.get("scoring", "paper")
            if scoring != "paper" and kind != "decoder":
                raise ValueError(f"{name}: decoder scorings apply to decoders only (an encoder has no final norm)")
            spec = MethodSpec.threshold_rule(base, alias=curve, target=pct / 100, scoring=scoring)
        elif curve == "flap":
            spec = MethodSpec.flap(pct / 100, **self.pruning["flap"])
        elif method_of(curve):
            spec = MethodSpec(*method_of(curve), target=pct / 100)
        elif name in configs:
            spec = MethodSpec.threshold_rule(configs[name], alias=name)
        else:
            raise KeyError(f"{name!r} is neither a configuration under pruning.configs nor a curve point "
                           f"(sweep-<pct>, flap-<pct>, <criterion>-<allocation>-<compensation>-<pct>)")
        if spec.allocation == THRESHOLD and spec.rule != kind:
            raise ValueError(f"configuration {name!r} is for {spec.rule} models; {model} is a {kind}")
        return spec.with_params(self.pruning)

    def sizing(self, model: str, name: str | None = None) -> Sizing:
        """Evaluation and timing sizes; curve points may time fewer reviews (`sweep_time_limit`). The FLAP,
        method and speed points are evaluated on the first `headline_limit` test reviews and their baselines on the
        first `test_limit`; without a name, the sizes of the model's dense evaluation (the largest)."""
        tree = self.sizing_tree
        kind = tree[self.kinds[model]]
        time_limit = kind.get("time_limit", kind["test_limit"])
        curve = curve_of(name)[0] if name is not None else None
        curve_point = curve is not None and curve != "named"
        if curve_point:
            time_limit = kind.get("sweep_time_limit", time_limit)
        method = curve is not None and (method_of(curve) is not None or is_speed_curve(curve))
        seeds = kind["methods"]["random_seeds"] if method else kind["random_seeds"]
        headline = curve is None or curve == "flap" or method
        return Sizing(test_limit=kind.get("headline_limit", kind["test_limit"]) if headline else kind["test_limit"],
                      baseline_limit=kind["test_limit"], time_limit=time_limit, batch_size=tree["batch_size"],
                      repeats=tree["repeats"], time_zeroed=tree["time_zeroed"] == "all" or not curve_point,
                      random_seeds=seeds, equality_check_reviews=kind["equality_check_reviews"],
                      calibration_reviews=kind["calibration_reviews"], calibration_batch_size=tree["calibration_batch_size"],
                      search_reviews=kind["methods"]["search_reviews"],
                      speed_search_reviews=kind["speed"]["search_reviews"], speed_latency=kind["speed"]["latency"])

    def random_seeds(self, model: str, name: str | None = None) -> list[int]:
        return list(range(self.sizing(model, name).random_seeds))

    def flap_fractions(self, model: str) -> list[float]:
        return [p / 100 for p in self.sizing_tree[self.kinds[model]].get("flap", [])]
