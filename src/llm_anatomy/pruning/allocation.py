"""How many neurons each layer gives up: uniform, global (FLAP's), or searched on the validation split.

`searched` reads the per-layer validation loss increases that `pruning.sensitivity` measured and picks
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

from .flap import ALLOCATIONS as FLAP_ALLOCATIONS, flap_masks

ALLOCATIONS = (*FLAP_ALLOCATIONS, "searched")


def lowest(importance: np.ndarray, count: int) -> np.ndarray:
    """The `count` lowest-importance neurons, sorted (ties by neuron index, as flap_masks breaks them)."""
    return np.sort(np.argsort(np.asarray(importance), kind="stable")[:count])


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
    for _slope, layer, n in sorted(segments, key=lambda s: (s[0], s[1])):
        take = min(n, left)
        counts[layer] += take
        left -= take
        if left == 0:
            break
    return counts


def allocate(importance: Sequence[np.ndarray], target: float, allocation: str,
             sensitivity: pd.DataFrame | None = None) -> list[np.ndarray]:
    """Per layer, the sorted indices of the neurons to prune."""
    if allocation in FLAP_ALLOCATIONS:
        return flap_masks(importance, target, allocation)
    if allocation != "searched":
        raise ValueError(f"allocation: {allocation!r} is not one of {ALLOCATIONS}")
    if sensitivity is None:
        raise ValueError("the searched allocation needs the validation sensitivity table (sensitivity_<criterion>.parquet)")
    counts = searched_counts(sensitivity, [len(s) for s in importance], target)
    return [lowest(imp, k) for imp, k in zip(importance, counts)]
