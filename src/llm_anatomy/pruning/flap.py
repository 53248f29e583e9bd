"""Fluctuation-based pruning with bias compensation (FLAP: An et al., 2024), retraining-free.

A neuron whose activation barely moves contributes an almost constant vector to the
residual stream: removing it and adding that constant (mean activation x value vector) to
the output projection's bias loses little. The fluctuation score measures what is lost:

  f_lj = Var_tokens[a_lj] * ||v_lj||^2

over the calibration tokens (ffn_stats.parquet). Allocation across layers:
  uniform  the same fraction of every layer, lowest f first
  global   one threshold over per-layer standardised scores (f - mean_l) / std_l, as FLAP
           does, so layers whose neurons fluctuate evenly give up more of them
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..io import read_parquet
from ..scores import per_layer

ALLOCATIONS = ("uniform", "global")


def fluctuation_scores(var: Sequence[np.ndarray], value_norm_sq: Sequence[np.ndarray]) -> list[np.ndarray]:
    return [np.asarray(v, dtype=np.float64) * np.asarray(n, dtype=np.float64) for v, n in zip(var, value_norm_sq)]


def flap_masks(scores: Sequence[np.ndarray], fraction: float, allocation: str = "uniform") -> list[np.ndarray]:
    """Per layer, the sorted indices of the neurons to prune (ties broken by neuron index)."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"target fraction {fraction} is outside [0, 1]; give a fraction such as 0.5")
    scores = [np.asarray(s, dtype=np.float64) for s in scores]
    if allocation == "uniform":
        return [np.sort(np.argsort(s, kind="stable")[: int(round(fraction * len(s)))]) for s in scores]
    if allocation == "global":
        z = []
        for s in scores:
            sd = s.std()
            z.append((s - s.mean()) / sd if sd > 0 else np.zeros_like(s))
        flat = np.concatenate(z)
        layer_of = np.concatenate([np.full(len(s), l) for l, s in enumerate(scores)])
        order = np.argsort(flat, kind="stable")[: int(round(fraction * len(flat)))]
        offsets = np.cumsum([0] + [len(s) for s in scores])
        return [np.sort(order[layer_of[order] == l] - offsets[l]) for l in range(len(scores))]
    raise ValueError(f"allocation: {allocation!r} is not one of {ALLOCATIONS}")


def score_thresholds(scores: Sequence[np.ndarray], pruned: Sequence[np.ndarray]) -> list[float]:
    """Per layer, the highest fluctuation score pruned (NaN where nothing is)."""
    return [float(np.asarray(s)[p].max()) if len(p) else float("nan") for s, p in zip(scores, pruned)]


def read_stats(path) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """(mean, var, value_norm_sq), each a list over layers 0..L-1 of arrays indexed by neuron."""
    df = read_parquet(path).set_index(["layer", "neuron"])
    return per_layer(df["mean"], path), per_layer(df["var"], path), per_layer(df["value_norm_sq"], path)
