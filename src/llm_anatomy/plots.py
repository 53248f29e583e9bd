"""Figures 1/1a (layer cosine curves), the lens beside the cosine curve, Figures 2/3 (neuron graphs),
and the ablation check of the anatomy's scores; `anatomy_figures` draws them all (rule anatomy_figures)."""
from __future__ import annotations

import logging

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import networkx as nx  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.collections import LineCollection  # noqa: E402

from .graph import node_name  # noqa: E402
from .io import atomic_path, read_json, write_json  # noqa: E402
from .probes import read_probes  # noqa: E402

log = logging.getLogger(__name__)


def save_figure(fig, path, dpi: int = 130) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
    plt.close(fig)


def plot_layer_cosine(tables: dict[str, pd.DataFrame], probes: pd.DataFrame, path) -> None:
    """One panel per model, one line per probe input (Figures 1 and 1a in one view)."""
    sns.set_theme(style="whitegrid", context="notebook")
    fig, axes = plt.subplots(1, len(tables), figsize=(6 * len(tables), 4.2), squeeze=False)
    labels = {int(r.input_id): f"{int(r.input_id)}: {r.variant}" for r in probes.itertuples()}
    for ax, (model, df) in zip(axes[0], tables.items()):
        df = df[df["input_set"] == "probe"].assign(probe=lambda d: d["input_id"].map(labels))
        sns.lineplot(data=df, x="layer", y="cosine", hue="probe", ax=ax, palette="tab10", linewidth=1.3,
                     marker="o", markersize=3)
        mean = df.groupby("layer")["cosine"].mean()
        ax.plot(mean.index, mean.values, color="black", linewidth=2.5, linestyle="--", label="mean")
        ax.set(title=f"{model}: cos(target at layer l, final target)", xlabel="layer (0 = embeddings)",
               ylabel="cosine", ylim=(min(0.0, df["cosine"].min() - 0.05), 1.05))
        handles, names = ax.get_legend_handles_labels()
        ax.get_legend().remove()
    fig.legend(handles, names, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=6, fontsize=8, frameon=False)
    save_figure(fig, path)


def plot_lens(layer_tables: dict[str, pd.DataFrame], lens_tables: dict[str, pd.DataFrame], path,
              probe_tables: dict[str, pd.DataFrame]) -> None:
    """Per model: mean probe cosine (left axis) beside the classifier lens accuracy and the linear probes'
    validation accuracy with its 95% interval (right axis)."""
    sns.set_theme(style="whitegrid", context="notebook")
    fig, axes = plt.subplots(1, len(layer_tables), figsize=(6 * len(layer_tables), 4), squeeze=False)
    for ax, model in zip(axes[0], layer_tables):
        lt = layer_tables[model]
        mean = lt[lt["input_set"] == "probe"].groupby("layer")["cosine"].mean()
        ax.plot(mean.index, mean.values, color="tab:blue", marker="o", markersize=3, label="mean cosine (probes)")
        if "cosine_normed" in lt and not np.allclose(lt["cosine_normed"], lt["cosine"]):
            normed = lt[lt["input_set"] == "probe"].groupby("layer")["cosine_normed"].mean()
            ax.plot(normed.index, normed.values, color="tab:cyan", linestyle="--", marker="o", markersize=3,
                    label="mean cosine, final norm applied")
            mean = pd.concat([mean, normed])
        ax.set(xlabel="layer (0 = embeddings)", ylabel="cosine to final target", title=f"{model}",
               ylim=(min(0.0, mean.min() - 0.05), 1.02))
        ax2 = ax.twinx()
        for name, style in (("validation", "-"), ("calibration", ":")):
            d = lens_tables[model].query("input_set == @name")
            if len(d):
                ax2.plot(d["layer"], d["accuracy"], color="tab:red", linestyle=style, marker="s", markersize=3,
                         label=f"lens accuracy ({name})")
        p = probe_tables[model]
        ax2.plot(p["layer"], p["probe_accuracy"], color="tab:green", marker="^", markersize=3,
                 label="linear probe accuracy (validation, 95% interval)")
        ax2.fill_between(p["layer"], p["probe_accuracy_lo"], p["probe_accuracy_hi"], color="tab:green", alpha=0.2)
        ax2.set(ylabel="accuracy", ylim=(0.4, 1.0))
        ax2.grid(False)
        (h1, l1), (h2, l2) = ax.get_legend_handles_labels(), ax2.get_legend_handles_labels()
        ax.legend(h1 + h2, l1 + l2, fontsize=8, loc="upper left")
    fig.subplots_adjust(wspace=0.45)
    save_figure(fig, path)


def plot_graph(g: nx.DiGraph, path, title: str, confirmed: set[str], edges: pd.DataFrame) -> None:
    """Layer 0 at the top, the last layer at the bottom; high nodes blue, offset nodes red; nodes whose
    ablation moves the margin more than 90% of random neurons (`confirmed`) ringed in black. Edges: the
    paper's presumed full connection layer to layer; the measured ones of `edges` (graph_edges.csv: the
    source's ablation moves the target more than 90% of its block) drawn dark, the others dashed."""
    n_layers = int(g.graph["layers"])
    pos, count = {}, {}
    for layer in range(n_layers):
        for kind, left, right in (("high", 0, 1), ("offset", 1.15, 1.5)):  # offset nodes on the right
            nodes = sorted((n for n, d in g.nodes(data=True) if d["layer"] == layer and d["kind"] == kind),
                           key=lambda n: g.nodes[n]["neuron"])
            count[layer, kind] = len(nodes)
            pos.update({n: (x, -layer) for n, x in zip(nodes, np.linspace(left, right, len(nodes) + 2)[1:-1])})
    fig, ax = plt.subplots(figsize=(9, max(4.0, min(0.45 * n_layers, 10.0) + 1.5)))
    measured = {(r.source, r.target) for r in edges.itertuples() if r.measured}
    presumed = [(pos[a], pos[b]) for a, b in g.edges() if (a, b) not in measured]
    if presumed:
        ax.add_collection(LineCollection(presumed, colors="grey", linewidths=0.6, linestyles="dashed",
                                         alpha=min(0.6, 40 / len(presumed) ** 0.5),
                                         label="edge presumed (paper), not measured"))
    if measured:
        ax.add_collection(LineCollection([(pos[a], pos[b]) for a, b in sorted(measured)], colors="black", linewidths=1.2,
                                         label="edge measured: source's ablation moves the target\nmore than 90% "
                                               "of its block"))
    for kind, color, rule in (("high", "tab:blue", "score > "), ("offset", "tab:red", "score < -")):
        nodes = [n for n, d in g.nodes(data=True) if d["kind"] == kind]
        if nodes:
            xy = np.array([pos[n] for n in nodes])
            ax.scatter(xy[:, 0], xy[:, 1], s=14, color=color, zorder=3, label=f"{kind} ({rule}{g.graph['threshold']})")
    ringed = [n for n in sorted(confirmed) if n in pos]
    if ringed:
        xy = np.array([pos[n] for n in ringed])
        ax.scatter(xy[:, 0], xy[:, 1], s=60, facecolors="none", edgecolors="black", linewidths=1.2, zorder=4,
                   label="confirmed by ablation")
    elif g.number_of_nodes():
        ax.plot([], [], " ", label="no node confirmed by ablation")
    for layer in range(n_layers):
        ax.text(1.55, -layer, f"{count[layer, 'high']} high / {count[layer, 'offset']} offset", va="center", fontsize=7)
    ax.set(xlim=(-0.05, 1.85), ylim=(-n_layers + 0.5, 0.5), title=title, ylabel="FFN block (layer)")
    ax.set_yticks(-np.arange(n_layers), [str(l) for l in range(n_layers)], fontsize=7)
    ax.set_xticks([])
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=2, fontsize=8, frameon=False)
    save_figure(fig, path)


def plot_ablation(tables: dict[str, pd.DataFrame], tops: dict[str, pd.DataFrame],
                    agreement: dict[str, pd.DataFrame], path) -> None:
    """Per model: attribution patching against the exact mean-ablation effect (the sampled neurons,
    graph nodes marked), Spearman of each score with |exact effect| (95% intervals), and the margin
    change when each score's top set is ablated against random sets of the same size."""
    models = list(tables)
    fig, axes = plt.subplots(len(models), 3, figsize=(18, 4.8 * len(models)), squeeze=False)
    for row, model in zip(axes, models):
        t, top, ag = tables[model], tops[model], agreement[model]
        s = t[t["in_sample"]]
        ax = row[0]
        sc = ax.scatter(s["exact_effect"], s["attribution_signed"], c=s["layer"], cmap="viridis", s=10)
        nodes = t[t["graph_node"]]
        if len(nodes):
            ax.scatter(nodes["exact_effect"], nodes["attribution_signed"], marker="*", s=80, color="red",
                       label="graph nodes")
            ax.legend(fontsize=7)
        lim = np.nanmax(np.abs(np.r_[s["exact_effect"], s["attribution_signed"]])) * 1.05
        ax.plot([-lim, lim], [-lim, lim], ":", color="grey", lw=0.8)
        fig.colorbar(sc, ax=ax, label="layer")
        ax.set(title=f"{model}: attribution patching vs exact ({len(s)} neurons)",
               xlabel="exact margin change (mean-ablation)", ylabel="attribution estimate")
        ax = row[1]
        names = ["cosine", "contribution", "fluctuation", "activation", "attribution"]
        y = np.arange(len(names))
        shifts = iter([-0.27, -0.09, 0.09, 0.27])
        for target, marker in (("mean_abs_logit", "o"), ("abs_mean_margin", "s")):
            scores = ag[ag["score"].isin(names) & (ag["target"] == target)].set_index("score").loc[names]
            for col, where in (("spearman_within_layer", "within layers"), ("spearman", "pooled")):
                ax.errorbar(scores[col], y + next(shifts), xerr=[scores[col] - scores[f"{col}_lo"],
                                                                 scores[f"{col}_hi"] - scores[col]],
                            fmt=marker, capsize=2, markersize=4, label=f"{where}, {target.replace('_', ' ')}")
        ax.axvline(0, color="grey", lw=0.8)
        ax.set_yticks(y, names)
        ax.legend(fontsize=6)
        ax.set(title=f"Spearman with the exact effect ({int(ag['neurons'].iloc[0])} random neurons)",
               xlabel="rho (95% bootstrap interval)")
        ax = row[2]
        y = np.arange(len(top))
        ax.errorbar(top["random_mean"], y, xerr=[top["random_mean"] - top["random_min"],
                                                 top["random_max"] - top["random_mean"]], fmt="|", color="grey",
                    capsize=3, label=f"random sets (mean, min-max of {int(top['random_draws'].iloc[0])})")
        ax.scatter(top["effect"], y, color="C3", zorder=3, label="top set of the score")
        ax.axvline(0, color="grey", lw=0.8)
        ax.set_yticks(y, top["score"])
        ax.set(title=f"ablating the top {int(top['neurons'].iloc[0])} neurons by each score",
               xlabel="margin change (negative: the model gets worse)")
        ax.legend(fontsize=7)
    fig.subplots_adjust(hspace=0.4, wspace=0.45)
    save_figure(fig, path)


def anatomy_figures(layer_scores: list, lens: list, linear_probe: list, graphs: list, summaries: list,
                    ablation: list, ablation_scores: list, ablation_top: list, graph_edges: list, probes, figure1,
                    lens_figure, graph_figures: list, ablation_figure, metrics, models: list) -> None:
    """Rule anatomy_figures: Figure 1, the lens (and the linear probes) beside it, each model's neuron graph
    (ablation-confirmed nodes ringed, measured edges drawn dark), the ablation figure, and the anatomy metrics
    DVC reads; every list is in the order of `models`."""
    def read(paths, reader=pd.read_csv) -> dict:
        return {m: reader(p) for m, p in zip(models, paths)}

    layers, tables = read(layer_scores, pd.read_parquet), read(ablation, pd.read_parquet)
    probe_tables, scores, edges = read(linear_probe), read(ablation_scores), read(graph_edges)
    plot_layer_cosine(layers, read_probes(probes), figure1)
    plot_lens(layers, read(lens), lens_figure, probe_tables)
    for model, graph_path, png in zip(models, graphs, graph_figures):
        g = nx.read_graphml(graph_path)
        g.graph["layers"] = int(g.graph["layers"])
        t = tables[model]
        confirmed = {node_name(int(r.layer), int(r.neuron)) for r in t[t["confirmed"]].itertuples()}
        plot_graph(g, png, f"{model}: FFN neurons with probe-mean cosine > {g.graph['threshold']} to the final target",
                   confirmed, edges[model])
    plot_ablation(tables, read(ablation_top), scores, ablation_figure)
    out = {}
    for model, path in zip(models, summaries):
        s = read_json(path)
        out[model] = {k: s[k] for k in ("max_share_high", "layers_all_inputs_below_5pct",
                                        "final_target_pairwise_cosine", "funnel_necks", "score_seconds")}
        out[model]["lens_validation_accuracy_last"] = (s["lens_validation_accuracy"][-1]
                                                       if s["lens_validation_accuracy"] else None)
        for r in scores[model].itertuples():
            out[model][f"ablation_spearman_{r.score}_{r.target}"] = [r.spearman, r.spearman_lo, r.spearman_hi]
            if r.score != "attribution_signed_vs_exact_signed":
                out[model][f"ablation_spearman_within_layer_{r.score}_{r.target}"] = [
                    r.spearman_within_layer, r.spearman_within_layer_lo, r.spearman_within_layer_hi]
        out[model]["probe_validation_accuracy"] = probe_tables[model]["probe_accuracy"].round(4).tolist()
        out[model]["graph_edges_measured"] = [int(edges[model]["measured"].sum()), len(edges[model])]
    write_json(metrics, out)
    log.info("anatomy figures for %s", models)
