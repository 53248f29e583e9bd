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


def forward_macs(adapter, lengths: Sequence[int]) -> int:
    """Multiply-adds of the backbone's layers over sequences of these lengths (no padding).

    Per layer and sequence of T tokens: T x (weights of its linear maps) + 2 T^2 x hidden
    (attention scores and the weighted sum). Embeddings, norms and activations are left out.
    """
    per_token = sum(linear_macs_per_token(layer) for layer in adapter.layers())
    hidden = adapter.hidden_size
    L = adapter.num_layers
    return int(sum(T * per_token + 2 * L * T * T * hidden for T in lengths))


def ffn_macs(adapter, lengths: Sequence[int]) -> int:
    tokens = sum(lengths)
    total = 0
    for l in range(adapter.num_layers):
        block = adapter.ffn(l)
        total += sum(m.weight.numel() for m in (*block.inputs, block.output))
    return int(tokens * total)
