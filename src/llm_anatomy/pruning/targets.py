"""Which prune targets a profile has, and what each one needs: the logic behind workflow/rules/prune*.smk.

A target is one name on one model:
  <name>       a named Figure-5a configuration under `pruning.configs` (for models of its rule's kind)
  sweep-<pct>  the paper rule, alpha bisected to prune pct% of all FFN neurons
  sweep-<scoring>-<pct>  decoders only: the same in another decoder scoring (`pruning.sweep.
               decoder_scorings`, at the sizing's `scoring_sweep` percentages; docs/ANATOMY.md)
  flap-<pct>   FLAP at pct% (every model)
  <criterion>-<allocation>-<compensation>-<pct>   a method of the registry at pct% (the Pareto sweep:
               `pruning.criteria`, `allocation.ALLOCATIONS`, `compensation.METHODS`; curves and percentages
               from the sizing's `methods`), e.g. fluctuation-uniform-refit-70

Everything here reads the validated params (schema defaults already filled in, see
`config.check_schema`), so no default is restated.
"""
from __future__ import annotations

import difflib
import itertools
import re
from dataclasses import dataclass

from ..config import model_kind
from .compensation import METHODS as COMPENSATIONS
from .criteria import CRITERIA, SOURCES
from .allocation import ALLOCATIONS
from .plan import FITTED


def _alternatives(names) -> str:
    return "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))


METHOD_PATTERN = rf"(?:{_alternatives(CRITERIA)})-(?:{_alternatives(ALLOCATIONS)})-(?:{_alternatives(COMPENSATIONS)})"
# obs ranks within a layer (its removal order), so its global cut equals its uniform one: one curve, not two
ALL_METHODS = [f"{c}-{a}-{m}" for c, a, m in itertools.product(CRITERIA, ALLOCATIONS, COMPENSATIONS)
               if not (c == "obs" and a == "global")]
CURVE_ORDER = {"named": 0, "sweep": 1, "sweep-prenorm": 2, "sweep-gain": 3, "flap": 4}


class TargetError(ValueError):
    """A requested target that the model does not have; the message names the valid ones."""


PERCENT_RANGE = range(1, 100)  # a curve point's percentage of FFN neurons pruned: strictly between 0 and 100


def curve_of(name: str) -> tuple[str, int | None]:
    """(curve, target percentage) for a curve point's name (curve: sweep, sweep-<scoring>, flap, or a
    method <criterion>-<allocation>-<compensation>), else ('named', None)."""
    m = re.fullmatch(rf"(sweep|sweep-prenorm|sweep-gain|flap|{METHOD_PATTERN})-(\d+)", name)
    return (m.group(1), int(m.group(2))) if m else ("named", None)


def curve_order(curve: str) -> int:
    """Sort key of curves in tables and comparisons: the paper's, then FLAP, then the registry's methods."""
    return CURVE_ORDER.get(curve, len(CURVE_ORDER))


def method_of(curve: str) -> tuple[str, str, str] | None:
    """(criterion, allocation, compensation) of a method curve, else None."""
    m = re.fullmatch(rf"({_alternatives(CRITERIA)})-({_alternatives(ALLOCATIONS)})-({_alternatives(COMPENSATIONS)})",
                     curve)
    return (m.group(1), m.group(2), m.group(3)) if m else None


@dataclass(frozen=True)
class Sizing:
    """How one target is evaluated and timed (from `profiles.<p>.pruning`)."""

    test_limit: int          # accuracy on the first N test reviews (the dense model: every target's largest)
    baseline_limit: int      # the baselines (random seeds, uncompensated) on the first N of those
    time_limit: int          # timing on the first N of those
    batch_size: int
    repeats: int             # alternating timed passes per variant
    time_zeroed: bool        # also time the zeroed model (the paper's way), beside dense and removed
    random_seeds: int
    equality_check_reviews: int
    calibration_reviews: int


class PruneTargets:
    """The prune targets of the active profile and the files each one reads and writes.
    `config` is the validated params.yaml; `results` the profile's results folder (results/<profile>)."""

    def __init__(self, config: dict, results: str = ""):
        self.config = config
        self.results = results or f"results/{config['profile']}"
        self.pruning = config["pruning"]
        self.profile = config["profiles"][config["profile"]]
        self.sizing_tree = self.profile["pruning"]
        self.named = list(self.pruning["configs"])
        self.kinds = {m: model_kind(spec, f"profiles.{config['profile']}.models.{m}")
                      for m, spec in self.profile["models"].items()}

    @property
    def models(self) -> list[str]:
        return list(self.kinds)

    def names(self, model: str) -> list[str]:
        """The model's targets: named configurations of its rule, then the paper rule's curve, then FLAP's."""
        kind = self.kinds[model]
        sizing = self.sizing_tree[kind]
        named = [c for c in self.named if self.pruning["configs"][c]["rule"] == kind]
        has_sweep = kind in self.pruning.get("sweep", {})
        sweep = [f"sweep-{p}" for p in sizing["sweep"]] if has_sweep else []
        if has_sweep and kind == "decoder":
            sweep += [f"sweep-{v}-{p}" for v in self.pruning["sweep"]["decoder_scorings"]
                      for p in sizing.get("scoring_sweep", [])]
        flap = [f"flap-{p}" for p in sizing.get("flap", [])]
        return named + sweep + flap + [f"{c}-{p}" for c in self.method_curves(model)
                                       for p in sizing.get("methods", {}).get("percents", [])]

    def method_curves(self, model: str) -> list[str]:
        """The model's method curves (<criterion>-<allocation>-<compensation>); `all` is the full grid."""
        curves = self.sizing_tree[self.kinds[model]].get("methods", {}).get("curves", [])
        return list(ALL_METHODS) if curves == "all" else list(curves)

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
                + f". Its targets in profile {self.config['profile']}: {listed}. Besides these, any point "
                f"<curve>-<pct> with pct in 1..99 of the curves {curves} or <criterion>-<allocation>-<compensation> "
                "(docs/PRUNING.md), e.g. flap-50")
        try:
            self.rule_config(model, name)  # a configuration of the other rule; a scoring encoders lack
        except ValueError as err:
            raise TargetError(str(err)) from None

    def models_for(self, name: str) -> list[str]:
        """Models of the profile that a named configuration applies to (none: the name has no target here)."""
        if name not in self.pruning["configs"]:
            raise KeyError(f"{name!r} is not a configuration under pruning.configs; choose one of {self.named}")
        return [m for m in self.models if self.kinds[m] == self.pruning["configs"][name]["rule"]]

    def named_with_models(self) -> list[str]:
        return [c for c in self.named if self.models_for(c)]

    def rule_config(self, model: str, name: str) -> dict:
        """The plan's configuration: the named one, or the curve's, with `target` as a fraction."""
        kind = self.kinds[model]
        curve, pct = curve_of(name)
        if curve.startswith("sweep"):
            if kind not in self.pruning.get("sweep", {}):
                raise ValueError(f"no pruning.sweep.{kind} configuration: {name} does not exist for {model}")
            base = self.pruning["configs"][self.pruning["sweep"][kind]]
            scoring = curve.split("-", 1)[1] if "-" in curve else base.get("scoring", "paper")
            if scoring != "paper" and kind != "decoder":
                raise ValueError(f"{name}: decoder scorings apply to decoders only (an encoder has no final norm)")
            cfg = dict(self.pruning["configs"][self.pruning["sweep"][kind]], target=pct / 100,
                       negative_alpha=self.pruning["sweep"]["negative_alpha"], scoring=scoring)
        elif curve == "flap":
            cfg = dict(rule="flap", target=pct / 100, **self.pruning["flap"])
        elif method_of(curve):
            criterion, allocation, compensation = method_of(curve)
            cfg = dict(rule="criterion", criterion=criterion, allocation=allocation, compensation=compensation,
                       target=pct / 100)
            if compensation in FITTED:  # only fitted plans read the ridge: the others must not rerun when it changes
                cfg["ridge"] = self.pruning["methods"]["ridge"]
                cfg["readout_ridge"] = self.pruning["methods"]["readout_ridge"]
        elif name in self.pruning["configs"]:
            cfg = dict(self.pruning["configs"][name])
        else:
            raise KeyError(f"{name!r} is neither a configuration under pruning.configs nor a curve point "
                           f"(sweep-<pct>, flap-<pct>)")
        if cfg["rule"] not in (kind, "flap", "criterion"):
            raise ValueError(f"configuration {name!r} is for {cfg['rule']} models; {model} is a {kind}")
        if cfg["rule"] in ("encoder", "decoder"):  # only the threshold rules read k: the others must not rerun when it changes
            cfg.setdefault("focus_multiplier", self.pruning["focus_multiplier"])
        return cfg

    def needs_ffn_stats(self, name: str) -> bool:
        curve = curve_of(name)[0]
        return curve == "flap" or method_of(curve) is not None

    def needs_train(self, name: str) -> bool:
        """Whether the target's compensation is fitted on calibration reviews (materialise, baselines)."""
        method = method_of(curve_of(name)[0])
        return method is not None and method[2] in FITTED

    def compensated(self, model: str, name: str) -> bool:
        cfg = self.rule_config(model, name)
        if cfg["rule"] == "criterion":
            return cfg["compensation"] != "none"
        return cfg["rule"] == "flap" and bool(cfg.get("bias_compensation"))

    def sizing(self, model: str, name: str | None = None) -> Sizing:
        """Evaluation and timing sizes; curve points may time fewer reviews (`sweep_time_limit`). The FLAP and
        method points are evaluated on the first `headline_limit` test reviews and their baselines on the
        first `test_limit`; without a name, the sizes of the model's dense evaluation (the largest)."""
        tree = self.sizing_tree
        kind = tree[self.kinds[model]]
        time_limit = kind.get("time_limit", kind["test_limit"])
        curve = curve_of(name)[0] if name is not None else None
        curve_point = curve is not None and curve != "named"
        if curve_point:
            time_limit = kind.get("sweep_time_limit", time_limit)
        seeds = kind["random_seeds"]
        if curve is not None and method_of(curve):
            seeds = kind["methods"]["random_seeds"]
        headline = curve is None or curve == "flap" or method_of(curve) is not None
        return Sizing(test_limit=kind.get("headline_limit", kind["test_limit"]) if headline else kind["test_limit"],
                      baseline_limit=kind["test_limit"], time_limit=time_limit,
                      batch_size=tree["batch_size"], repeats=tree["repeats"],
                      time_zeroed=tree["time_zeroed"] == "all" or not curve_point, random_seeds=seeds,
                      equality_check_reviews=kind["equality_check_reviews"],
                      calibration_reviews=kind["calibration_reviews"])

    def random_seeds(self, model: str, name: str | None = None) -> list[int]:
        return list(range(self.sizing(model, name).random_seeds))

    # ---- files (the layout docs/PRUNING.md draws) ------------------------------------------
    def target_dir(self, model: str, target: str) -> str:
        return f"{self.results}/{model}/prune/{target}"

    def pruned_dir(self, model: str, target: str) -> str:
        return f"{self.results}/pruned/{model}/{target}"

    def plan_inputs(self, model: str, target: str) -> dict[str, str]:
        """Scores for every plan; the calibration statistics for FLAP and the methods, what a method's
        criterion measures besides, and the validation sensitivity for a searched allocation."""
        self.check_name(model, target)  # every target's files are built from its plan: one check covers them
        r = f"{self.results}/{model}"
        inputs = dict(layer_scores=f"{r}/layer_scores.parquet", neuron_scores=f"{r}/neuron_scores.parquet")
        if self.needs_ffn_stats(target):
            inputs["ffn_stats"] = f"{r}/ffn_stats.parquet"
        method = method_of(curve_of(target)[0])
        if method:
            inputs.update(self.criterion_inputs(model, method[0]))
            if method[1] == "searched":
                inputs["sensitivity"] = self.sensitivity_file(model, method[0])
        return inputs

    def criterion_inputs(self, model: str, criterion: str) -> dict[str, str]:
        """What a criterion's importances are computed from: the neuron scores (cosine), the calibration
        statistics (and their means, for the bias fold), and what the criterion measures besides."""
        r = f"{self.results}/{model}"
        inputs = dict(neuron_scores=f"{r}/neuron_scores.parquet", ffn_stats=f"{r}/ffn_stats.parquet")
        files = {SOURCES[n] for n in CRITERIA[criterion].needs}
        for key, name in (("mask_gradients", "mask_gradients.parquet"), ("obs_scores", "obs_scores.parquet"),
                          ("contributions", "anatomy/contributions.parquet")):
            if name in files:
                inputs[key] = f"{r}/{name}"
        return inputs

    def sensitivity_file(self, model: str, criterion: str) -> str:
        """The validation evidence the searched allocation reads (one per model and criterion)."""
        return f"{self.results}/{model}/choices/sensitivity_{criterion}.parquet"

    def metrics_inputs(self, model: str, target: str, split: str = "test") -> dict[str, str]:
        """Every file one target's metrics.json is built from."""
        d = self.target_dir(model, target)
        return dict(plan=f"{d}/plan.parquet", random_plans=f"{d}/random_plans.parquet",
                    pruned=self.pruned_dir(model, target), dense_eval=f"{self.results}/{model}/eval_{split}.parquet",
                    eval=f"{d}/eval_{split}.parquet", baselines=f"{d}/baselines_{split}.parquet",
                    timing=f"{d}/timing.json")

    def metrics_file(self, model: str, target: str) -> str:
        return f"{self.target_dir(model, target)}/metrics.json"

    def config_metrics_inputs(self, name: str) -> list[str]:
        """The per-model metrics a named configuration's DVC metrics file gathers."""
        if name not in self.pruning["configs"]:
            close = difflib.get_close_matches(name, self.named, n=1, cutoff=0.8)
            raise TargetError(f"{name!r} is not a configuration under pruning.configs"
                              + (f" (did you mean {close[0]!r}?)" if close else "")
                              + f"; the DVC metrics files are metrics/prune/<name>.json for {self.named}")
        return [self.metrics_file(m, name) for m in self.models_for(name)]

    def all_metrics(self) -> list[str]:
        return [self.metrics_file(m, t) for m, t in self.pairs()]

    def all_outcomes(self, split: str = "test") -> list[str]:
        """Every target's per-review logits (pruned model and baselines): what method comparisons pair."""
        return [f"{self.target_dir(m, t)}/{kind}_{split}.parquet" for m, t in self.pairs()
                for kind in ("eval", "baselines")]

    def all_pruned_dirs(self) -> list[str]:
        return [self.pruned_dir(m, t) for m, t in self.pairs()]

    def choice_files(self) -> list[str]:
        """The validation-split evidence for FLAP's allocation, per model with FLAP points."""
        return [f"{self.results}/{m}/choices/flap_allocation.csv" for m in self.models
                if self.sizing_tree[self.kinds[m]].get("flap")]

    def benchmark_files(self, model: str, target: str) -> dict[str, str]:
        """The benchmark records of what one point costs before evaluation: its plan and materialise jobs, and
        the per-model calibration passes it reads (shared by every point of the model)."""
        d, r = self.target_dir(model, target), f"{self.results}/{model}/benchmarks"
        files = dict(plan=f"{d}/benchmarks/plan.tsv", materialise=f"{d}/benchmarks/materialise.tsv")
        inputs = self.plan_inputs(model, target)
        if "ffn_stats" in inputs:
            files["ffn_stats"] = f"{r}/ffn_stats.tsv"
        for job in ("mask_gradients", "obs_scores"):
            if job in inputs:
                files[job] = f"{r}/{job}.tsv"
        if "sensitivity" in inputs:
            files["layer_sensitivity"] = f"{r}/sensitivity_{method_of(curve_of(target)[0])[0]}.tsv"
        return files

    def flap_fractions(self, model: str) -> list[float]:
        return [p / 100 for p in self.sizing_tree[self.kinds[model]].get("flap", [])]

    def final_outputs(self) -> list[str]:
        """What `snakemake` builds for the prune stage: the DVC metrics per named configuration, every
        pruned folder, the summary and Figures 4/5, the validation evidence of the method settings, and
        what DVC compares across experiments (headline metrics, data plots)."""
        r = self.results
        return ([f"{r}/metrics/prune/{c}.json" for c in self.named_with_models()] + self.all_pruned_dirs()
                + self.choice_files()
                + [f"{r}/summary.csv", f"{r}/summary.md", f"{r}/comparisons.csv", f"{r}/frontier.csv",
                   f"{r}/figures/prune_pareto.png", f"{r}/figures/prune_accuracy.png",
                   f"{r}/figures/prune_time.png", f"{r}/metrics/headline.json", f"{r}/plots/prune_accuracy.csv",
                   f"{r}/plots/prune_speedup.csv"])
