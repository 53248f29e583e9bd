"""Compensation of pruned attention heads in the output projection, from calibration tokens.

A head's contribution to a layer is its output (the softmax-weighted sum of its values, head_dim
wide, the head's slice of the output projection's input) times its columns of the output projection
W_o. Folding the bias (FLAP's fold, as `materialise.compensate_bias` does for FFN neurons): the
removed heads' mean output over the calibration tokens, times their columns, is added to W_o's bias,
so on average the layer writes what it wrote with them. Llama's attention has no biases
(`attention_bias: false`); it is given zero ones first (`ensure_attention_biases`), so the folded
model saves and reloads as a standard LlamaAttention.

`fit_head_outputs` fits the kept heads' columns and the bias by the FFN's closed forms
(`compensation.compensate`: none, bias, rescale, refit), one layer at a time on the dense model's
inputs; its `bias` is the fold above.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..adapters import ModelAdapter, removed_on_exit, weight_rows_are_neurons
from ..device import autocast, model_device
from ..models import SentimentClassifier
from ..surgery import set_output_rows
from .calibration import real_token_passes


@torch.inference_mode()
def head_output_means(model: SentimentClassifier, encoded: Sequence[Sequence[int]], pad_id: int,
                      padding_side: str = "right", batch_size: int = 16, precision: str = "fp32",
                      desc: str | None = None) -> list[np.ndarray]:
    """Per layer, every query head's mean output over the real tokens of `encoded`: [heads, head_dim]
    (the output projection's input, averaged in float64)."""
    if not len(encoded):
        raise ValueError("no calibration reviews given; give at least one")
    model.eval()
    adapter = model.adapter
    device = model_device(model)
    sums = [torch.zeros(adapter.attention_width(l), dtype=torch.float64, device=device)
            for l in range(adapter.num_layers)]
    state: dict = {}

    def grab(layer):
        def hook(_module, args):
            sums[layer] += args[0].double()[state["mask"]].sum(0)
        return hook

    hooks = [adapter.attention(l).output.register_forward_pre_hook(grab(l)) for l in range(adapter.num_layers)]
    with removed_on_exit(hooks), autocast(precision, device):
        tokens = real_token_passes(model, encoded, pad_id, padding_side, batch_size, state, desc)
    return [(s / tokens).cpu().numpy().reshape(adapter.attention(l).heads, -1) for l, s in enumerate(sums)]


def head_output_weights(adapter: ModelAdapter, layer: int) -> torch.Tensor:
    """The output projection's columns per head: [heads, head_dim, hidden] (head h's output times its
    slice is what the head adds to the layer's output)."""
    block = adapter.attention(layer)
    weight = block.output.weight.detach()
    rows = weight if weight_rows_are_neurons(block.output, "output") else weight.T  # [heads x head_dim, hidden]
    return rows.reshape(block.heads, block.head_dim, -1)


@torch.no_grad()
def fold_head_bias(adapter: ModelAdapter, pruned: Sequence[Sequence[int]], means: Sequence[np.ndarray]) -> None:
    """Add, per layer, sum over the pruned heads h of mean_h @ W_o[h] to the output projection's bias.

    `means[l]` is `head_output_means`'s [heads, head_dim] for layer l (every head; the pruned ones are
    read). Call before zeroing or removing those heads (it reads their columns)."""
    for layer, (drop, mu) in enumerate(zip(pruned, means)):
        if not len(drop):
            continue
        mu = np.asarray(mu, dtype=np.float64)
        block = adapter.attention(layer)
        if mu.shape != (block.heads, block.head_dim):
            raise ValueError(f"layer {layer}: head means of shape {mu.shape}, expected [{block.heads}, {block.head_dim}]")
        adapter.ensure_attention_biases()
        idx = torch.as_tensor(np.asarray(drop, dtype=np.int64))
        weights = head_output_weights(adapter, layer).double()[idx]  # [pruned, head_dim, hidden]
        delta = torch.einsum("hd,hdo->o", torch.from_numpy(mu[idx.numpy()]).to(weights.device), weights)
        out = adapter.attention(layer).output
        out.bias += delta.to(out.bias.dtype)


def kept_features(heads: int, head_dim: int, pruned: Sequence[int]) -> np.ndarray:
    """The output projection's input features of the heads not in `pruned`."""
    kept = np.setdiff1d(np.arange(heads), np.asarray(pruned, dtype=np.int64))
    return (kept[:, None] * head_dim + np.arange(head_dim)).reshape(-1)


def fit_head_outputs(model: SentimentClassifier, pruned: Sequence[Sequence[int]], encoded: Sequence[Sequence[int]],
                     pad_id: int, padding_side: str = "right", batch_size: int = 16, method: str = "refit",
                     ridge: float = 1e-2) -> list[dict]:
    """Zero the `pruned` heads of `model` and fit, per layer, its output projection's kept columns and bias by
    `method` (`compensation.METHODS`: the closed forms of the FFN's compensation, here with the kept heads'
    output features as the activations and the dense output projection's output as the target), in place.

    Each layer is fitted on the dense model's own inputs (one pass over `encoded`, every real token): the
    fit does not see the drift that pruning lower layers causes (unlike `refit.fit_compensation`'s
    layer-by-layer FFN fit). Returns per layer the kept heads, the tokens and the reconstruction error of
    no compensation, the bias fold and `method` on those tokens. Remove the heads afterwards
    (`heads.remove_heads`) for the smaller model; the zeroed one computes the same function."""
    from ..heads import check_heads, zero_masked_heads
    from .compensation import LayerStats, compensate

    pruned = check_heads(model.adapter, pruned)
    adapter = model.adapter
    model.eval()
    blocks = [adapter.attention(l) for l in range(adapter.num_layers)]
    kept = [kept_features(b.heads, b.head_dim, p) for b, p in zip(blocks, pruned)]
    stats = [LayerStats(len(k), adapter.hidden_size) for k in kept]
    state: dict = {}

    def grab(layer):
        def hook(_module, args, output):
            m = state["mask"]
            stats[layer].add(args[0][m][:, kept[layer]].double().cpu().numpy(), output[m].double().cpu().numpy())
        return hook

    todo = [l for l, p in enumerate(pruned) if len(p)]
    with removed_on_exit([blocks[l].output.register_forward_hook(grab(l)) for l in todo]), torch.inference_mode():
        real_token_passes(model, encoded, pad_id, padding_side, batch_size, state)
    adapter.ensure_attention_biases()
    report = []
    for l in todo:
        out = adapter.attention(l).output
        values = head_output_weights(adapter, l).flatten(0, 1).double().cpu().numpy()[kept[l]]  # [kept features, hidden]
        bias = out.bias.detach().double().cpu().numpy()
        every = np.arange(len(kept[l]))
        fits = {m: compensate(stats[l], every, values, bias, m, ridge) for m in ("none", "bias", method)}
        w, c = fits[method]
        set_output_rows(out, kept[l].tolist(), torch.from_numpy(w), torch.from_numpy(c))
        report.append(dict(layer=l, kept_heads=int(blocks[l].heads - len(pruned[l])), tokens=int(stats[l].n),
                           **{f"error_{m}": stats[l].error(every, *fit) for m, fit in fits.items()}))
    zero_masked_heads(adapter, pruned)
    return report
