"""The searched allocation's evidence: per layer l and fraction f of a grid, the increase of the validation
loss when the layer's f lowest neurons by a criterion are removed alone, with their mean output kept (the
bias fold: a forward pass that pins their activations to the calibration means, the layers below replayed
from a cached dense pass). The split read is the validation split, never test; the loss is measured with
the bias fold, not with a fitted compensation. `allocation.searched_counts` allocates from it.

sensitivity_<criterion>.parquet, one row per (layer, fraction): layer int16, fraction float64, pruned int64,
loss_increase float64 (mean binary cross-entropy over the validation reviews, pruned minus dense),
reviews int64; fraction 0 rows are the dense model (increase 0).

`head_sensitivity` measures the same for sets of attention heads (pinned to their calibration means, or
zeroed), each set removed alone; the head criteria are checked against it (`head_criteria`).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from ..ablation import Ablator, margin_of, pin_to_means
from ..adapters import removed_on_exit
from ..models import SentimentClassifier
from ..progress import progress
from ..replay import replay_below
from .allocation import lowest


@torch.inference_mode()
def dense_loss(ablator: Ablator) -> float:
    """The dense model's loss summed over the ablator's reviews, batch by batch (what `ablated_change` subtracts)."""
    return sum(float(F.softplus(-b.margin).sum()) for b in ablator.batches)


@torch.inference_mode()
def ablated_change(ablator: Ablator, layer: int, context: Callable[[], AbstractContextManager], dense: float
                   ) -> tuple[float, float]:
    """(mean loss increase, mean margin change) over the ablator's reviews when the model runs inside `context()`,
    the blocks below `layer` replaying their cached dense outputs (so the ablation must start at `layer`).
    `dense`: `dense_loss(ablator)`, taken once per table; the ablated loss total minus it, summed as the
    sensitivity tables always were (same bits)."""
    model = ablator.model
    total = margin = 0.0
    for batch in ablator.batches:
        with replay_below(model, layer, batch.block_outputs), context():
            m = margin_of(model, batch)
        total += float(F.softplus(-m).sum())
        margin += float((m - batch.margin).sum())
    return (total - dense) / ablator.n_reviews, margin / ablator.n_reviews


@torch.inference_mode()
def sensitivity_table(ablator: Ablator, importance: Sequence[np.ndarray], fractions: Sequence[float],
                      prune: Callable | None = None, desc: str | None = "layer sensitivity") -> pd.DataFrame:
    """Validation loss increase per (layer, fraction), each layer pruned alone (see the module docstring).
    `ablator` holds the validation reviews and their cached dense pass, with `means` set to the calibration
    means the bias fold uses. `prune(layer, idx)`: a context under which the model runs with those neurons of
    the layer pruned; by default their activations pinned to the calibration means (the bias fold). `desc`
    names the progress output (ablations done of all; None: none)."""
    model = ablator.model
    if prune is None:
        def prune(layer, idx):
            return pin_to_means(model, {layer: idx}, ablator.means)
    dense = dense_loss(ablator)
    bar = progress(total=len(importance) * len(fractions), desc=desc)
    rows = []
    for layer, imp in enumerate(importance):
        rows.append(dict(layer=layer, fraction=0.0, pruned=0, loss_increase=0.0))
        for f in fractions:
            idx = lowest(imp, int(round(f * len(imp))))
            increase, _margin = ablated_change(ablator, layer, lambda: prune(layer, idx), dense)
            rows.append(dict(layer=layer, fraction=float(f), pruned=len(idx), loss_increase=increase))
            bar.update(1)
    bar.close()
    df = pd.DataFrame(rows).astype(dict(layer="int16", pruned="int64"))
    df["reviews"] = np.int64(ablator.n_reviews)
    return df


@contextmanager
def pin_heads(model: SentimentClassifier, heads: dict[int, Sequence[int]], means: Sequence[torch.Tensor] | None
              ) -> Iterator[None]:
    """Set the listed query heads' outputs (per layer; their slices of the output projection's input) to their
    means [heads, head_dim] at every position, what the bias fold leaves of them; `means=None` zeroes them
    (removal without compensation)."""
    adapter = model.adapter

    def make(layer: int, idx: torch.Tensor):
        block = adapter.attention(layer)

        def hook(_module, args):
            x = args[0].clone()
            view = x.view(*x.shape[:-1], block.heads, block.head_dim)
            view[..., idx, :] = 0.0 if means is None else means[layer][idx].to(x.dtype)
            return (x, *args[1:])
        return hook

    with removed_on_exit([adapter.attention(l).output.register_forward_pre_hook(make(l, torch.as_tensor(h, dtype=torch.long)))
                          for l, h in heads.items() if len(h)]):
        yield


def head_sensitivity(ablator: Ablator, options: Sequence[Sequence[np.ndarray]],
                     means: Sequence[torch.Tensor] | None, desc: str | None = "head sensitivity") -> pd.DataFrame:
    """Per layer l and each set of pruned query heads `options[l][k]`, removed alone (the other layers dense):
    the validation loss increase and mean margin change, the heads pinned to `means` (the bias fold) or, with
    `means=None`, zeroed. One row per (layer, option): layer, option, pruned, heads (the set), loss_increase,
    margin_change, reviews. `desc` names the progress output (ablations done of all; None: none)."""
    dense = dense_loss(ablator)
    bar = progress(total=sum(1 for sets in options for heads in sets if len(heads)), desc=desc)
    rows = []
    for layer, sets in enumerate(options):
        for k, heads in enumerate(sets):
            heads = np.asarray(heads, dtype=np.int64)
            increase, margin = 0.0, 0.0  # an empty set is the dense model: no pass needed
            if len(heads):
                increase, margin = ablated_change(ablator, layer, lambda: pin_heads(ablator.model, {layer: heads}, means),
                                                  dense)
                bar.update(1)
            rows.append(dict(layer=layer, option=k, pruned=len(heads), heads=heads.tolist(), loss_increase=increase,
                             margin_change=margin))
    bar.close()
    df = pd.DataFrame(rows).astype(dict(layer="int16", option="int64", pruned="int64"))
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
    table = sensitivity_table(ablator, imp, fractions, desc=f"layer sensitivity ({criterion})")
    write_parquet(table, sensitivity)
    return dict(criterion=criterion, reviews=len(encoded), points=len(table))
