"""The per-target metrics record (metrics.json), built only from the step artifacts.

`PruneMetrics` is the one definition of the keys: each field's `doc` says what it holds and
which artifact it comes from. docs/PRUNING.md points here rather than restating them.
Accuracies are recomputed from the per-review logits, so every number can be paired on the
same reviews later.
"""
from __future__ import annotations

import logging
import re
from dataclasses import asdict, dataclass, field, fields

import numpy as np
import pandas as pd

from ..io import from_record, read_json, write_json
from ..layout import folder_file
from ..logits import read_logits
from ..stats import accuracy_interval, correct, paired_difference, seeded_accuracy, seeded_difference
from .joint import SpeedMethod
from .plan import PlanInfo, read_plan
from .spec import THRESHOLD, curve_of

log = logging.getLogger(__name__)


def _f(doc: str, default=None):
    return field(default=default, metadata={"doc": doc})


@dataclass
class Measured:
    """The timing fields that timing.json and metrics.json share: each key defined once, here."""

    machine: dict = _f("CPU model and bf16 features, threads, device, torch version of the timing run")
    loop: dict | None = _f("the evaluation loop's parts in the timed runs: fused FFN input maps, read-token-only "
                           "last block, weight dtype (docs/SPEED.md); None in timings made before it was recorded")
    timed_reviews: int = _f("reviews per timed pass (the first of the test reviews)", 0)
    batch_size: int = _f("inference batch size (length-sorted, dynamically padded)", 0)
    precision: str = _f("fp32 | bf16 (backbone weights stored in bf16), as the checkpoint was fine-tuned", "fp32")
    repeats: int = _f("alternating timed passes per variant", 0)
    times_s: dict = _f("seconds of every timed pass, per variant (dense, zeroed, removed)")
    time_dense_s: float = _f("median seconds, dense", 0.0)
    time_zeroed_s: float | None = _f("median seconds, zeroed (the paper's way); null where not timed (sizing time_zeroed)")
    time_removed_s: float = _f("median seconds, physically removed", 0.0)
    speedup_zeroed: float | None = _f("time_dense_s / time_zeroed_s; null where not timed")
    speedup_removed: float = _f("time_dense_s / time_removed_s", 0.0)
    speedup_zeroed_spread: dict | None = _f("min, median, max over repeats of the per-repeat ratio dense/zeroed; null where "
                                            "not timed")
    speedup_removed_spread: dict = _f("min, median, max over repeats of the per-repeat ratio dense/removed")
    zeroed_vs_removed_max_abs_logit_diff_fp32: float = _f("float32 check that zeroing and removal agree", 0.0)
    macs_dense: int = _f("multiply-adds of the dense backbone over the timed reviews", 0)
    macs_removed: int = _f("the same for the removed model", 0)
    macs_ratio: float = _f("macs_removed / macs_dense", 0.0)
    speedup_bound: float = _f("1 / macs_ratio: the speedup if time followed multiply-adds", 0.0)
    ffn_macs_dense: int = _f("FFN multiply-adds of the dense model over the timed reviews", 0)
    ffn_macs_removed: int = _f("the same for the removed model", 0)
    roofline: dict | None = _f("this machine's attainable matmul rate at the dense model's linear shapes, measured "
                               "in the timing job (llm_anatomy.roofline); null on a GPU")
    roofline_fraction_dense: float | None = _f("2 macs_dense / time_dense_s / attainable rate")
    roofline_fraction_zeroed: float | None = _f("the same for zeroed (dense multiply-adds: zeroing removes none)")
    roofline_fraction_removed: float | None = _f("2 macs_removed / time_removed_s / attainable rate")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict):
        return from_record(cls, d)


@dataclass
class Timing(Measured):
    """timing.json: one target's dense, zeroed (where timed) and removed models timed side by side."""

    equality_check_reviews: int = _f("reviews the float32 check of zeroed against removed ran on", 0)
    params_dense: int = _f("parameters of the dense classifier", 0)
    params_removed: int = _f("parameters of the removed classifier", 0)
    seconds: float = _f("the whole timing step, loading and checks included", 0.0)


@dataclass
class PruneMetrics(Measured):

    # identity
    model: str = _f("model name (profiles.<p>.models)")
    target: str = _f("named Figure-5a configuration, sweep-<pct>, flap-<pct>, <criterion>-<allocation>-"
                     "<compensation>-<pct> or a speed target <criterion>-<structures>-<compensation>-x<speedup>")
    curve: str = _f("named | sweep | sweep-<scoring> | flap | <criterion>-<allocation>-<compensation> | "
                    "<criterion>-<structures>-<compensation> (speed targets)")
    arch: str = _f("bert | gpt2 | llama")
    # the plan (plan.parquet)
    rule: str = _f("encoder | decoder (the paper's threshold rules) | flap | criterion (the registry's methods) | "
                   "speed (speed targets)")
    alpha: float | None = _f("threshold rules: alpha (bisected for sweep points)")
    beta: float | None = _f("encoder rule: beta")
    focusing: list | None = _f("threshold rules: focusing layer indices")
    focusing_spec: object = _f("threshold rules: focusing as configured")
    focus_multiplier: float | None = _f("threshold rules: k_l on focusing layers")
    sides: list | None = _f("threshold rules: two | one per layer")
    allocation: str | None = _f("flap and the registry's methods: uniform | global")
    criterion: str | None = _f("the registry's methods and speed targets that prune neurons: the criterion ranking "
                               "the neurons (llm_anatomy.pruning.criteria)")
    compensation: str = _f("none | bias (mean-output fold) | rescale | refit (fitted on calibration tokens)", "none")
    ridge: float | None = _f("rescale/refit: the relative ridge of the fit")
    readout_ridge: float | None = _f("rescale/refit: the relative ridge of the last layer's fit (on the read token)")
    bias_compensation: bool = _f("whether the pruned neurons' mean output is folded into the output bias", False)
    thresholds: list | None = _f("per layer: t_l (threshold rules) or the highest pruned fluctuation score (flap)")
    search: dict | None = _f("sparsity search: target_fraction, alpha, pruned, reached")
    neurons_total: int = _f("FFN neurons of the dense model", 0)
    neurons_pruned: int = _f("FFN neurons the plan prunes", 0)
    pruned_pct: float = _f("100 x neurons_pruned / neurons_total", 0.0)
    pruned_per_layer: list = _f("per layer: neurons pruned")
    pruned_pct_per_layer: list = _f("per layer: % of the layer's neurons pruned")
    # speed targets only (null otherwise): the plan met a speedup on this machine's latency table
    structures: str | None = _f("speed targets: ffn | heads | joint, what the plan prunes")
    head_criterion: str | None = _f("speed targets that prune heads: the head criterion ranking them")
    target_speedup: float | None = _f("speed targets: the speedup asked of the latency table")
    predicted_speedup: float | None = _f("speed targets: the latency table's predicted speedup of the plan (compare "
                                         "speedup_removed, measured)")
    predicted_cost: float | None = _f("speed targets: the summed per-layer cost the allocation minimised, under "
                                      "`objective`")
    objective: str | None = _f("speed targets: margin (mean |first-order margin change|) | loss (estimated "
                               "cross-entropy increase) on the validation search reviews")
    heads_total: int | None = _f("speed targets: attention (query) heads of the dense model")
    heads_pruned: int | None = _f("speed targets: attention heads the plan prunes")
    # accuracy (eval_<split>.parquet of the dense model and of the pruned folder; baselines_<split>.parquet).
    # Every accuracy has a 95% interval (_lo, _hi); every gap is paired on the same reviews, with its
    # interval and an unadjusted p-value (_p): exact McNemar against one model, the combined seeds-and-reviews
    # test against a random baseline's seeds (llm_anatomy.stats). Verdicts, adjusted over a family of
    # targets, are the report's (summary.csv), not this record's.
    split: str = _f("split the accuracies are measured on", "test")
    test_reviews: int = _f("reviews accuracy, accuracy_dense and gap_dense are measured on (the first of the split)", 0)
    baseline_reviews: int = _f("reviews the baselines (random seeds, uncompensated) are measured on: the first "
                               "of test_reviews, and every gap against a baseline is paired on them", 0)
    accuracy_dense: float = _f("dense fine-tuned model", 0.0)
    accuracy_dense_lo: float = _f("95% bootstrap interval of accuracy_dense, low end", 0.0)
    accuracy_dense_hi: float = _f("95% bootstrap interval of accuracy_dense, high end", 0.0)
    accuracy: float = _f("the materialised (physically pruned) model, as reloaded from its folder", 0.0)
    accuracy_lo: float = _f("95% bootstrap interval of accuracy, low end", 0.0)
    accuracy_hi: float = _f("95% bootstrap interval of accuracy, high end", 0.0)
    gap_dense: float = _f("accuracy - accuracy_dense (paired)", 0.0)
    gap_dense_lo: float = _f("95% paired bootstrap interval of gap_dense, low end", 0.0)
    gap_dense_hi: float = _f("95% paired bootstrap interval of gap_dense, high end", 0.0)
    gap_dense_p: float = _f("exact McNemar p-value, pruned vs dense", 1.0)
    accuracy_random: list = _f("random baseline per seed (the plan's per-layer counts, high neurons kept; speed "
                               "targets: random heads in the plan's head configurations and neurons drawn among all, "
                               "so it has the plan's shapes), treated as the plan is (compensated the same way when it is)")
    accuracy_random_mean: float = _f("mean of accuracy_random", 0.0)
    accuracy_random_std: float = _f("sample standard deviation of accuracy_random over seeds (0 for one seed)", 0.0)
    accuracy_random_lo: float = _f("95% interval of accuracy_random_mean over seeds and reviews "
                                   "(stats.seeded_accuracy), low end", 0.0)
    accuracy_random_hi: float = _f("the interval's high end", 0.0)
    gap_random: float = _f("accuracy - accuracy_random_mean on the baseline reviews: what the plan's choice of "
                           "neurons is worth, same treatment on both sides", 0.0)
    gap_random_lo: float = _f("95% interval of gap_random over seeds and reviews, reviews paired "
                              "(stats.seeded_difference), low end", 0.0)
    gap_random_hi: float = _f("the interval's high end", 0.0)
    gap_random_p: float = _f("two-sided p-value of gap_random = 0, the test its interval inverts (unadjusted)", 1.0)
    random_seeds: list = _f("seeds of the random baseline")
    # compensated plans only (null otherwise): selection and compensation separated
    accuracy_uncompensated: float | None = _f("the same neurons removed without compensation")
    accuracy_uncompensated_lo: float | None = _f("95% bootstrap interval of accuracy_uncompensated, low end")
    accuracy_uncompensated_hi: float | None = _f("the interval's high end")
    gap_compensation: float | None = _f("accuracy - accuracy_uncompensated on the baseline reviews: what "
                                        "compensation adds (paired)")
    gap_compensation_lo: float | None = _f("95% paired interval of gap_compensation, low end")
    gap_compensation_hi: float | None = _f("the interval's high end")
    gap_compensation_p: float | None = _f("exact McNemar p-value, compensated vs uncompensated")
    accuracy_random_uncompensated: list | None = _f("random baseline per seed without compensation")
    accuracy_random_uncompensated_mean: float | None = _f("mean of accuracy_random_uncompensated")
    accuracy_random_uncompensated_lo: float | None = _f("95% interval over seeds and reviews, low end")
    accuracy_random_uncompensated_hi: float | None = _f("the interval's high end")
    gap_selection: float | None = _f("accuracy_uncompensated - accuracy_random_uncompensated_mean: the choice of "
                                     "neurons alone, neither side compensated")
    gap_selection_lo: float | None = _f("95% interval of gap_selection over seeds and reviews, low end")
    gap_selection_hi: float | None = _f("the interval's high end")
    gap_selection_p: float | None = _f("two-sided p-value of gap_selection = 0, the test its interval inverts "
                                       "(unadjusted)")
    # the pruned folder (pruned/<model>/<target>/pruning.json)
    params_dense: int = _f("parameters of the dense classifier", 0)
    params_removed: int = _f("parameters of the materialised classifier", 0)
    model_bytes: int = _f("size on disk of the materialised folder", 0)
    model_bytes_dense: int = _f("size on disk of the fine-tuned folder", 0)
    # cost of each step (from the artifacts' own records)
    seconds_materialise: float = _f("seconds to load, prune and save the folder", 0.0)
    seconds_evaluate: float = _f("seconds of inference to evaluate the pruned folder", 0.0)
    seconds_baselines: float = _f("seconds to evaluate every baseline variant", 0.0)
    seconds_time: float = _f("seconds of the timing step, loading and checks included", 0.0)
    # what one point costs before evaluation, from the jobs' Snakemake benchmark files (wall seconds)
    seconds_plan: float | None = _f("the plan job: scoring and allocation (process start included)")
    seconds_materialise_job: float | None = _f("the materialise job: compensation, removal and saving "
                                               "(process start and model load included)")
    seconds_point: float | None = _f("seconds_plan + seconds_materialise_job: scoring, allocation and compensation "
                                     "of this point")
    seconds_calibration: float | None = _f("the per-model jobs the plan reads (ffn_stats, mask_gradients, "
                                           "obs_scores, layer_sensitivity; speed targets: latency_table, head_stats, "
                                           "speed_sensitivity), shared by the model's points")


def cost_fields(benchmarks: dict[str, str] | None) -> dict:
    """The seconds_* cost fields from the Snakemake benchmark files by job (wall seconds: column `s`, first
    row) of plan, materialise, and the per-model jobs the plan read (`Pipeline.benchmark_inputs`)."""
    if not benchmarks:
        return {}
    sec = {}
    for job, path in benchmarks.items():
        df = pd.read_csv(path, sep="\t")
        if "s" not in df.columns or df.empty:
            raise ValueError(f"{path} is not a Snakemake benchmark file (no `s` column); rerun the job that writes it")
        sec[job] = float(df["s"].iloc[0])
    shared = [s for job, s in sec.items() if job not in ("plan", "materialise")]
    return dict(seconds_plan=sec.get("plan"), seconds_materialise_job=sec.get("materialise"),
                seconds_point=sec["plan"] + sec["materialise"] if {"plan", "materialise"} <= sec.keys() else None,
                seconds_calibration=sum(shared) if shared else None)


def plan_fields(info: PlanInfo) -> dict:
    """The plan's fields of PruneMetrics, as the metrics have always named them: the threshold rules report their
    rule and alpha (no allocation, no criterion), FLAP its allocation (the criterion is its name), the registry's
    methods criterion, allocation and compensation, and a fitted compensation its ridges."""
    s, r = info.spec, info.rule or {}
    if isinstance(s, SpeedMethod):
        search = info.search
        return dict(rule=s.family, compensation=s.compensation, criterion=s.ffn_criterion, ridge=s.ridge if s.fitted else None,
                    readout_ridge=(s.ridge if s.readout_ridge is None else s.readout_ridge) if s.fitted else None,
                    bias_compensation=s.compensation == "bias", thresholds=info.thresholds, search=search,
                    structures=s.structures, head_criterion=s.head_criterion, target_speedup=s.speedup,
                    predicted_speedup=search["predicted_speedup"], predicted_cost=search["predicted_cost"],
                    objective=search["objective"], heads_pruned=search["heads_pruned"])
    threshold = s.allocation == THRESHOLD
    return dict(rule=s.family, alpha=r.get("alpha"), beta=r.get("beta"), focusing=r.get("focusing"),
                focusing_spec=s.focusing if threshold else None, focus_multiplier=r.get("focus_multiplier"),
                sides=r.get("sides"), allocation=None if threshold else s.allocation,
                criterion=s.criterion if s.family == "criterion" else None, compensation=s.compensation,
                ridge=s.ridge if s.fitted else None,
                readout_ridge=(s.ridge if s.readout_ridge is None else s.readout_ridge) if s.fitted else None,
                bias_compensation=s.compensation == "bias", thresholds=info.thresholds, search=info.search)


def prune_metrics(plan, random_plans, pruned, dense_eval, eval, baselines, timing, metrics, model_name: str,
                  target: str, split: str = "test", **benchmarks) -> None:
    """Rule prune_metrics: one target's PruneMetrics record from its step artifacts, and the seconds_* costs
    from the benchmark files of its jobs (`benchmark_<job>` keywords)."""
    the_plan = read_plan(plan)
    dense_df, _ = read_logits(dense_eval)
    pruned_df, pruned_info = read_logits(eval)
    base_df, base_info = read_logits(baselines)
    # The dense evaluation covers the model's largest limit, the target its own, the baselines the first of
    # those: each comparison pairs the first reviews both sides have (`review` is the row of the split).
    dense_df = dense_df.iloc[:len(pruned_df)]
    for name, df in (("pruned", pruned_df), ("baselines", base_df)):
        for variant, part in (df.groupby("variant") if "variant" in df else [(name, df)]):
            n = len(part)
            if n > len(dense_df) or not (np.array_equal(part["review"].to_numpy(), dense_df["review"].to_numpy()[:n])
                                         and np.array_equal(part["label"].to_numpy(), dense_df["label"].to_numpy()[:n])):
                raise ValueError(f"{variant}: its {n} reviews are not the first of the dense evaluation {dense_eval} "
                                 f"and of the target's {len(pruned_df)}; rerun the evaluations on the same split")
    outcomes = {v: correct(part["logit"], part["label"]) for v, part in base_df.groupby("variant")}
    seeds = sorted(int(m.group(1)) for v in outcomes if (m := re.fullmatch(r"random-(\d+)", v)))
    evidence = accuracy_evidence(correct(dense_df["logit"], dense_df["label"]),
                                 correct(pruned_df["logit"], pruned_df["label"]), outcomes, seeds)
    folder = read_json(folder_file(pruned, "pruning"))
    measured = Timing.from_dict(read_json(timing))
    widths = [int(w) for w in the_plan.table["width"]]
    counts = the_plan.counts
    m = PruneMetrics(
        **{f.name: getattr(measured, f.name) for f in fields(Measured)}, **plan_fields(the_plan.info), **evidence,
        **cost_fields({k.removeprefix("benchmark_"): v for k, v in benchmarks.items()}),
        model=model_name, target=target, curve=curve_of(target)[0],
        arch=read_json(folder_file(pruned, "meta"))["arch"], neurons_total=sum(widths),
        neurons_pruned=sum(counts), pruned_pct=100.0 * sum(counts) / sum(widths), pruned_per_layer=counts,
        pruned_pct_per_layer=[100.0 * n / w for n, w in zip(counts, widths)], split=split, test_reviews=len(dense_df),
        heads_total=int(the_plan.table["heads"].sum()) if the_plan.pruned_heads is not None else None,
        baseline_reviews=len(base_df) // len(outcomes),
        random_seeds=seeds, params_dense=folder["params_dense"], params_removed=folder["params_pruned"],
        model_bytes=folder["bytes"], model_bytes_dense=folder["bytes_dense"],
        seconds_materialise=folder["seconds"], seconds_evaluate=pruned_info.get("seconds", 0.0),
        seconds_baselines=base_info.get("seconds", 0.0), seconds_time=measured.seconds)
    write_json(metrics, m.to_dict())
    log.info("%s/%s: pruned %.1f%%, accuracy %.4f (dense %.4f, random %.4f +- %.4f), speedup removed %.3fx",
             m.model, m.target, m.pruned_pct, m.accuracy, m.accuracy_dense, m.accuracy_random_mean,
             m.accuracy_random_std, m.speedup_removed)


def accuracy_evidence(dense: np.ndarray, pruned: np.ndarray, variants: dict[str, np.ndarray],
                      seeds: list[int]) -> dict:
    """The accuracy fields of PruneMetrics from per-review 0/1 outcomes: the dense and pruned models (same
    reviews), and the baseline variants by name (random-<seed>[-uncompensated], uncompensated), on the first
    of those reviews."""
    if not seeds:
        raise ValueError("no random-<seed> variant among the baselines; rerun evaluate_pruned")
    out = {}
    out.update(accuracy_interval(dense).to_dict("accuracy_dense"))
    out.update(accuracy_interval(pruned).to_dict("accuracy"))
    out.update(paired_difference(pruned, dense).to_dict("gap_dense"))
    pruned = pruned[:len(variants[f"random-{seeds[0]}"])]  # the baselines' reviews
    rand = np.stack([variants[f"random-{s}"] for s in seeds])
    out["accuracy_random"] = [float(r.mean()) for r in rand]
    out["accuracy_random_std"] = float(np.std(out["accuracy_random"], ddof=1)) if len(seeds) > 1 else 0.0
    out.update(seeded_accuracy(rand).to_dict("accuracy_random_mean", bounds="accuracy_random"))
    out.update(seeded_difference(pruned, rand).to_dict("gap_random"))
    if "uncompensated" in variants:
        unc = variants["uncompensated"]
        rand_unc = np.stack([variants[f"random-{s}-uncompensated"] for s in seeds])
        out.update(accuracy_interval(unc).to_dict("accuracy_uncompensated"))
        out.update(paired_difference(pruned, unc).to_dict("gap_compensation"))
        out["accuracy_random_uncompensated"] = [float(r.mean()) for r in rand_unc]
        out.update(seeded_accuracy(rand_unc).to_dict("accuracy_random_uncompensated_mean",
                                                      bounds="accuracy_random_uncompensated"))
        out.update(seeded_difference(unc, rand_unc).to_dict("gap_selection"))
    return out
