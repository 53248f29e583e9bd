"""Summary table and Figures 4/5 of the prune stage."""
from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .targets import CURVE_ORDER  # noqa: E402

HEADLINE = ["pruned_pct", "accuracy_dense", "accuracy", "accuracy_random_mean", "accuracy_random_std",
            "time_dense_s", "time_zeroed_s", "time_removed_s", "speedup_zeroed", "speedup_removed",
            "params_dense", "params_removed", "model_bytes", "macs_ratio", "alpha", "beta", "test_reviews"]


def headline(m: dict) -> dict:
    """The scalar metrics of one run (what dvc metrics show lists)."""
    return {k: m[k] for k in HEADLINE if k in m}


def summary_table(runs: list[dict]) -> pd.DataFrame:
    rows = []
    for m in runs:
        rows.append(dict(model=m["model"], target=m["target"], curve=m["curve"], rule=m["rule"], alpha=m.get("alpha"),
                         beta=m.get("beta"), focusing=" ".join(map(str, m.get("focusing") or [])),
                         allocation=m.get("allocation"),
                         target_pct=100 * m["search"]["target_fraction"] if m.get("search") else None,
                         pruned_pct=m["pruned_pct"], accuracy_dense=m["accuracy_dense"], accuracy=m["accuracy"],
                         accuracy_uncompensated=m.get("accuracy_uncompensated"),
                         accuracy_random=m["accuracy_random_mean"], accuracy_random_std=m["accuracy_random_std"],
                         time_dense_s=m["time_dense_s"], time_zeroed_s=m["time_zeroed_s"],
                         time_removed_s=m["time_removed_s"], speedup_zeroed=m["speedup_zeroed"],
                         speedup_removed=m["speedup_removed"],
                         speedup_removed_min=m["speedup_removed_spread"]["min"],
                         speedup_removed_max=m["speedup_removed_spread"]["max"], speedup_bound=m["speedup_bound"],
                         params_dense=m["params_dense"], params_removed=m["params_removed"],
                         model_mb=m["model_bytes"] / 1e6, macs_ratio=m["macs_ratio"], test_reviews=m["test_reviews"],
                         timed_reviews=m["timed_reviews"], cpu=m["machine"]["cpu"]))
    df = pd.DataFrame(rows)
    if not df.empty:
        df["order"] = df["curve"].map(CURVE_ORDER)
        df = df.sort_values(["model", "order", "pruned_pct"]).drop(columns="order").reset_index(drop=True)
    return df


def to_markdown(df: pd.DataFrame) -> str:
    cols = list(df.columns)
    fmt = lambda v: ("" if v != v else f"{v:.4g}") if isinstance(v, float) else ("" if v is None else str(v))  # noqa: E731
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def write_text(path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _by_model(runs):
    models = sorted({m["model"] for m in runs})
    return models, {mod: [m for m in runs if m["model"] == mod] for mod in models}


def _save(fig, path):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp" + path.suffix)
    fig.savefig(tmp, dpi=120, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)


def _curve_runs(rs: list[dict], name: str) -> list[dict]:
    return sorted([m for m in rs if m["curve"] == name], key=lambda m: m["pruned_pct"])


def _random_band(ax, runs, color, label):
    x = [m["pruned_pct"] for m in runs]
    mu = np.array([m["accuracy_random_mean"] for m in runs])
    sd = np.array([m["accuracy_random_std"] for m in runs])
    ax.plot(x, mu, "s--", color=color, ms=4, lw=1, label=label)
    ax.fill_between(x, mu - sd, mu + sd, color=color, alpha=0.15)


def _accuracy_curve(ax, runs, color, name, alt_key, alt_label, band_color):
    """A method's removed-model accuracy, an alternative reading of it (dotted), its random baseline."""
    if not runs:
        return
    x = [m["pruned_pct"] for m in runs]
    ax.plot(x, [m["accuracy"] for m in runs], "o-", color=color, label=f"{name} (removed)")
    alt = [(m["pruned_pct"], m[alt_key]) for m in runs if alt_key and m.get(alt_key) is not None]
    if alt:
        ax.plot(*zip(*alt), "x:", color=color, label=f"{name} {alt_label}")
    _random_band(ax, runs, band_color, f"random, {name}'s counts")


def plot_accuracy(runs: list[dict], path) -> None:
    """Accuracy against % FFN neurons pruned: the paper rule and FLAP, each with the random baseline
    matched to its per-layer counts (mean +- sd over seeds), and the Figure-5a configurations."""
    models, groups = _by_model(runs)
    fig, axes = plt.subplots(1, max(len(models), 1), figsize=(6 * max(len(models), 1), 4.5), squeeze=False)
    for ax, mod in zip(axes[0], models):
        rs = groups[mod]
        sweep, flap = _curve_runs(rs, "sweep"), _curve_runs(rs, "flap")
        named = _curve_runs(rs, "named")
        _accuracy_curve(ax, sweep, "C0", "paper rule", None, "", "C3")
        _accuracy_curve(ax, flap, "C1", "FLAP", "accuracy_uncompensated", "without bias compensation", "C4")
        for m in named:
            ax.plot(m["pruned_pct"], m["accuracy"], "D", color="C2", ms=6)
            ax.errorbar(m["pruned_pct"], m["accuracy_random_mean"], yerr=m["accuracy_random_std"], fmt="^",
                        color="C3", ms=5)
        if named:
            ax.plot([], [], "D", color="C2", label="Figure-5a configs (random: red triangles)")
        ax.axhline(rs[0]["accuracy_dense"], ls="--", color="grey", label="dense")
        ax.set(title=f"{mod}: accuracy on {rs[0]['test_reviews']} test reviews", xlabel="% FFN neurons pruned",
               ylabel="test accuracy")
        ax.legend(fontsize=7, loc="lower left")
    _save(fig, path)


def plot_time(runs: list[dict], path) -> None:
    """Inference time of zeroed and removed models relative to the dense model timed alternately in the
    same run (curves: lines; named configurations: markers). Absolute times are in the summary."""
    models, groups = _by_model(runs)
    fig, axes = plt.subplots(1, max(len(models), 1), figsize=(5.5 * max(len(models), 1), 4), squeeze=False)
    for ax, mod in zip(axes[0], models):
        rs = groups[mod]
        sweep, flap, named = _curve_runs(rs, "sweep"), _curve_runs(rs, "flap"), _curve_runs(rs, "named")
        for group, line, marker, tag in ((sweep, "-", "o", "paper rule"), (flap, "--", "s", "FLAP"),
                                         (named, "", "D", "Figure-5a configs")):
            if not group:
                continue
            x = [m["pruned_pct"] for m in group]
            ax.plot(x, [100 * m["time_zeroed_s"] / m["time_dense_s"] for m in group], marker + (":" if line else ""),
                    color="C0", mfc="none", label=f"zeroed ({tag})")
            ax.plot(x, [100 * m["time_removed_s"] / m["time_dense_s"] for m in group], marker + line,
                    color="C1", label=f"physically removed ({tag})")
        ax.axhline(100, ls="--", color="grey", label="dense")
        bound = sorted((m["pruned_pct"], 100 * m["macs_ratio"]) for m in rs)
        ax.plot(*zip(*bound), ":", color="k", lw=0.8, label="multiply-add bound (removed)")
        r0 = rs[0]
        ax.set(title=f"{mod}: batch {r0['batch_size']}, {r0['machine']['threads']} threads, {r0['precision']}\n"
                     f"{r0['machine']['cpu']}",
               xlabel="% FFN neurons pruned", ylabel="inference time, % of dense (median of alternating runs)")
        ax.legend(fontsize=7)
    _save(fig, path)
