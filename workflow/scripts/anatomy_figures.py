"""Figure 1 (cosine curves), the lens beside the cosine curve, Figures 2/3 (neuron graphs, ablation-confirmed
nodes ringed), the ablation figure, metrics."""
import json

import networkx as nx
import pandas as pd

from llm_anatomy.io import write_json
from llm_anatomy.logs import setup_logging
from llm_anatomy.graph import node_name
from llm_anatomy.plots import ablation_figure, graph_figure, layer_cosine_figure, lens_figure
from llm_anatomy.probes import read_probes

sm = snakemake  # noqa: F821 (injected by Snakemake)
log = setup_logging(sm.log[0])
models = list(sm.params.models)
layers = {m: pd.read_parquet(p) for m, p in zip(models, sm.input.layer_scores)}
lens = {m: pd.read_csv(p) for m, p in zip(models, sm.input.lens)}
layer_cosine_figure(layers, read_probes(sm.input.probes), sm.output.figure1)
lens_figure(layers, lens, sm.output.lens, {m: pd.read_csv(p) for m, p in zip(models, sm.input.linear_probe)})
ablation = {m: pd.read_parquet(p) for m, p in zip(models, sm.input.ablation)}
edges = {m: pd.read_csv(p) for m, p in zip(models, sm.input.graph_edges)}
for model, graph_path, png in zip(models, sm.input.graphs, sm.output.graphs):
    g = nx.read_graphml(graph_path)
    g.graph["layers"] = int(g.graph["layers"])
    t = ablation[model]
    confirmed = {node_name(int(r.layer), int(r.neuron)) for r in t[t["confirmed"]].itertuples()}
    graph_figure(g, png, f"{model}: FFN neurons with probe-mean cosine > {g.graph['threshold']} to the final target",
                 confirmed, edges[model])
ablation_figure(ablation, {m: pd.read_csv(p) for m, p in zip(models, sm.input.ablation_top)},
                {m: pd.read_csv(p) for m, p in zip(models, sm.input.ablation_scores)}, sm.output.ablation)
metrics = {}
for model, path in zip(models, sm.input.summaries):
    s = json.loads(open(path).read())
    metrics[model] = {k: s[k] for k in ("max_share_high", "layers_all_inputs_below_5pct",
                                        "final_target_pairwise_cosine", "funnel_necks", "score_seconds")}
    metrics[model]["lens_validation_accuracy_last"] = (s["lens_validation_accuracy"][-1]
                                                       if s["lens_validation_accuracy"] else None)
for model, path in zip(models, sm.input.ablation_scores):
    for r in pd.read_csv(path).itertuples():
        metrics[model][f"ablation_spearman_{r.score}_{r.target}"] = [r.spearman, r.spearman_lo, r.spearman_hi]
        if r.score != "attribution_signed_vs_exact_signed":
            metrics[model][f"ablation_spearman_within_layer_{r.score}_{r.target}"] = [
                r.spearman_within_layer, r.spearman_within_layer_lo, r.spearman_within_layer_hi]
for model, path in zip(models, sm.input.linear_probe):
    metrics[model]["probe_validation_accuracy"] = pd.read_csv(path)["probe_accuracy"].round(4).tolist()
for model in models:
    metrics[model]["graph_edges_measured"] = [int(edges[model]["measured"].sum()), len(edges[model])]
write_json(sm.output.metrics, metrics)
log.info("anatomy figures for %s", models)
