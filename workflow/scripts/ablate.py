"""Anatomy checked by ablation for one model: exact effects, attribution patching, score agreement, the
neuron graph's edges measured."""
import networkx as nx

from llm_anatomy.ablation import ablation_stage
from llm_anatomy.data import read_split
from llm_anatomy.logs import setup_logging

sm = snakemake  # noqa: F821 (injected by Snakemake)
log = setup_logging(sm.log[0])
g = nx.read_graphml(sm.input.graph)
key = {n: (int(d["layer"]), int(d["neuron"])) for n, d in g.nodes(data=True)}
out = {name: sm.output[name] for name in sm.output.keys()}
summary = ablation_stage(sm.input.model, read_split(sm.input.val), sm.input.neuron_scores, sm.input.contributions,
                         sm.input.ffn_stats, list(key.values()), out,
                         dict(sm.params.p, threads=sm.params.threads, device=sm.params.device),
                         graph_edges=[(key[u], key[v]) for u, v in g.edges()])
log.info("%s: within-layer Spearman with the exact effects %s; %d of %d graph nodes confirmed, %d of %d edges "
         "measured", sm.wildcards.model, summary["spearman_within_layer"], summary["confirmed_graph_nodes"],
         summary["graph_nodes"], summary["measured_graph_edges"], summary["graph_edges"])
