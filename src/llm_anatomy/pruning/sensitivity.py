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

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from ..ablation import Ablator, margin_of, pin_to_means
from ..replay import replay_below
from .allocation import lowest


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
