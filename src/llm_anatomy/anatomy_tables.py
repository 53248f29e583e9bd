"""The Markdown tables of docs/ANATOMY.md's results, regenerated from a profile's result files:

    .venv/bin/python -m llm_anatomy.anatomy_tables results/offline            # every model found there
    .venv/bin/python -m llm_anatomy.anatomy_tables results/offline minilm     # one model

Reads results/<p>/<model>/anatomy/{linear_probe.csv, ablation_summary.json, ablation_scores.csv,
ablation_tails.csv, ablation_top.csv, graph_edges.csv}; prints Markdown to stdout. Nothing here computes a
number the pipeline did not write: the tables only format them.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd

from .ablation import SCORES, TARGETS
from .layout import Layout, ModelFiles


def interval(value, lo, hi, digits: int = 2) -> str:
    return f"{value:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def probe_table(probe: pd.DataFrame) -> str:
    """Per layer: the lens and the linear probe on the same validation reviews (share predicted positive in
    parentheses: 0 or 1 is one constant class), the probe's penalty and the cosine of its direction with the
    head's."""
    rows = [[str(int(r.layer)),
             f"{interval(r.lens_accuracy, r.lens_accuracy_lo, r.lens_accuracy_hi)} ({r.lens_positive_share:.2f})",
             f"{interval(r.probe_accuracy, r.probe_accuracy_lo, r.probe_accuracy_hi)} ({r.probe_positive_share:.2f})",
             f"{r.penalty:g}", "" if pd.isna(r.head_cosine) else f"{r.head_cosine:.2f}"]
            for r in probe.itertuples()]
    n_train, n_val = int(probe["train_reviews"].iloc[0]), int(probe["validation_reviews"].iloc[0])
    return _table(["layer", f"lens accuracy ({n_val} validation reviews; positive share)",
                   f"probe accuracy (fitted on {n_train} train reviews; positive share)", "penalty",
                   "cos(probe, head)"], rows)


def _score_rows(tables: dict[str, pd.DataFrame], cells) -> list[list[str]]:
    """One row per score: the `cells` of its row for each target, in each model's table (columns score, target)."""
    rows = []
    for name in SCORES:
        row = [name]
        for tab in tables.values():
            for target in TARGETS:
                row += cells(tab[(tab["score"] == name) & (tab["target"] == target)].iloc[0])
        rows.append(row)
    return rows


def agreement_table(agreement: dict[str, pd.DataFrame]) -> str:
    """Per score: Spearman's rho with each target, within layers and pooled, per model."""
    header = ["score"] + [f"{m} {kind}, {t}" for m in agreement for t in TARGETS for kind in ("within layers", "pooled")]
    return _table(header, _score_rows(agreement, lambda r: [
        interval(r.spearman_within_layer, r.spearman_within_layer_lo, r.spearman_within_layer_hi),
        interval(r.spearman, r.spearman_lo, r.spearman_hi)]))


def tails_table(tails: dict[str, pd.DataFrame]) -> str:
    """Per score and model: the share of its top-tail neurons above their layer's random median (95% exact
    interval, binomial p against 1/2) and their mean percentile, per target."""
    header = ["score"] + [f"{m}, {t}" for m in tails for t in TARGETS]
    return _table(header, _score_rows(tails, lambda r: [
        f"{int(r.above_layer_median)}/{int(r.tail_neurons)} = {interval(r.share, r.share_lo, r.share_hi)}, "
        f"p = {r.p_binomial:.2g}; percentile {r.mean_percentile:.2f}"]))


def tops_table(tops: dict[str, pd.DataFrame]) -> str:
    """Per score and model: the top set's margin change and mean |logit change| against the random sets'."""
    header = ["score"] + [f"{m}: margin change (random mean, range; p)" for m in tops] + \
             [f"{m}: mean abs logit change (random mean, max; p)" for m in tops]
    rows = []
    for name in SCORES:
        picked = [top[top["score"] == name].iloc[0] for top in tops.values()]
        rows.append([name] + [f"{r.effect:+.3f} ({r.random_mean:+.3f}, {r.random_min:+.3f} to {r.random_max:+.3f}; "
                              f"{r.p_random:.2g})" for r in picked]
                    + [f"{r.abs_effect:.3f} ({r.random_abs_mean:.3f}, {r.random_abs_max:.3f}; {r.p_random_abs:.2g})"
                       for r in picked])
    return _table(header, rows)


def edges_lines(edges: dict[str, pd.DataFrame]) -> str:
    lines = []
    for model, e in edges.items():
        if e.empty:
            lines.append(f"- {model}: the graph has no edges (no two consecutive blocks both hold high nodes).")
            continue
        detail = ", ".join(f"{r.source}->{r.target} {r.percentile:.2f}" for r in e.itertuples())
        lines.append(f"- {model}: {int(e['measured'].sum())} of {len(e)} presumed edges measured (percentile of the "
                     f"target's relative change within its block: {detail}).")
    return "\n".join(lines)


def ablation_sizes(summaries: dict[str, dict]) -> str:
    return "\n".join(
        f"- {m}: {s['neurons_per_layer']} random neurons per layer x {s['layers']} layers = {s['sampled_neurons']}, "
        f"{s['tail_neurons']} top-tail neurons ({s['tail']} per score and layer), {s['graph_nodes']} graph nodes; "
        f"{s['ablated_neurons']} ablated in all over {s['reviews']} validation reviews; exact ablations "
        f"{s['exact_seconds']:.0f} s ({1e3 * s['seconds_per_block_review']:.2f} ms per block and review), "
        f"rule {s['seconds']:.0f} s" for m, s in summaries.items())


def report(results: Path, models: list[str] | None = None) -> str:
    results = Path(results)
    probe_name = ModelFiles.NAMES["linear_probe"]  # the file names are llm_anatomy.layout's
    models = models or sorted(p.relative_to(results).parts[0] for p in results.glob(f"*/{probe_name}"))
    if not models:
        raise FileNotFoundError(f"{results}: no <model>/{probe_name}; run the anatomy rules first "
                                f"(snakemake --cores all {Layout(results.name).anatomy_metrics})")
    f = {m: ModelFiles(results / m) for m in models}
    out = []
    for m in models:
        out += [f"#### {m}: lens and linear probe per layer", "", probe_table(pd.read_csv(f[m].linear_probe)), ""]
    have = [m for m in models if Path(f[m].ablation_summary).exists()]
    if have:
        out += ["#### Ablation sizes", "",
                ablation_sizes({m: json.loads(Path(f[m].ablation_summary).read_text()) for m in have}), "",
                "#### Spearman's rho with the exact effects (random sample; 95% bootstrap intervals)", "",
                agreement_table({m: pd.read_csv(f[m].ablation_scores) for m in have}), "",
                "#### Top tails: share of each score's top neurons above their layer's random median", "",
                tails_table({m: pd.read_csv(f[m].ablation_tails) for m in have}), "",
                "#### Top sets (top 1% of all neurons by each score, ablated together) against random sets", "",
                tops_table({m: pd.read_csv(f[m].ablation_top) for m in have}), "",
                "#### Neuron graph edges", "",
                edges_lines({m: pd.read_csv(f[m].graph_edges) for m in have}), ""]
    return "\n".join(out)


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: python -m llm_anatomy.anatomy_tables results/<profile> [model ...]")
    print(report(Path(sys.argv[1]), sys.argv[2:] or None))
