"""Edits to FFN neurons: zero them in place (the paper's way) or slice them out (a smaller model).

A neuron j of layer l is one row of every input projection (weight and bias) plus one
value vector of the output projection. Zeroing keeps every shape; removal keeps only the
selected neurons, so the matrices shrink and the forward pass does less work.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from .adapters import ModelAdapter, neuron_dim


@torch.no_grad()
def zero_neurons(adapter: ModelAdapter, layer: int, neurons: torch.Tensor | Sequence[int]) -> None:
    """Zero the input rows, input biases and value vectors of `neurons` in `layer`."""
    idx = torch.as_tensor(neurons, dtype=torch.long)
    if idx.numel() == 0:
        return
    block = adapter.ffn(layer)
    for proj in block.inputs:
        proj.weight.index_fill_(neuron_dim(proj, "input"), idx, 0.0)
        if proj.bias is not None:
            proj.bias.index_fill_(0, idx, 0.0)
    block.output.weight.index_fill_(neuron_dim(block.output, "output"), idx, 0.0)


def _sliced(module: nn.Module, keep: torch.Tensor, side: str) -> nn.Module:
    """A new projection holding only the neurons in `keep` (same type, dtype and device)."""
    dim = neuron_dim(module, side)
    weight = module.weight.detach().index_select(dim, keep).clone()
    bias = module.bias
    if bias is not None:  # an output projection's bias is per hidden feature: kept whole
        bias = (bias.detach().index_select(0, keep) if side == "input" else bias.detach()).clone()
    if isinstance(module, Conv1D):
        new = Conv1D(weight.shape[1], weight.shape[0])  # Conv1D(nf=out, nx=in), weight [in, out]
    else:
        new = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    new = new.to(device=weight.device, dtype=weight.dtype)
    new.weight = nn.Parameter(weight, requires_grad=module.weight.requires_grad)
    if bias is not None:
        new.bias = nn.Parameter(bias, requires_grad=module.bias.requires_grad)
    return new


def _replace(root: nn.Module, old: nn.Module, new: nn.Module) -> None:
    for parent in root.modules():
        for name, child in parent.named_children():
            if child is old:
                setattr(parent, name, new)
                return
    raise LookupError("module to replace is not inside the backbone")


@torch.no_grad()
def remove_masked(adapter: ModelAdapter, pruned: Sequence[Sequence[int]]) -> None:
    """Slice out, per layer, the neurons listed in `pruned[layer]`: its projections are replaced by ones
    holding only the kept neurons.

    A layer whose every neuron is pruned keeps one, zeroed (same function as zeroing them all):
    zero-width projections break GPT-2's Conv1D and cannot be saved and reloaded."""
    for layer, drop in enumerate(pruned):
        if len(drop):
            drop_set = set(int(d) for d in drop)
            keep = [j for j in range(adapter.ffn_width(layer)) if j not in drop_set]
            if not keep:
                keep = [min(drop_set)]
                zero_neurons(adapter, layer, keep)
            keep = torch.as_tensor(keep, dtype=torch.long)  # sorted and unique
            block = adapter.ffn(layer)
            for proj in block.inputs:
                _replace(adapter.backbone, proj, _sliced(proj, keep, "input"))
            _replace(adapter.backbone, block.output, _sliced(block.output, keep, "output"))


def zero_masked(adapter: ModelAdapter, pruned: Sequence[Sequence[int]]) -> None:
    for layer, drop in enumerate(pruned):
        zero_neurons(adapter, layer, list(drop))


@torch.no_grad()
def set_output_rows(out: nn.Module, rows: Sequence[int], values: torch.Tensor, bias: torch.Tensor) -> None:
    """Overwrite an output projection's weights from its input features `rows` (rows of `values`
    [len(rows), hidden], same order: an FFN's value vectors, the kept heads' columns of an attention output
    projection) and its bias, which must exist."""
    idx = torch.as_tensor(list(rows), dtype=torch.long, device=out.weight.device)
    values = values.to(device=out.weight.device, dtype=out.weight.dtype)
    if neuron_dim(out, "output") == 0:
        out.weight[idx] = values
    else:
        out.weight[:, idx] = values.T
    out.bias.copy_(bias.to(device=out.bias.device, dtype=out.bias.dtype))


@torch.no_grad()
def set_outputs(adapter: ModelAdapter, layer: int, neurons: Sequence[int], values: torch.Tensor,
                bias: torch.Tensor) -> None:
    """Overwrite the value vectors of `neurons` (rows of `values` [len(neurons), hidden], same order)
    and the output projection's bias of `layer`; an FFN without biases is given them first."""
    adapter.ensure_ffn_biases()
    set_output_rows(adapter.ffn(layer).output, neurons, values, bias)
