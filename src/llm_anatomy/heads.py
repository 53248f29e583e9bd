"""Edits to attention heads: zero them in place or slice them out (fewer heads, smaller matrices).

Query head h of a layer is head_dim output features of the query projection (weight and bias) and
head_dim input features of the output projection; it reads key/value head h // group
(`adapters.AttentionBlock`). Zeroing keeps every shape: the head's query rows and its output columns
are set to 0, so it adds nothing to the layer's output, and so are the key and value rows of a
key/value head whose every query head is zeroed. Removal keeps only the other heads: the query, key,
value and output projections shrink (GPT-2's fused `c_attn` loses the head's columns in each of its
query, key and value thirds) and the attention module's head counts follow
(`modeling_llm_anatomy.set_head_counts`), so the forward pass does less work.

Grouped-query attention (Llama; SmolLM2-135M has 9 query heads sharing 3 key/value heads, in groups
of 3): a key/value head is shared by its group's query heads, and after removal every key/value head
must still serve the same number of query heads (that is what `repeat_kv` computes). So a layer's
plan is valid when every group keeps the same number of its query heads, or none: a group that keeps
none loses its key/value head too. That covers both ways of keeping the groups consistent, removing
whole groups (SmolLM2: 3 query heads and 1 key/value head at a time) and removing the same number of
query heads from every group (3 query heads, 1 from each group, and no key/value head), and their
combination; anything else is refused before any change, naming the layer and the per-group counts.

A layer whose every head is pruned keeps one, zeroed (as `surgery.remove_masked` keeps one FFN
neuron): its attention then adds only the output projection's bias, the function of all its heads
zeroed, and the layer keeps the shapes every loader, the evaluation loop and the ONNX export handle.
The cost left is one head's attention in that layer.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from . import modeling_llm_anatomy as portable
from .adapters import KEPT_HEADS, ModelAdapter, neuron_dim


def _features(heads: Sequence[int], offset: int, head_dim: int) -> torch.Tensor:
    """The projection features of `heads` (each head_dim wide, starting at `offset`)."""
    return torch.tensor([offset + h * head_dim + i for h in heads for i in range(head_dim)], dtype=torch.long)


def check_heads(adapter: ModelAdapter, pruned: Sequence[Sequence[int]]) -> list[np.ndarray]:
    """Each layer's pruned query heads as sorted unique indices, after checking them: in range, and with
    grouped-query attention every key/value group keeping the same number of query heads or none."""
    if len(pruned) != adapter.num_layers:
        raise ValueError(f"{len(pruned)} layers of pruned heads given for a model of {adapter.num_layers} layers")
    out = []
    for layer, drop in enumerate(pruned):
        block = adapter.attention(layer)
        drop = np.unique(np.asarray(list(drop), dtype=np.int64))
        if len(drop) and (drop.min() < 0 or drop.max() >= block.heads):
            raise ValueError(f"layer {layer}: pruned heads {drop.tolist()} outside 0..{block.heads - 1}")
        kept = np.setdiff1d(np.arange(block.heads), drop)
        per_group = np.bincount(kept // block.group, minlength=block.kv_heads)
        if len(set(per_group[per_group > 0].tolist())) > 1:
            raise ValueError(
                f"layer {layer}: the heads kept per key/value group would be {per_group.tolist()} (groups of "
                f"{block.group} query heads: 0-{block.group - 1}, {block.group}-{2 * block.group - 1}, ...); with "
                "grouped-query attention every group must keep the same number of query heads or none. Prune "
                "whole groups, or the same number of query heads from every group")
        out.append(drop)
    return out


@torch.no_grad()
def zero_heads(adapter: ModelAdapter, layer: int, heads: Sequence[int]) -> None:
    """Zero the query rows and output columns of `heads` in `layer`, and the key and value rows of every
    key/value head whose query heads are all among them; every shape stays."""
    if not len(heads):
        return
    block = adapter.attention(layer)
    d = block.head_dim
    heads = sorted(int(h) for h in heads)
    gone_kv = [g for g in range(block.kv_heads)
               if all(h in heads for h in range(g * block.group, (g + 1) * block.group))]
    for (proj, offset), which in ((block.query, heads), (block.key, gone_kv), (block.value, gone_kv)):
        idx = _features(which, offset, d)
        proj.weight.index_fill_(neuron_dim(proj, "input"), idx, 0.0)
        if proj.bias is not None:
            proj.bias.index_fill_(0, idx, 0.0)
    block.output.weight.index_fill_(neuron_dim(block.output, "output"), _features(heads, 0, d), 0.0)


@torch.no_grad()
def keep_heads(adapter: ModelAdapter, layer: int, keep: Sequence[int]) -> None:
    """Physically remove every query head of `layer` not in `keep` (and every key/value head no kept
    query head reads); `check_heads` must accept the plan. The dense model's indices of the kept heads
    stay on the attention module (`ModelAdapter.kept_heads`)."""
    block = adapter.attention(layer)
    keep = sorted({int(h) for h in keep})
    if len(keep) == block.heads:
        return
    kv_keep = sorted({h // block.group for h in keep})  # the key/value heads the kept query heads read
    d = block.head_dim
    # the kept features of each input projection (GPT-2: one fused module, its query | key | value parts in order)
    rows: dict[int, tuple[nn.Module, list[torch.Tensor]]] = {}
    for (proj, offset), which in ((block.query, keep), (block.key, kv_keep), (block.value, kv_keep)):
        rows.setdefault(id(proj), (proj, []))[1].append(_features(which, offset, d))
    sliced = []  # (projection, its kept weight, its kept bias): the input projections, then the output
    for proj, parts in rows.values():
        idx = torch.cat(parts).to(proj.weight.device)
        sliced.append((proj, proj.weight.index_select(neuron_dim(proj, "input"), idx),
                       None if proj.bias is None else proj.bias.index_select(0, idx)))
    out = block.output
    out_idx = _features(keep, 0, d).to(out.weight.device)
    sliced.append((out, out.weight.index_select(neuron_dim(out, "output"), out_idx), out.bias))
    kept_before = adapter.kept_heads(layer)

    portable.resize_attention(adapter.layers()[layer], adapter.arch, len(keep), len(kv_keep))
    new = adapter.attention(layer)
    inputs = list({id(p): p for p in (new.query[0], new.key[0], new.value[0])}.values())
    for proj, (old, weight, bias) in zip([*inputs, new.output], sliced):
        if proj is old:  # the projection kept its shape (every key/value head kept): nothing was removed from it
            continue
        proj.weight.copy_(weight)
        proj.weight.requires_grad_(old.weight.requires_grad)
        if bias is not None:
            proj.bias.copy_(bias)
            proj.bias.requires_grad_(old.bias.requires_grad)
    setattr(new.module, KEPT_HEADS, [kept_before[h] for h in keep])


def remove_heads(adapter: ModelAdapter, pruned: Sequence[Sequence[int]]) -> None:
    """Slice out, per layer, the query heads listed in `pruned[layer]`; a layer losing every head keeps
    its lowest one, zeroed (the module docstring says why)."""
    for layer, drop in enumerate(check_heads(adapter, pruned)):
        if len(drop):
            keep = np.setdiff1d(np.arange(adapter.attention(layer).heads), drop).tolist()
            if not keep:
                keep = [int(drop[0])]
                zero_heads(adapter, layer, keep)
            keep_heads(adapter, layer, keep)


def zero_masked_heads(adapter: ModelAdapter, pruned: Sequence[Sequence[int]]) -> None:
    for layer, drop in enumerate(check_heads(adapter, pruned)):
        zero_heads(adapter, layer, drop.tolist())


def restore_kept_heads(adapter: ModelAdapter, kept: Sequence[Sequence[int]]) -> None:
    """Record, per layer, the dense model's indices of the heads a reloaded checkpoint kept."""
    for layer, heads in enumerate(kept):
        setattr(adapter.attention(layer).module, KEPT_HEADS, [int(h) for h in heads])
