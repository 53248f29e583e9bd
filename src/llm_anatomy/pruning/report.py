"""Summary table and Figures 4/5 of the prune stage."""
from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

HEADLINE = ["pruned_pct", "accuracy_dense", "accuracy", "accuracy_zeroed", "accuracy_random_mean",
            "accuracy_random_std", "time_dense_s", "time_zeroed_s", "time_removed_s", "speedup_zeroed",
            "speedup_removed", "params_dense", "params_removed", "macs_ratio", "alpha", "beta", "test_reviews",
            "seconds"]


def headline(m: dict) -> dict:
    """The scalar metrics of one run (what dvc metrics show lists)."""
    return {k: m[k] for k in HEADLINE if k in m}


def summary_table(runs: list[dict]) -> pd.DataFrame:
    rows = []
    for m in runs:
        rows.append(dict(model=m["model"], config=m["config"], rule=m["rule"], alpha=m["alpha"], beta=m["beta"],
                         focusing=" ".join(map(str, m["focusing"])), target_pct=100 * m["search"]["target_fraction"]
                         if m.get("search") else None, pruned_pct=m["pruned_pct"],
                         accuracy_dense=m["accuracy_dense"], accuracy=m["accuracy"],
                         accuracy_random=m["accuracy_random_mean"], accuracy_random_std=m["accuracy_random_std"],
                         time_dense_s=m["time_dense_s"], time_zeroed_s=m["time_zeroed_s"],
                         time_removed_s=m["time_removed_s"], speedup_zeroed=m["speedup_zeroed"],
                         speedup_removed=m["speedup_removed"], params_dense=m["params_dense"],
                         params_removed=m["params_removed"], macs_ratio=m["macs_ratio"],
                         test_reviews=m["test_reviews"], timed_reviews=m.get("timed_reviews"), seconds=m["seconds"]))
    df = pd.DataFrame(rows)
    if not df.empty:
        df["sweep"] = df["config"].str.startswith("sweep-")
        df = df.sort_values(["model", "sweep", "pruned_pct"]).drop(columns="sweep").reset_index(drop=True)
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


def plot_accuracy(runs: list[dict], path) -> None:
    models, groups = _by_model(runs)
    fig, axes = plt.subplots(1, max(len(models), 1), figsize=(5.5 * max(len(models), 1), 4), squeeze=False)
    for ax, mod in zip(axes[0], models):
        rs = groups[mod]
        sweep = sorted([m for m in rs if m["config"].startswith("sweep-")], key=lambda m: m["pruned_pct"])
        named = [m for m in rs if not m["config"].startswith("sweep-")]
        if sweep:
            x = [m["pruned_pct"] for m in sweep]
            ax.plot(x, [m["accuracy"] for m in sweep], "o-", label="structured (removed)")
            zx = [(m["pruned_pct"], m["accuracy_zeroed"]) for m in sweep if m.get("accuracy_zeroed") is not None]
            if zx:
                ax.plot(*zip(*zx), "x:", label="structured (zeroed)")
            mu = np.array([m["accuracy_random_mean"] for m in sweep])
            sd = np.array([m["accuracy_random_std"] for m in sweep])
            ax.plot(x, mu, "s-", color="C3", label="random (keeps high)")
            ax.fill_between(x, mu - sd, mu + sd, color="C3", alpha=0.2)
        for m in named:
            ax.plot(m["pruned_pct"], m["accuracy"], "D", color="C2", ms=6)
            ax.errorbar(m["pruned_pct"], m["accuracy_random_mean"], yerr=m["accuracy_random_std"], fmt="^",
                        color="C3", ms=5)
        if named:
            ax.plot([], [], "D", color="C2", label="Figure-5a configs")
        ax.axhline(rs[0]["accuracy_dense"], ls="--", color="grey", label="dense")
        ax.set(title=f"{mod}: accuracy", xlabel="% FFN neurons pruned", ylabel="test accuracy")
        ax.legend(fontsize=8)
    _save(fig, path)


def plot_time(runs: list[dict], path) -> None:
    """Inference time of zeroed and removed models relative to the dense model timed alternately in the
    same run (sweep points: lines; named configurations: markers). Absolute times are in the summary."""
    models, groups = _by_model(runs)
    fig, axes = plt.subplots(1, max(len(models), 1), figsize=(5.5 * max(len(models), 1), 4), squeeze=False)
    for ax, mod in zip(axes[0], models):
        rs = groups[mod]
        sweep = sorted([m for m in rs if m["config"].startswith("sweep-")], key=lambda m: m["pruned_pct"])
        named = sorted([m for m in rs if not m["config"].startswith("sweep-")], key=lambda m: m["pruned_pct"])
        for group, style, tag in ((sweep, "-", "sweep"), (named, "", "Figure-5a configs")):
            if not group:
                continue
            x = [m["pruned_pct"] for m in group]
            ax.plot(x, [100 * m["time_zeroed_s"] / m["time_dense_s"] for m in group], "x" + (":" if style else ""),
                    color="C0", label=f"zeroed ({tag})")
            ax.plot(x, [100 * m["time_removed_s"] / m["time_dense_s"] for m in group], ("o" if style else "D") + style,
                    color="C1", label=f"physically removed ({tag})")
        ax.axhline(100, ls="--", color="grey", label="dense")
        xs = np.linspace(0, 90, 10)
        ax.plot(xs, 100 * (1 - 0.6 * xs / 100), ":", color="k", lw=0.8, label="FLOP bound (FFN 60%)")
        r0 = rs[0]
        ax.set(title=f"{mod}: batch {r0['batch_size']}, {r0['threads']} threads, {r0['precision']}",
               xlabel="% FFN neurons pruned", ylabel="inference time, % of dense (median of alternating runs)")
        ax.legend(fontsize=7)
    _save(fig, path)
