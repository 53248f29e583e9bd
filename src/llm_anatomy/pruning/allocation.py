"""How many neurons each layer gives up: uniform, global (FLAP's), or searched on the validation split.

`searched` measures, per layer l and fraction f of a grid, the increase of the validation loss when the
layer's f lowest neurons by a criterion are removed alone, with their mean output kept (the bias fold;
a forward pass that pins their activations to the calibration means, the layers below replayed from a
cached dense pass). It then picks per-layer fractions f_l that minimise the summed increases subject to
sum_l f_l w_l = target x sum_l w_l, on each layer's lower convex hull of its measured points (exact
for the hull: segments are taken in order of increasing loss per neuron). The split read is the
validation split, never test; the additive model ignores interactions between layers, and the loss is
measured with the bias fold, not with a fitted compensation.

sensitivity_<criterion>.parquet, one row per (layer, fraction): layer int16, fraction float64, pruned int64,
loss_increase float64 (mean binary cross-entropy over the validation reviews, pruned minus dense),
reviews int64; fraction 0 rows are the dense model (increase 0).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from ..ablation import Ablator, margin_of, pin_to_means
from ..replay import replay_below
from .flap import ALLOCATIONS as FLAP_ALLOCATIONS, flap_masks

ALLOCATIONS = (*FLAP_ALLOCATIONS, "searched")


def lowest(importance: np.ndarray, count: int) -> np.ndarray:
    """The `count` lowest-importance neurons, sorted (ties by neuron index, as flap_masks breaks them)."""
    return np.sort(np.argsort(np.asarray(importance), kind="stable")[:count])


@torch.inference_mode()
def layer_sensitivity(ablator: Ablator, importance: Sequence[np.ndarray], fractions: Sequence[float]) -> pd.DataFrame:
    """Validation loss increase per (layer, fraction), each layer pruned alone (see the module docstring).
    `ablator` holds the validation reviews and their cached dense pass, with `means` set to the calibration
    means the bias fold uses."""
    model = ablator.model
    dense = sum(float(torch.nn.functional.softplus(-b.margin).sum()) for b in ablator.batches)
    rows = []
    for layer, imp in enumerate(importance):
        rows.append(dict(layer=layer, fraction=0.0, pruned=0, loss_increase=0.0))
        for f in fractions:
            idx = lowest(imp, int(round(f * len(imp))))
            total = 0.0
            for batch in ablator.batches:
                with replay_below(model, layer, batch.block_outputs), pin_to_means(model, {layer: idx}, ablator.means):
                    total += float(torch.nn.functional.softplus(-margin_of(model, batch)).sum())
            rows.append(dict(layer=layer, fraction=float(f), pruned=len(idx),
                             loss_increase=(total - dense) / ablator.n_reviews))
    df = pd.DataFrame(rows).astype(dict(layer="int16", pruned="int64"))
    df["reviews"] = np.int64(ablator.n_reviews)
    return df


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


def sensitivity_stage(model_dir, val: pd.DataFrame, criterion: str, stats_files: dict, out_path, reviews: int,
                      fractions: Sequence[float], batch_size: int = 16, threads: int | None = None,
                      device: str = "auto") -> dict:
    """sensitivity_<criterion>.parquet on the first `reviews` validation reviews. `stats_files` names the
    criterion's inputs as the plan reads them (ffn_stats, mask_gradients, contributions, obs_scores,
    neuron_scores); the bias fold uses ffn_stats' calibration means."""
    from ..batching import encode_reviews
    from ..io import write_parquet
    from ..models import load_classifier, set_threads
    from ..scores import mean_neuron_scores
    from .criteria import NeuronStats, importance

    if reviews > len(val):
        raise ValueError(f"search_reviews = {reviews} exceeds the {len(val)} reviews of the validation split; "
                         "lower it or enlarge split.val")
    set_threads(threads)
    cosine = mean_neuron_scores(stats_files["neuron_scores"]) if stats_files.get("neuron_scores") else None
    stats = NeuronStats.from_files(stats_files.get("ffn_stats"), stats_files.get("mask_gradients"),
                                   stats_files.get("contributions"), cosine=cosine,
                                   obs_scores=stats_files.get("obs_scores"))
    imp = importance(criterion, stats)
    model, tokenizer, meta = load_classifier(model_dir, device)
    head = val.iloc[:reviews]
    encoded = encode_reviews(tokenizer, meta, head["text"].tolist())
    ablator = Ablator(model, encoded, head["label"].to_numpy(), tokenizer.pad_token_id,
                      meta.get("padding_side", "right"), batch_size)
    ablator.means = [torch.tensor(m, dtype=torch.float32) for m in stats["mean"]]
    table = layer_sensitivity(ablator, imp, fractions)
    write_parquet(table, out_path)
    return dict(criterion=criterion, reviews=len(encoded), points=len(table))
