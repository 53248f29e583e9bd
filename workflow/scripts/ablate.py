"""Anatomy checked by ablation for one model: exact effects, attribution patching, score agreement."""
import networkx as nx

from llm_anatomy.ablation import ablation_stage
from llm_anatomy.data import read_split
from llm_anatomy.logs import setup_logging

sm = snakemake  # noqa: F821 (injected by Snakemake)
log = setup_logging(sm.log[0])
g = nx.read_graphml(sm.input.graph)
nodes = [(int(d["layer"]), int(d["neuron"])) for _, d in g.nodes(data=True)]
out = {key: sm.output[key] for key in sm.output.keys()}
summary = ablation_stage(sm.input.model, read_split(sm.input.val), sm.input.neuron_scores, sm.input.contributions,
                         sm.input.ffn_stats, nodes, out,
                         dict(sm.params.p, threads=sm.params.threads, device=sm.params.device))
log.info("%s: Spearman with |exact effect| %s; %d of %d graph nodes confirmed", sm.wildcards.model,
         {k: round(v[0], 3) for k, v in summary["spearman"].items()}, summary["confirmed_graph_nodes"],
         summary["graph_nodes"])
