"""Parameter counts and multiply-adds of a classifier, dense or physically pruned."""
from __future__ import annotations

from collections.abc import Sequence

from torch import nn
from transformers.pytorch_utils import Conv1D


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def linear_macs_per_token(layer: nn.Module) -> int:
    """Multiply-adds of every Linear / Conv1D inside one transformer layer, per token."""
    return sum(m.weight.numel() for m in layer.modules() if isinstance(m, (nn.Linear, Conv1D)))


def forward_macs(adapter, lengths: Sequence[int], readout: bool = True) -> int:
    """Multiply-adds of the backbone's layers over sequences of these lengths (no padding), as the
    evaluation loop runs them: with `readout`, the last layer computes every token's keys and values
    and everything else for the classifier's one token only (`llm_anatomy.readout`).

    Per layer and sequence of T tokens: T x (weights of its linear maps) + 2 T^2 x A (attention scores
    and the weighted sum, A = its query heads x head dimension: the hidden size unless heads were
    removed); the readout layer: T x (key and value weights) + the other weights + 2 T x A.
    Embeddings, norms and activations are left out."""
    layers = adapter.layers()
    widths = [adapter.attention_width(l) for l in range(len(layers))]
    if not readout:
        per_token = sum(linear_macs_per_token(layer) for layer in layers)
        return int(sum(T * per_token + 2 * T * T * sum(widths) for T in lengths))
    below = sum(linear_macs_per_token(layer) for layer in layers[:-1])
    kv = adapter.key_value_weights(len(layers) - 1)
    rest = linear_macs_per_token(layers[-1]) - kv
    return int(sum(T * (below + kv) + rest + 2 * T * T * sum(widths[:-1]) + 2 * T * widths[-1] for T in lengths))


def ffn_macs(adapter, lengths: Sequence[int]) -> int:
    total = sum(sum(m.weight.numel() for m in (*b.inputs, b.output)) for b in map(adapter.ffn, range(adapter.num_layers)))
    return int(sum(lengths) * total)
