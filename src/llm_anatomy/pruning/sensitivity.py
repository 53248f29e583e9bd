"""The searched allocation's evidence: per layer l and fraction f of a grid, the increase of the validation
loss when the layer's f lowest neurons by a criterion are removed alone, with their mean output kept (the
bias fold: a forward pass that pins their activations to the calibration means, the layers below replayed
from a cached dense pass). The split read is the validation split, never test; the loss is measured with
the bias fold, not with a fitted compensation. `allocation.searched_counts` allocates from it.

sensitivity_<criterion>.parquet, one row per (layer, fraction): layer int16, fraction float64, pruned int64,
loss_increase float64 (mean binary cross-entropy over the validation reviews, pruned minus dense),
reviews int64; fraction 0 rows are the dense model (increase 0).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import torch

from ..ablation import Ablator, margin_of, pin_to_means
from ..replay import replay_below
from .allocation import lowest


@torch.inference_mode()
def sensitivity_table(ablator: Ablator, importance: Sequence[np.ndarray], fractions: Sequence[float],
                      prune: Callable | None = None) -> pd.DataFrame:
    """Validation loss increase per (layer, fraction), each layer pruned alone (see the module docstring).
    `ablator` holds the validation reviews and their cached dense pass, with `means` set to the calibration
    means the bias fold uses. `prune(layer, idx)`: a context under which the model runs with those neurons of
    the layer pruned; by default their activations pinned to the calibration means (the bias fold)."""
    model = ablator.model
    if prune is None:
        def prune(layer, idx):
            return pin_to_means(model, {layer: idx}, ablator.means)
    dense = sum(float(torch.nn.functional.softplus(-b.margin).sum()) for b in ablator.batches)
    rows = []
    for layer, imp in enumerate(importance):
        rows.append(dict(layer=layer, fraction=0.0, pruned=0, loss_increase=0.0))
        for f in fractions:
            idx = lowest(imp, int(round(f * len(imp))))
            total = 0.0
            for batch in ablator.batches:
                with replay_below(model, layer, batch.block_outputs), prune(layer, idx):
                    total += float(torch.nn.functional.softplus(-margin_of(model, batch)).sum())
            rows.append(dict(layer=layer, fraction=float(f), pruned=len(idx),
                             loss_increase=(total - dense) / ablator.n_reviews))
    df = pd.DataFrame(rows).astype(dict(layer="int16", pruned="int64"))
    df["reviews"] = np.int64(ablator.n_reviews)
    return df


def layer_sensitivity(finetuned, val, sensitivity, criterion: str, reviews: int, fractions: Sequence[float],
                      batch_size: int, threads: int | None, device: str, neuron_scores=None, ffn_stats=None,
                      mask_gradients=None, contributions=None, obs_scores=None) -> dict:
    """Rule layer_sensitivity: the `sensitivity` table of one criterion on the first `reviews` validation reviews.
    The criterion reads the files it needs among the last five (as the plan reads them); the bias fold uses
    ffn_stats' calibration means."""
    from ..data import read_split
    from ..io import write_parquet
    from ..models import open_checkpoint
    from ..scores import mean_neuron_scores
    from .criteria import NeuronStats, importance

    val = read_split(val)
    if reviews > len(val):
        raise ValueError(f"search_reviews = {reviews} exceeds the {len(val)} reviews of the validation split; "
                         "lower it or enlarge split.val")
    cosine = mean_neuron_scores(neuron_scores) if neuron_scores else None
    stats = NeuronStats.from_files(ffn_stats, mask_gradients, contributions, cosine=cosine, obs_scores=obs_scores)
    imp = importance(criterion, stats)
    ck = open_checkpoint(finetuned, device, threads)
    head = val.iloc[:reviews]
    encoded = ck.encode(head["text"].tolist())
    ablator = Ablator(ck.model, encoded, head["label"].to_numpy(), ck.pad_id, ck.padding_side, batch_size)
    ablator.means = [torch.tensor(m, dtype=torch.float32) for m in stats["mean"]]
    table = sensitivity_table(ablator, imp, fractions)
    write_parquet(table, sensitivity)
    return dict(criterion=criterion, reviews=len(encoded), points=len(table))
