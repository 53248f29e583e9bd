"""Prune one fine-tuned classifier under one configuration and evaluate it.

Accuracy and wall-clock time on the test reviews for the dense model, the zeroed model
(the paper's way: same shapes) and the physically smaller model, timed alternately in
one process (warm-up first, median of `repeats`), so their ratios are trustworthy on a
noisy machine; then the random baseline over several seeds; then parameter and
multiply-add counts before and after.

Two kinds of plan choose the neurons: the paper's threshold rules (`encoder`, `decoder`,
on the neuron scores s_lj) and FLAP (`flap`, on calibration activation statistics, with
the removed neurons' mean output folded into the bias).
"""
from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from ..batching import encode
from ..evaluate import accuracy, predict_logits
from ..models import load_classifier, set_threads
from ..scores import mean_layer_scores, mean_neuron_scores
from ..surgery import remove_masked, zero_masked
from .calibration import read_stats
from .costs import count_parameters, ffn_macs, forward_macs
from .flap import compensate_bias, flap_masks, fluctuation_scores, score_thresholds
from .random_baseline import random_masks
from .rules import apply_rule, figure4a_lines, layer_table, rule_from_config
from .search import bisect_alpha

log = logging.getLogger(__name__)


@dataclass
class EvalSettings:
    test_limit: int | None = None   # first N test reviews (None: all)
    time_limit: int | None = None   # time on the first N of those (None: all); accuracy stays on all
    batch_size: int = 32
    repeats: int = 3                # timed passes per variant (median reported)
    random_seeds: int = 3
    threads: int | None = None
    high_threshold: float = 0.35
    average_over: str = "probe"     # input_set the layer scores are averaged over
    equality_check_reviews: int = 8  # reviews on which zeroed and removed logits are compared (float32)

    @classmethod
    def from_dict(cls, d: dict) -> "EvalSettings":
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**known)


@dataclass
class Plan:
    """Which neurons one configuration prunes, and how it got there."""

    pruned: list[np.ndarray]
    table: pd.DataFrame              # one row per layer (Figure-4a shape for the threshold rules)
    info: dict                       # the configuration's own metrics (alpha, focusing, ... or allocation)
    log_lines: list[str] = field(default_factory=list)
    bias_means: list[np.ndarray] | None = None  # per-neuron mean activations to fold into the bias (FLAP)


def load_scores(layer_path, neuron_path, input_set: str = "probe") -> tuple[np.ndarray, list[np.ndarray]]:
    return mean_layer_scores(layer_path, input_set=input_set), mean_neuron_scores(neuron_path)


def plan_threshold(cfg: dict, c, scores, focus_multiplier: float = 3.0, high: float = 0.35) -> Plan:
    """The paper's rule (alpha bisected when cfg has `target`): thresholds t_l, |s_lj| < t_l pruned."""
    L = len(scores)
    rule = rule_from_config(cfg, L, focus_multiplier)
    search = None
    if cfg.get("target") is not None:
        alpha, n, reached = bisect_alpha(rule, c, scores, float(cfg["target"]))
        rule = rule.with_alpha(alpha)
        search = dict(target_fraction=float(cfg["target"]), alpha=alpha, pruned=n, reached=reached)
    t, pruned = apply_rule(rule, c, scores)
    table = layer_table(rule, c, scores, t, pruned, high)
    info = dict(rule=rule.kind, alpha=rule.alpha, beta=rule.beta, focusing=list(rule.focusing),
                focusing_spec=cfg.get("focusing"), focus_multiplier=rule.focus_multiplier, sides=rule.sides(L),
                thresholds=[float(x) for x in t], search=search)
    return Plan(pruned, table, info, figure4a_lines(table))


def plan_flap(cfg: dict, stats_path, scores, high: float = 0.35) -> Plan:
    """FLAP: the lowest fluctuation scores, `cfg['target']` of all neurons, allocated per cfg."""
    if stats_path is None:
        raise ValueError("rule flap needs the calibration statistics (ffn_stats.parquet); none were given")
    if cfg.get("target") is None:
        raise ValueError("rule flap needs a target fraction of neurons to prune (e.g. target: 0.5)")
    means, var, vnorm = read_stats(stats_path)
    if [len(v) for v in var] != [len(s) for s in scores]:
        raise ValueError(f"{stats_path}: {[len(v) for v in var]} neurons per layer do not match the neuron scores' "
                         f"{[len(s) for s in scores]}; rebuild both from the same checkpoint")
    allocation = cfg.get("allocation", "uniform")
    f = fluctuation_scores(var, vnorm)
    pruned = flap_masks(f, float(cfg["target"]), allocation)
    cut = score_thresholds(f, pruned)
    table = pd.DataFrame([dict(layer=l, threshold=cut[l], width=len(f[l]), masked=len(pruned[l]),
                               masked_pct=100.0 * len(pruned[l]) / len(f[l]),
                               high=int((np.asarray(scores[l]) > high).sum()),
                               high_masked=int((np.asarray(scores[l])[pruned[l]] > high).sum()))
                          for l in range(len(f))])
    compensate = bool(cfg.get("bias_compensation", True))
    info = dict(rule="flap", allocation=allocation, bias_compensation=compensate, thresholds=cut,
                search=dict(target_fraction=float(cfg["target"]), pruned=int(sum(len(p) for p in pruned)),
                            reached=True))
    lines = [f"layer {r.layer}: fluctuation threshold {r.threshold:.6g}, neurons pruned {r.masked} of {r.width}"
             for r in table.itertuples()]
    return Plan(pruned, table, info, lines, means if compensate else None)


def make_plan(cfg: dict, c, scores, ffn_stats_path=None, focus_multiplier: float = 3.0, high: float = 0.35) -> Plan:
    if cfg["rule"] == "flap":
        return plan_flap(cfg, ffn_stats_path, scores, high)
    return plan_threshold(cfg, c, scores, focus_multiplier, high)


def pruned_copy(model, pruned, how: str, bias_means=None):
    """A deep copy of `model` with the `pruned` neurons zeroed or removed (bias compensated first when given)."""
    out = copy.deepcopy(model)
    if bias_means is not None:
        compensate_bias(out.adapter, pruned, bias_means)
    (zero_masked if how == "zeroed" else remove_masked)(out.adapter, pruned)
    return out


def time_variants(variants: dict, encoded, pad_id, batch_size, precision, padding_side, repeats):
    """Median seconds per variant over `repeats` alternating passes (rotating order), and first logits."""
    names = list(variants)
    kw = dict(batch_size=batch_size, precision=precision, padding_side=padding_side)
    warm = encoded[:batch_size]
    for name in names:  # warm-up: allocator, oneDNN kernels for this variant's shapes
        predict_logits(variants[name], warm, pad_id, **kw)
    times = {n: [] for n in names}
    logits = {}
    for r in range(repeats):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            start = time.perf_counter()
            out = predict_logits(variants[name], encoded, pad_id, **kw)
            times[name].append(time.perf_counter() - start)
            logits.setdefault(name, out)
        log.info("repeat %d/%d: %s", r + 1, repeats, ", ".join(f"{n} {times[n][-1]:.2f}s" for n in names))
    return {n: float(np.median(v)) for n, v in times.items()}, times, logits


def prune_and_evaluate(model_dir, layer_scores_path, neuron_scores_path, test: pd.DataFrame, cfg: dict,
                       settings: EvalSettings, focus_multiplier: float = 3.0, config_name: str = "",
                       model_name: str = "", ffn_stats_path=None) -> tuple[dict, pd.DataFrame]:
    t0 = time.perf_counter()
    set_threads(settings.threads)
    model, tokenizer, meta = load_classifier(model_dir)
    adapter = model.adapter
    c, scores = load_scores(layer_scores_path, neuron_scores_path, settings.average_over)
    widths = adapter.ffn_widths()
    if [len(s) for s in scores] != widths:
        raise ValueError(f"{neuron_scores_path}: neuron scores per layer {[len(s) for s in scores]} do not match "
                         f"the model's FFN widths {widths}; rebuild the scores from this checkpoint")
    if len(c) != adapter.num_layers + 1:
        raise ValueError(f"{layer_scores_path}: {len(c)} layer scores, expected {adapter.num_layers + 1} (layers 0..L)")

    plan = make_plan(cfg, c, scores, ffn_stats_path, focus_multiplier, settings.high_threshold)
    pruned, table = plan.pruned, plan.table
    for line in plan.log_lines:
        log.info(line)

    # Test reviews, tokenised as the checkpoint was trained.
    test = test.iloc[: settings.test_limit] if settings.test_limit else test
    encoded = encode(tokenizer, test["text"].tolist(), meta["max_length"], meta.get("truncation_side", "right"))
    labels = test["label"].to_numpy()
    pad_id, side = tokenizer.pad_token_id, meta.get("padding_side", "right")
    precision = meta.get("precision", "fp32")
    kw = dict(batch_size=settings.batch_size, precision=precision, padding_side=side)

    zeroed = pruned_copy(model, pruned, "zeroed", plan.bias_means)
    removed = pruned_copy(model, pruned, "removed", plan.bias_means)

    # Zeroed and removed must compute the same function (float32, a few reviews).
    probe = encoded[: settings.equality_check_reviews]
    f32 = dict(kw, precision="fp32")
    lz = predict_logits(zeroed, probe, pad_id, **f32)
    lr = predict_logits(removed, probe, pad_id, **f32)
    max_diff = float(np.abs(lz - lr).max()) if len(probe) else 0.0
    log.info("zeroed vs removed, float32, %d reviews: max |logit difference| %.2e", len(probe), max_diff)

    timed = encoded[: settings.time_limit] if settings.time_limit else encoded
    medians, all_times, logits = time_variants({"dense": model, "zeroed": zeroed, "removed": removed}, timed,
                                               pad_id, settings.batch_size, precision, side, settings.repeats)
    rest = encoded[len(timed):]
    if rest:  # the untimed reviews: dense and removed only (zeroed computes the same function as removed)
        for name, m in (("dense", model), ("removed", removed)):
            logits[name] = np.concatenate([logits[name], predict_logits(m, rest, pad_id, **kw)])
    acc = {n: accuracy(v, labels) for n, v in logits.items() if len(v) == len(labels)}
    acc.setdefault("zeroed", None)
    del zeroed
    counts = [len(p) for p in pruned]

    extra = {}
    if plan.bias_means is not None:  # what the compensation itself is worth
        plain = pruned_copy(model, pruned, "removed")
        extra["accuracy_uncompensated"] = accuracy(predict_logits(plain, encoded, pad_id, **kw), labels)
        del plain
        log.info("without bias compensation: accuracy %.4f", extra["accuracy_uncompensated"])

    rand_acc, rand_counts = [], None
    for seed in range(settings.random_seeds):
        masks = random_masks(scores, counts, seed, settings.high_threshold)
        rand_counts = rand_counts or [len(m) for m in masks]  # every seed draws the same (capped) counts
        rm = pruned_copy(model, masks, "removed")
        rand_acc.append(accuracy(predict_logits(rm, encoded, pad_id, **kw), labels))
        del rm
        log.info("random baseline seed %d: accuracy %.4f", seed, rand_acc[-1])
    table["random_masked"] = rand_counts

    lengths = [len(e) for e in encoded]
    total_neurons, n_pruned = sum(widths), sum(counts)
    metrics = dict(
        model=model_name, config=config_name, arch=adapter.arch,
        rule=None, alpha=None, beta=None, focusing=None, focusing_spec=None, focus_multiplier=None, sides=None,
        allocation=None, bias_compensation=None, average_over=settings.average_over, thresholds=None, search=None)
    metrics.update(plan.info)
    metrics.update(
        neurons_total=total_neurons, neurons_pruned=n_pruned, pruned_pct=100.0 * n_pruned / total_neurons,
        pruned_per_layer=counts, pruned_pct_per_layer=[100.0 * n / w for n, w in zip(counts, widths)],
        test_reviews=len(encoded), timed_reviews=len(timed), batch_size=settings.batch_size, threads=torch.get_num_threads(),
        precision=precision, repeats=settings.repeats,
        accuracy_dense=acc["dense"], accuracy_zeroed=acc["zeroed"], accuracy=acc["removed"],
        **extra,
        accuracy_random_mean=float(np.mean(rand_acc)), accuracy_random_std=float(np.std(rand_acc, ddof=1)) if len(rand_acc) > 1 else 0.0,
        accuracy_random=rand_acc, random_seeds=list(range(settings.random_seeds)),
        time_dense_s=medians["dense"], time_zeroed_s=medians["zeroed"], time_removed_s=medians["removed"],
        times_s=all_times,
        speedup_zeroed=medians["dense"] / medians["zeroed"], speedup_removed=medians["dense"] / medians["removed"],
        zeroed_vs_removed_max_abs_logit_diff_fp32=max_diff,
        params_dense=count_parameters(model), params_removed=count_parameters(removed),
        macs_dense=forward_macs(adapter, lengths), macs_removed=forward_macs(removed.adapter, lengths),
        ffn_macs_dense=ffn_macs(adapter, lengths), ffn_macs_removed=ffn_macs(removed.adapter, lengths),
        seconds=None,
    )
    metrics["macs_ratio"] = metrics["macs_removed"] / metrics["macs_dense"]
    metrics["seconds"] = time.perf_counter() - t0
    log.info("%s/%s: pruned %d/%d (%.1f%%); accuracy dense %.4f zeroed %s removed %.4f random %.4f±%.4f; "
             "time dense %.2fs zeroed %.2fs removed %.2fs (speedup %.3fx / %.3fx); %.0f s in all",
             model_name, config_name, n_pruned, total_neurons, metrics["pruned_pct"], acc["dense"], acc["zeroed"],
             acc["removed"], metrics["accuracy_random_mean"], metrics["accuracy_random_std"], medians["dense"],
             medians["zeroed"], medians["removed"], metrics["speedup_zeroed"], metrics["speedup_removed"],
             metrics["seconds"])
    return metrics, table
