"""Which neurons each layer gives up, lowest importance first: uniform, global, or searched on validation.

  uniform   the same fraction of every layer
  global    one cut over per-layer standardised importances (x - mean_l) / std_l, as FLAP (An et al. 2024)
            does, so layers whose neurons score evenly give up more of them
  searched  `searched` reads the per-layer validation loss increases that `pruning.sensitivity` measured and picks
per-layer fractions f_l that minimise the summed increases subject to sum_l f_l w_l = target x sum_l w_l,
on each layer's lower convex hull of its measured points (exact for the hull: segments are taken in
order of increasing loss per neuron). The additive model ignores interactions between layers.

No forward pass and no torch here: the plans and the target names (read when the workflow loads) import
this module.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

ALLOCATIONS = ("uniform", "global", "searched")


def lowest(importance: np.ndarray, count: int) -> np.ndarray:
    """The `count` lowest-importance neurons, sorted (ties broken by neuron index)."""
    return np.sort(np.argsort(np.asarray(importance), kind="stable")[:count])


def global_cut(importance: Sequence[np.ndarray], fraction: float, max_layer_fraction: float = 1.0) -> list[np.ndarray]:
    """The lowest `fraction` of all neurons by per-layer standardised importance (ties by layer, then index),
    at most `max_layer_fraction` of any one layer (a full layer's further neurons are passed over)."""
    flat = np.concatenate([(s - s.mean()) / s.std() if s.std() > 0 else np.zeros_like(s) for s in importance])
    layer_of = np.concatenate([np.full(len(s), l) for l, s in enumerate(importance)])
    order, want = np.argsort(flat, kind="stable"), int(round(fraction * len(flat)))
    if max_layer_fraction < 1.0:
        rank = np.empty(len(order), dtype=np.int64)  # each neuron's place among its layer's, in cut order
        for l in range(len(importance)):
            rank[layer_of[order] == l] = np.arange(int((layer_of == l).sum()))
        order = order[rank < np.array([int(max_layer_fraction * len(s)) for s in importance])[layer_of[order]]]
        if want > len(order):
            raise ValueError(f"target {fraction:.0%} needs {want} neurons, but max_layer_fraction "
                             f"{max_layer_fraction} allows {len(order)}; raise it or lower the target")
    order = order[:want]
    offsets = np.cumsum([0] + [len(s) for s in importance])
    return [np.sort(order[layer_of[order] == l] - offsets[l]) for l in range(len(importance))]


def _hull(xs: np.ndarray, ys: np.ndarray) -> list[tuple[float, float]]:
    """Lower convex hull of points sorted by x, starting at (0, 0)."""
    hull: list[tuple[float, float]] = []
    for p in zip(xs, ys):
        while len(hull) >= 2:
            (x1, y1), (x2, y2) = hull[-2], hull[-1]
            if (y2 - y1) * (p[0] - x1) >= (p[1] - y1) * (x2 - x1):  # hull[-1] lies on or above the chord
                hull.pop()
            else:
                break
        hull.append((float(p[0]), float(p[1])))
    return hull


def searched_counts(sensitivity: pd.DataFrame, widths: Sequence[int], target: float) -> list[int]:
    """Per layer, how many neurons to prune so the total is round(target x sum(widths)) at the least summed
    loss increase on the layers' lower convex hulls (pieces taken in order of loss per neuron)."""
    total = int(round(target * sum(widths)))
    segments = []  # (loss per neuron, layer, neurons in the segment)
    cap = 0
    for layer, w in enumerate(widths):
        part = sensitivity[sensitivity["layer"] == layer].sort_values("fraction")
        if part.empty or part["fraction"].iloc[0] != 0.0:
            raise ValueError(f"layer {layer}: the sensitivity table has no fraction-0 row; rebuild it")
        hull = _hull(part["pruned"].to_numpy(float), part["loss_increase"].to_numpy(float))
        cap += int(hull[-1][0])
        segments += [((y2 - y1) / (x2 - x1), layer, int(x2 - x1)) for (x1, y1), (x2, y2) in zip(hull, hull[1:])
                     if x2 > x1]
    if total > cap:
        raise ValueError(f"target {target:.0%} needs {total} neurons, but the sensitivity grid reaches {cap}; "
                         "extend pruning.methods.search_fractions")
    counts = [0] * len(widths)
    left = total
    for _slope, layer, n in sorted(segments, key=lambda s: (s[0], s[1])):  # once left is 0, take is 0
        take = min(n, left)
        counts[layer] += take
        left -= take
    return counts


def allocate(importance: Sequence[np.ndarray], target: float, allocation: str,
             sensitivity: pd.DataFrame | None = None, max_layer_fraction: float | None = None) -> list[np.ndarray]:
    """Per layer, the sorted indices of the `target` fraction of all neurons to prune."""
    if not 0.0 <= target <= 1.0:
        raise ValueError(f"target fraction {target} is outside [0, 1]; give a fraction such as 0.5")
    importance = [np.asarray(s, dtype=np.float64) for s in importance]
    if allocation == "uniform":
        return [lowest(s, int(round(target * len(s)))) for s in importance]
    if allocation == "global":
        return global_cut(importance, target, 1.0 if max_layer_fraction is None else max_layer_fraction)
    if allocation != "searched":
        raise ValueError(f"allocation: {allocation!r} is not one of {ALLOCATIONS}")
    if sensitivity is None:
        raise ValueError("the searched allocation needs the validation sensitivity table (sensitivity_<criterion>.parquet)")
    counts = searched_counts(sensitivity, [len(s) for s in importance], target)
    return [lowest(imp, k) for imp, k in zip(importance, counts)]


def cut_values(importance: Sequence[np.ndarray], pruned: Sequence[np.ndarray]) -> list[float]:
    """Per layer, the highest importance pruned (NaN where nothing is)."""
    return [float(np.asarray(s)[p].max()) if len(p) else float("nan") for s, p in zip(importance, pruned)]
