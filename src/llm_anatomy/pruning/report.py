"""Summary table, method-vs-method comparisons and Figures 4/5 of the prune stage.

Every accuracy carries its 95% interval and every gap its paired interval and unadjusted p-value
(`llm_anatomy.stats`, computed per target in metrics.json). Each table adjusts its gaps' p-values over
the families `stats.FAMILIES` names (`stats.judge`: `<gap>_p_adj`) and words every gap by the adjusted
test: "higher"/"lower" below 0.05, "no detectable difference" otherwise.
"""
from __future__ import annotations

import logging
from itertools import combinations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from ..io import read_json, write_csv, write_json, write_text  # noqa: E402
from ..logits import read_logits  # noqa: E402
from ..plots import save_figure  # noqa: E402
from ..stats import FAMILIES, correct, judge, paired_difference  # noqa: E402
from .metrics import PruneMetrics  # noqa: E402
from .spec import curve_order, method_of  # noqa: E402

log = logging.getLogger(__name__)

HEADLINE = ["pruned_pct", "accuracy_dense", "accuracy", "accuracy_lo", "accuracy_hi", "gap_dense", "gap_dense_lo",
            "gap_dense_hi", "accuracy_random_mean", "accuracy_random_lo", "accuracy_random_hi", "gap_random",
            "gap_random_lo", "gap_random_hi", "accuracy_random_std",
            "time_dense_s", "time_zeroed_s", "time_removed_s", "speedup_zeroed", "speedup_removed",
            "params_dense", "params_removed", "model_bytes", "macs_ratio", "alpha", "beta", "test_reviews",
            "baseline_reviews"]


# Accuracy and gap columns of the summary, in reading order; a gap's _p is its unadjusted p-value (exact
# McNemar against one model, the combined seeds-and-reviews test against a random baseline).
EVIDENCE = ["accuracy_dense", "accuracy_dense_lo", "accuracy_dense_hi", "accuracy", "accuracy_lo", "accuracy_hi",
            "gap_dense", "gap_dense_lo", "gap_dense_hi", "gap_dense_p",
            "accuracy_random_mean", "accuracy_random_lo", "accuracy_random_hi", "accuracy_random_std",
            "gap_random", "gap_random_lo", "gap_random_hi", "gap_random_p",
            "accuracy_uncompensated", "accuracy_uncompensated_lo", "accuracy_uncompensated_hi",
            "gap_compensation", "gap_compensation_lo", "gap_compensation_hi", "gap_compensation_p",
            "accuracy_random_uncompensated_mean", "accuracy_random_uncompensated_lo",
            "accuracy_random_uncompensated_hi",
            "gap_selection", "gap_selection_lo", "gap_selection_hi", "gap_selection_p"]


def summary_table(runs: list[PruneMetrics]) -> pd.DataFrame:
    df = pd.DataFrame([dict(model=m.model, target=m.target, curve=m.curve, rule=m.rule, alpha=m.alpha, beta=m.beta,
                            focusing=" ".join(map(str, m.focusing or [])), allocation=m.allocation, criterion=m.criterion,
                            compensation=m.compensation, bias_compensation=m.bias_compensation,
                            target_pct=100 * m.search["target_fraction"] if _sparsity_point(m) else None,
                            target_reached=m.search["reached"] if m.search else None, pruned_pct=m.pruned_pct,
                            **{k: getattr(m, k) for k in SPEED_COLUMNS},
                            test_reviews=m.test_reviews, baseline_reviews=m.baseline_reviews or m.test_reviews,
                            random_seeds=len(m.random_seeds or []), **{k: getattr(m, k) for k in EVIDENCE},
                            time_dense_s=m.time_dense_s, time_zeroed_s=m.time_zeroed_s, time_removed_s=m.time_removed_s,
                            speedup_zeroed=m.speedup_zeroed, speedup_removed=m.speedup_removed,
                            speedup_removed_min=m.speedup_removed_spread["min"],
                            speedup_removed_max=m.speedup_removed_spread["max"], speedup_bound=m.speedup_bound,
                            params_dense=m.params_dense, params_removed=m.params_removed, model_mb=m.model_bytes / 1e6,
                            macs_ratio=m.macs_ratio, timed_reviews=m.timed_reviews,
                            roofline_gflops=(m.roofline or {}).get("attainable_gflops"),
                            roofline_fraction_dense=m.roofline_fraction_dense,
                            roofline_fraction_removed=m.roofline_fraction_removed, seconds_point=m.seconds_point,
                            cpu=m.machine["cpu"]) for m in runs])
    if not df.empty:
        df["order"] = df["curve"].map(curve_order)
        df = df.sort_values(["model", "order", "pruned_pct"]).drop(columns="order").reset_index(drop=True)
    return judge_summary(df)


SUMMARY_GAPS = ("gap_dense", "gap_random", "gap_compensation", "gap_selection")
# what a speed target adds to the summary and the frontier (empty for the others): its structure, the speedup asked
# of the latency table and the table's prediction for the plan (the measured one is speedup_removed)
SPEED_COLUMNS = ["structures", "heads_pruned", "target_speedup", "predicted_speedup"]


def _sparsity_point(m: PruneMetrics) -> bool:
    """A curve point sized by a fraction of FFN neurons (not a named configuration, not a speed target)."""
    return bool(m.search) and "target_fraction" in m.search


def judge_summary(df: pd.DataFrame) -> pd.DataFrame:
    """Each gap of the summary with its family-adjusted p-value and verdict (`<gap>_p_adj`, `<gap>_verdict`)."""
    for gap in SUMMARY_GAPS:
        df = judge(df, gap, FAMILIES["summary"])
    return df


def _outcomes(path, variant: str | None = None) -> np.ndarray:
    df, _ = read_logits(path)
    if variant is not None:
        df = df[df["variant"] == variant]
    return correct(df["logit"], df["label"])


def method_comparisons(runs: list[PruneMetrics], evals: list, baselines: list) -> pd.DataFrame:
    """Every pair of curve points of one model at the same target percentage (e.g. flap-50 vs sweep-50),
    paired on the first test reviews both read; a compensated method is also compared without its compensation,
    so the choice of neurons alone is set against the other method's. The verdicts follow p-values
    adjusted over the model's comparisons (FAMILIES["comparisons"]). `evals` and `baselines` are each run's
    per-review logits, in the order of `runs`."""
    files = {(m.model, m.target): (e, b) for m, e, b in zip(runs, evals, baselines)}
    rows = []
    points = [m for m in runs if m.curve != "named" and _sparsity_point(m)]
    for a, b in combinations(points, 2):
        pct_a, pct_b = a.search["target_fraction"], b.search["target_fraction"]
        if a.model != b.model or pct_a != pct_b:
            continue
        if curve_order(a.curve) < curve_order(b.curve):
            a, b = b, a  # the later curve (the stronger method) first: a positive gap favours it
        (eval_a, base_a), (eval_b, _) = files[a.model, a.target], files[b.model, b.target]
        readings = [(a.target, _outcomes(eval_a))]
        if a.compensation != "none":
            readings.append((f"{a.target} uncompensated", _outcomes(base_a, "uncompensated")))
        all_b = _outcomes(eval_b)
        for name, out_a in readings:
            n = min(len(out_a), len(all_b))  # a headline point reads more reviews: pair on the first both read
            out_a, out_b = out_a[:n], all_b[:n]
            d = paired_difference(out_a, out_b)
            rows.append(dict(model=a.model, target_pct=100 * pct_a, a=name, b=b.target,
                             pruned_pct_a=a.pruned_pct, pruned_pct_b=b.pruned_pct,
                             accuracy_a=float(out_a.mean()), accuracy_b=float(out_b.mean()),
                             **d.to_dict("gap"), a_only=d.a_only, b_only=d.b_only, reviews=len(out_b)))
    return judge(pd.DataFrame(rows), "gap", FAMILIES["comparisons"], verdict_column="verdict")


def _dominated(points: list[tuple[float, float]], i: int) -> bool:
    """Whether another point is at least as good on both axes (larger is better) and better on one."""
    x, y = points[i]
    return any(u >= x and v >= y and (u > x or v > y) for j, (u, v) in enumerate(points) if j != i)


FRONTIER_COLUMNS = ["model", "target", "curve", "pruned_pct", "accuracy", "accuracy_lo", "accuracy_hi", "gap_dense",
                    "gap_dense_lo", "gap_dense_hi", "speedup_removed", "speedup_removed_min", "speedup_removed_max",
                    "seconds_point", "frontier_sparsity", "frontier_speedup", "test_reviews", *SPEED_COLUMNS]


def frontier_table(runs: list[PruneMetrics]) -> pd.DataFrame:
    """Every curve point (paper rule, FLAP, the registry's methods, speed targets with their structure and
    predicted speedup) of each model that no other point of the model beats on both accuracy and % pruned
    (`frontier_sparsity`) or on both accuracy and measured speedup (`frontier_speedup`). Point estimates decide
    membership; summary.csv's verdicts say which differences are detectable."""
    rows = []
    for rs in _by_model([m for m in runs if m.curve != "named"]).values():
        by_sparsity = [(m.pruned_pct, m.accuracy) for m in rs]
        by_speed = [(m.speedup_removed, m.accuracy) for m in rs]
        for i, m in enumerate(rs):
            on_sparsity, on_speed = not _dominated(by_sparsity, i), not _dominated(by_speed, i)
            if on_sparsity or on_speed:
                spread = m.speedup_removed_spread
                rows.append({**{k: getattr(m, k) for k in FRONTIER_COLUMNS if hasattr(m, k)},
                             "speedup_removed_min": spread["min"], "speedup_removed_max": spread["max"],
                             "frontier_sparsity": on_sparsity, "frontier_speedup": on_speed})
    df = pd.DataFrame(rows, columns=FRONTIER_COLUMNS)
    return df.sort_values(["model", "pruned_pct"]).reset_index(drop=True) if len(df) else df


def to_markdown(df: pd.DataFrame) -> str:
    cols = list(df.columns)
    fmt = lambda v: ("" if v != v else f"{v:.4g}") if isinstance(v, float) else ("" if v is None else str(v))  # noqa: E731
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def _by_model(runs) -> dict[str, list[PruneMetrics]]:
    return {mod: [m for m in runs if m.model == mod] for mod in sorted({m.model for m in runs})}


def _dense_line(ax, rs: list[PruneMetrics]) -> None:
    """The dense accuracy and its 95% interval, from the run whose dense accuracy read the most reviews (the
    headline points read more than the others)."""
    d = max(rs, key=lambda m: m.test_reviews)
    ax.axhline(d.accuracy_dense, ls="--", color="grey", label="dense")
    ax.axhspan(d.accuracy_dense_lo, d.accuracy_dense_hi, color="grey", alpha=0.1, lw=0)


def _reviews_label(rs: list[PruneMetrics]) -> str:
    lo, hi = min(m.test_reviews for m in rs), max(m.test_reviews for m in rs)
    return f"{hi:,}" if lo == hi else f"{lo:,}-{hi:,}"


def _curve_runs(rs: list[PruneMetrics], name: str) -> list[PruneMetrics]:
    return sorted([m for m in rs if m.curve == name], key=lambda m: m.pruned_pct)


def _accuracy_yerr(runs: list[PruneMetrics], value: str = "accuracy", bounds: str = "accuracy") -> list[list[float]]:
    """Error bars from each run's `value` down and up to the ends of its 95% interval (`<bounds>_lo`, `_hi`)."""
    return [[getattr(m, value) - getattr(m, f"{bounds}_lo") for m in runs],
            [getattr(m, f"{bounds}_hi") - getattr(m, value) for m in runs]]


def _accuracy_curve(ax, runs, color, name, band_color):
    """A method's removed-model accuracy with its 95% interval, its uncompensated reading (compensated
    methods), and the random baseline treated the same way (and uncompensated, for compensated methods):
    the mean over seeds and its 95% interval over seeds and reviews."""
    if not runs:
        return
    x = np.array([m.pruned_pct for m in runs])
    ax.plot(x, [m.accuracy for m in runs], "o-", color=color, label=f"{name} (removed)")
    ax.fill_between(x, [m.accuracy_lo for m in runs], [m.accuracy_hi for m in runs], color=color, alpha=0.15, lw=0)
    compensated = any(m.compensation != "none" for m in runs)
    baselines = [("accuracy_random", "s--", f"random, {name}'s counts" + (", compensated" if compensated else ""))]
    if compensated:
        ax.plot(x, [m.accuracy_uncompensated for m in runs], "x:", color=color, label=f"{name} without compensation")
        baselines.append(("accuracy_random_uncompensated", "v:", f"random, {name}'s counts, uncompensated"))
    for prefix, style, label in baselines:
        pts = [(m.pruned_pct, getattr(m, f"{prefix}_mean"), getattr(m, f"{prefix}_lo"), getattr(m, f"{prefix}_hi"))
               for m in runs if getattr(m, f"{prefix}_mean") is not None]
        if pts:
            px, mu, lo, hi = map(np.array, zip(*pts))
            ax.plot(px, mu, style, color=band_color, ms=4, lw=1, label=label)
            ax.fill_between(px, lo, hi, color=band_color, alpha=0.15, lw=0)


def draw_accuracy(runs: list[PruneMetrics], path) -> None:
    """Accuracy against % FFN neurons pruned: the paper rule and FLAP, each with the random baseline
    matched to its per-layer counts and treated as the method is; bands are 95% intervals (over reviews;
    over seeds and reviews for the random baselines). Markers: the Figure-5a configurations."""
    groups = _by_model(runs)
    fig, axes = plt.subplots(1, max(len(groups), 1), figsize=(6.5 * max(len(groups), 1), 5), squeeze=False)
    for ax, (mod, rs) in zip(axes[0], groups.items()):
        _accuracy_curve(ax, _curve_runs(rs, "sweep"), "C0", "paper rule", "C3")
        _accuracy_curve(ax, _curve_runs(rs, "flap"), "C1", "FLAP", "C4")
        for curve, color in (("sweep-prenorm", "C5"), ("sweep-gain", "C6")):
            pts = _curve_runs(rs, curve)
            if pts:  # decoder scorings: the method with its interval (random baselines in the summary)
                ax.errorbar([m.pruned_pct for m in pts], [m.accuracy for m in pts], yerr=_accuracy_yerr(pts), fmt="P-.",
                            color=color, ms=6, capsize=2, label=f"paper rule, {curve.split('-', 1)[1]} scoring")
        named = _curve_runs(rs, "named")
        for m in named:
            ax.errorbar(m.pruned_pct, m.accuracy, yerr=_accuracy_yerr([m]), fmt="D", color="C2", ms=5, capsize=2)
            ax.errorbar(m.pruned_pct, m.accuracy_random_mean, yerr=_accuracy_yerr([m], "accuracy_random_mean", "accuracy_random"),
                        fmt="^", color="C3", ms=4, capsize=2)
        if named:
            ax.plot([], [], "D", color="C2", label="Figure-5a configs (random: red triangles)")
        _dense_line(ax, rs)
        ax.set(title=f"{mod}: accuracy on {_reviews_label(rs)} test reviews (95% intervals)",
               xlabel="% FFN neurons pruned", ylabel="test accuracy")
        ax.legend(fontsize=7, loc="lower left")
    save_figure(fig, path, dpi=120)


def draw_time(runs: list[PruneMetrics], path) -> None:
    """Inference time of zeroed and removed models relative to the dense model timed alternately in the
    same run (curves: lines; named configurations: markers); bands and bars span the per-repeat ratios
    (min to max over the repeats). Absolute times are in the summary."""
    groups = _by_model(runs)
    fig, axes = plt.subplots(1, max(len(groups), 1), figsize=(5.5 * max(len(groups), 1), 4), squeeze=False)
    for ax, (mod, rs) in zip(axes[0], groups.items()):
        sweep, flap, named = _curve_runs(rs, "sweep"), _curve_runs(rs, "flap"), _curve_runs(rs, "named")
        for group, line, marker, tag in ((sweep, "-", "o", "paper rule"), (flap, "--", "s", "FLAP"),
                                         (named, "", "D", "Figure-5a configs")):
            if not group:
                continue
            x = [m.pruned_pct for m in group]
            zeroed = [(m.pruned_pct, 100 * m.time_zeroed_s / m.time_dense_s) for m in group
                      if m.time_zeroed_s is not None]
            if zeroed:
                ax.plot(*zip(*zeroed), marker + (":" if line else ""), color="C0", mfc="none", label=f"zeroed ({tag})")
            removed = [100 * m.time_removed_s / m.time_dense_s for m in group]
            ax.plot(x, removed, marker + line, color="C1", label=f"physically removed ({tag})")
            # the spread of the per-repeat ratios dense/removed: time ratio from 1/max to 1/min
            lo = [100 / m.speedup_removed_spread["max"] for m in group]
            hi = [100 / m.speedup_removed_spread["min"] for m in group]
            if line:
                ax.fill_between(x, lo, hi, color="C1", alpha=0.12, lw=0)
            else:  # the ratio of medians need not lie inside the per-repeat range: clip the bars at it
                ax.errorbar(x, removed, yerr=[np.maximum(np.subtract(removed, lo), 0),
                                              np.maximum(np.subtract(hi, removed), 0)],
                            fmt="none", color="C1", capsize=2, lw=0.8)
        ax.axhline(100, ls="--", color="grey", label="dense")
        bound = sorted((m.pruned_pct, 100 * m.macs_ratio) for m in rs)
        ax.plot(*zip(*bound), ":", color="k", lw=0.8, label="multiply-add bound (removed)")
        r0 = rs[0]
        ax.set(title=f"{mod}: batch {r0.batch_size}, {r0.machine['threads']} threads, {r0.precision}\n"
                     f"{r0.machine['cpu']}",
               xlabel="% FFN neurons pruned", ylabel="inference time, % of dense (median of alternating runs)")
        ax.legend(fontsize=7)
    save_figure(fig, path, dpi=120)


SERIES_NAMES = {"named": "paper rule (Fig. 5a)", "sweep": "paper rule", "flap": "FLAP",
                "sweep-prenorm": "paper rule, prenorm scoring", "sweep-gain": "paper rule, gain scoring"}


def experiment_headline(runs: list[PruneMetrics]) -> dict:
    """The numbers `dvc exp show` and `dvc metrics diff` compare, in percent: each model's dense test
    accuracy and, per Figure-5a configuration and model (and under `methods`, per model and point of the
    registry's methods), the accuracy with its 95% interval, the share of FFN neurons pruned and the
    measured speedup of the physically pruned model."""
    pct = lambda v: None if v is None else round(100 * v, 2)  # noqa: E731
    out: dict = {"dense": {}}
    for m in sorted(runs, key=lambda m: (m.target, m.model)):
        out["dense"][m.model] = dict(accuracy=pct(m.accuracy_dense), accuracy_lo=pct(m.accuracy_dense_lo),
                                        accuracy_hi=pct(m.accuracy_dense_hi))
        point = dict(accuracy=pct(m.accuracy), accuracy_lo=pct(m.accuracy_lo), accuracy_hi=pct(m.accuracy_hi),
                     pruned_pct=round(m.pruned_pct, 2), speedup=round(m.speedup_removed, 3))
        if m.curve == "named":
            out.setdefault(m.target, {})[m.model] = point
        elif method_of(m.curve):
            out.setdefault("methods", {}).setdefault(m.model, {})[m.target] = point
    return out


def plot_series(runs: list[PruneMetrics]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Long tables (series, pruned_pct, accuracy | speedup) for DVC's data plots: one series per model
    and method, points in order of % pruned; the random baseline at FLAP's sizes as its own series."""
    acc, speed = [], []
    for m in runs:
        series = f"{m.model} · {SERIES_NAMES.get(m.curve, m.curve)}"
        acc.append(dict(series=series, pruned_pct=round(m.pruned_pct, 2), accuracy=round(100 * m.accuracy, 2)))
        speed.append(dict(series=series, pruned_pct=round(m.pruned_pct, 2), speedup=round(m.speedup_removed, 3)))
        if m.curve == "flap" and m.accuracy_random_mean is not None:
            acc.append(dict(series=f"{m.model} · random (FLAP's sizes)", pruned_pct=round(m.pruned_pct, 2),
                            accuracy=round(100 * m.accuracy_random_mean, 2)))
    order = lambda df: df.sort_values(["series", "pruned_pct"], kind="stable").reset_index(drop=True)  # noqa: E731
    return order(pd.DataFrame(acc)), order(pd.DataFrame(speed))


SPEED_MARKERS = {"ffn": "v", "heads": "P", "joint": "*"}  # speed targets in the Pareto figure, by structure


def draw_pareto(runs: list[PruneMetrics], path) -> None:
    """Per model, accuracy against % FFN neurons removed (left) and against the measured speedup of the
    physically pruned model (right): the paper rule, FLAP, the random baseline at FLAP's sizes, every
    method of the registry and the speed targets (marked by structure, labelled with the asked and predicted
    speedups) on the same axes; error bars are 95% intervals, the shaded step the frontier."""
    groups = _by_model([m for m in runs if m.curve != "named"])
    fig, axes = plt.subplots(max(len(groups), 1), 2, figsize=(13, 4.8 * max(len(groups), 1)), squeeze=False)
    for row, (mod, rs) in zip(axes, groups.items()):
        curves = sorted({m.curve for m in rs}, key=lambda c: (curve_order(c), c))
        for i, curve in enumerate(curves):
            pts = _curve_runs(rs, curve)
            structures = pts[0].structures  # speed targets: marked by what they prune, labelled with the speedups
            fmt = ("o-" if curve == "sweep" else "s-" if curve == "flap" else
                   SPEED_MARKERS[structures] + ":" if structures else "^--")
            label = SERIES_NAMES.get(curve, curve) if not structures else f"speed, {structures}: {curve} (" + ", ".join(
                f"x{m.target_speedup:g} pred. {m.predicted_speedup:.2f}" for m in pts) + ")"
            style = dict(color=f"C{i % 10}", ms=5 if structures else 4, capsize=2, lw=1, fmt=fmt, label=label)
            for ax, key in ((row[0], "pruned_pct"), (row[1], "speedup_removed")):
                if key == "speedup_removed":  # points only: a curve's speedups need not grow with its sparsity
                    style = dict(style, fmt=style["fmt"][0])
                ax.errorbar([getattr(m, key) for m in pts], [m.accuracy for m in pts], yerr=_accuracy_yerr(pts), **style)
        flap = _curve_runs(rs, "flap")
        if flap:
            row[0].plot([m.pruned_pct for m in flap], [m.accuracy_random_mean for m in flap], "kx:",
                        label="random (FLAP's sizes, compensated)" if flap[0].compensation != "none" else "random (FLAP's sizes)")
        for ax, key in ((row[0], "pruned_pct"), (row[1], "speedup_removed")):
            pts = [(getattr(m, key), m.accuracy) for m in rs]
            front = sorted(p for i, p in enumerate(pts) if not _dominated(pts, i))
            ax.step([p[0] for p in front], [p[1] for p in front], where="post", color="k", lw=2, alpha=0.35,
                    label="frontier")
            _dense_line(ax, rs)
        row[0].set(title=f"{mod}: test accuracy ({_reviews_label(rs)} reviews) vs sparsity",
                   xlabel="% FFN neurons removed", ylabel="test accuracy")
        row[1].set(title=f"{mod}: test accuracy vs measured speedup ({rs[0].machine['cpu']})",
                   xlabel="speedup of the physically pruned model (median of alternating runs)")
        # beside the row, not on it: with speed targets the labels cover the left panel's points
        row[1].legend(*row[0].get_legend_handles_labels(), fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1))
    save_figure(fig, path, dpi=120)


def read_runs(metrics: list) -> list[PruneMetrics]:
    return [PruneMetrics.from_dict(read_json(path)) for path in metrics]


def prune_collect(metrics: list, collected) -> None:
    """Rule prune_collect: one named configuration's headline metrics (the scalars `dvc metrics show` lists)
    over the models it applies to."""
    write_json(collected, {m.model: {k: getattr(m, k) for k in HEADLINE} for m in read_runs(metrics)})


def prune_report(metrics: list, evals: list, baselines: list, summary, summary_md, comparisons, frontier, pareto,
                 accuracy, time, headline, plot_accuracy, plot_speedup) -> dict:
    """Rule prune_report: the summary table, the method comparisons, the frontier, Figures 4/5 and the Pareto
    figure, and what DVC compares across experiments (headline metrics, data plots), from every target's
    metrics and per-review logits (`evals`, `baselines`: in the order of `metrics`)."""
    runs = read_runs(metrics)
    write_csv(table := summary_table(runs), summary)
    write_csv(pairs := method_comparisons(runs, evals, baselines), comparisons)
    write_csv(front := frontier_table(runs), frontier)
    write_text(summary_md, to_markdown(table) + "\n## Method comparisons (paired, same reviews)\n\n"
               + to_markdown(pairs) + "\n## Frontier (no other point is as accurate at as many % pruned, or as fast)\n\n"
               + to_markdown(front))
    draw_pareto(runs, pareto)
    draw_accuracy(runs, accuracy)
    draw_time(runs, time)
    write_json(headline, experiment_headline(runs))
    accuracy_series, speedup_series = plot_series(runs)
    write_csv(accuracy_series, plot_accuracy)
    write_csv(speedup_series, plot_speedup)
    return dict(runs=len(runs), comparisons=len(pairs))
