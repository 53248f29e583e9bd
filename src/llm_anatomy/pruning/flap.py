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
import torch
from torch import nn

from ..adapters import ModelAdapter

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


@torch.no_grad()
def compensate_bias(adapter: ModelAdapter, pruned: Sequence[Sequence[int]], means: Sequence[np.ndarray]) -> None:
    """Add sum_j mean_lj * v_lj over the pruned neurons to each layer's output bias.

    Call before zeroing or removing those neurons (it reads their value vectors). An output
    projection without a bias (Llama's down_proj) is given one, initially zero.
    """
    for layer, drop in enumerate(pruned):
        if not len(drop):
            continue
        idx = torch.as_tensor(np.asarray(drop, dtype=np.int64))
        out = adapter.ffn(layer).output
        values = adapter.value_vectors(layer).double()[idx]
        delta = (torch.tensor(np.array(means[layer], dtype=np.float64))[idx].unsqueeze(1) * values).sum(0)
        if out.bias is None:
            out.bias = nn.Parameter(torch.zeros(values.shape[1], dtype=out.weight.dtype, device=out.weight.device),
                                    requires_grad=False)
        out.bias += delta.to(out.bias.dtype)
