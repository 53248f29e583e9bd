"""Section 3.2's neuron graph: high-score neurons layered by depth, fully connected layer to layer.

Nodes "l:j": every neuron of block l with score > threshold (kind "high") or < -threshold (kind
"offset": the negative scores the paper reads as neurons cancelling others). Edges: every high
node of block l -> every high node of block l+1, as the paper presumes; offset nodes get none.
"""
from __future__ import annotations

import networkx as nx
import numpy as np
import pandas as pd


def node_name(layer: int, neuron: int) -> str:
    return f"{layer}:{neuron}"


def neuron_graph(scores: list[np.ndarray], threshold: float) -> nx.DiGraph:
    """Graph from one score per neuron and block (e.g. mean_neuron_scores)."""
    if threshold < 0:
        raise ValueError(f"anatomy.threshold {threshold} must be >= 0 (negative scores are marked by -threshold)")
    g = nx.DiGraph(threshold=float(threshold), layers=len(scores))
    high = []
    for layer, s in enumerate(scores):
        s = np.asarray(s)
        hi = np.flatnonzero(s > threshold)
        for kind, idx in (("high", hi), ("offset", np.flatnonzero(s < -threshold))):
            for j in idx:
                g.add_node(node_name(layer, j), layer=layer, neuron=int(j), score=float(s[j]), kind=kind)
        high.append([node_name(layer, j) for j in hi])
    for layer in range(len(scores) - 1):
        g.add_edges_from((a, b) for a in high[layer] for b in high[layer + 1])
    return g


def layer_counts(g: nx.DiGraph) -> pd.DataFrame:
    """Per block: high and offset nodes, outgoing edges, and whether the block is a funnel neck
    (fewer high nodes than both neighbours, all three non-empty)."""
    n_layers = g.graph["layers"]
    kinds = pd.DataFrame([d for _, d in g.nodes(data=True)], columns=["layer", "kind"])
    hi = np.array([((kinds["layer"] == l) & (kinds["kind"] == "high")).sum() for l in range(n_layers)])
    off = np.array([((kinds["layer"] == l) & (kinds["kind"] == "offset")).sum() for l in range(n_layers)])
    neck = np.zeros(n_layers, dtype=bool)
    neck[1:-1] = (hi[:-2] > hi[1:-1]) & (hi[1:-1] > 0) & (hi[2:] > hi[1:-1])
    return pd.DataFrame({"layer": np.arange(n_layers), "n_high": hi, "n_offset": off,
                         "edges_to_next": np.append(hi[:-1] * hi[1:], 0), "funnel_neck": neck})
