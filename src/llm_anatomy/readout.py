"""Inference that computes the last block for the token the classifier reads, and for no other.

The classifier reads one token of the last hidden state (CLS for encoders, the last real token for
decoders). In the last block every other token's query, attention row, output projection and FFN is
work whose result is never read: only that block's keys and values need every token. On MiniLM
(6 layers) that is about a sixth of the evaluation's multiply-adds; on SmolLM2 (30 layers) about a
thirtieth. `install` swaps the last block's forward for one that writes the target token's row into
(a copy of) the block's input and returns it: the classifier picks the same position as before,
and the rows it does not read are stale. Used by `evaluate.inference_model` only; every analysis that
reads hidden states or activations runs the unchanged backbone.
"""
from __future__ import annotations

import functools
import types

import torch
import torch.nn.functional as F
from torch import nn

from .adapters import target_positions


def _forward(block: nn.Module, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """The block's forward for the target token of each row, written into (a copy of) its input."""
    rows = torch.arange(hidden_states.shape[0], device=hidden_states.device)
    positions = block._readout_positions
    out = READOUTS[block._readout_arch](block, hidden_states, rows, positions, kwargs)
    hidden_states = hidden_states.clone()
    hidden_states[rows, positions] = out.to(hidden_states.dtype)
    return hidden_states


def _attend(block, q, k, v, scaling):
    """Softmax attention of one query per row over that row's real tokens: [B, heads, 1, head_dim]."""
    mask = block._readout_key_mask[:, None, None, :].bool()
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scaling, enable_gqa=q.shape[1] != k.shape[1])


def _heads(x, head_dim):
    return x.view(x.shape[0], x.shape[1], -1, head_dim).transpose(1, 2)


def _bert(block, x, rows, positions, _kwargs):
    att = block.attention.self
    xt = x[rows, positions][:, None]
    hd = att.attention_head_size
    ctx = _attend(block, _heads(att.query(xt), hd), _heads(att.key(x), hd), _heads(att.value(x), hd), att.scaling)
    a = block.attention.output(ctx.transpose(1, 2).reshape(*xt.shape[:2], -1), xt)  # heads x head_dim wide
    return block.output(block.intermediate(a), a)[:, 0]


def _gpt2(block, x, rows, positions, _kwargs):
    attn = block.attn
    xt = x[rows, positions][:, None]
    h = block.ln_1(x)
    width = attn.c_attn.weight.shape[1] // 3  # the kept heads' width (hidden for a dense model)
    # c_attn is a Conv1D (weight [in, 3 x width]): its query columns for the target token only
    q = torch.addmm(attn.c_attn.bias[:width], h[rows, positions], attn.c_attn.weight[:, :width])[:, None]
    kv = torch.addmm(attn.c_attn.bias[width:], h.reshape(-1, h.shape[-1]), attn.c_attn.weight[:, width:])
    k, v = kv.view(*h.shape[:2], 2 * width).split(width, dim=2)
    hd = attn.head_dim
    ctx = _attend(block, _heads(q, hd), _heads(k, hd), _heads(v, hd), attn.scaling)
    a = xt + attn.resid_dropout(attn.c_proj(ctx.transpose(1, 2).reshape(*xt.shape[:2], -1)))
    return (a + block.mlp(block.ln_2(a)))[:, 0]


def _llama(block, x, rows, positions, kwargs):
    attn = block.self_attn
    xt = x[rows, positions][:, None]
    h = block.input_layernorm(x)
    hd = attn.head_dim
    q = _heads(attn.q_proj(h[rows, positions][:, None]), hd)
    k, v = _heads(attn.k_proj(h), hd), _heads(attn.v_proj(h), hd)
    cos, sin = kwargs["position_embeddings"]  # [B, T, head_dim]
    q = _rotate(q, cos[rows, positions][:, None], sin[rows, positions][:, None])
    k = _rotate(k, cos, sin)
    ctx = _attend(block, q, k, v, attn.scaling)
    a = xt + attn.o_proj(ctx.transpose(1, 2).reshape(*xt.shape[:2], -1))
    return (a + block.mlp(block.post_attention_layernorm(a)))[:, 0]


READOUTS = {"bert": _bert, "gpt2": _gpt2, "llama": _llama}


def _rotate(x, cos, sin):
    """Rotary position embedding, as transformers' `apply_rotary_pos_emb` ([B, heads, T, head_dim])."""
    cos, sin = cos[:, None].to(x.dtype), sin[:, None].to(x.dtype)
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


def is_installed(model: nn.Module) -> bool:
    return any(hasattr(m, "_readout_arch") for m in model.modules())


def install(model) -> bool:
    """Run `model`'s last block for the classifier's target token only, in place. Returns False (model
    unchanged) for an architecture without a readout, or where it is already installed.

    The block stays where it is (the adapter finds its FFN as before); its `forward` is rebound, as a
    method, so `copy.deepcopy` rebinds it to the copy, and a pre-hook on the backbone sets the block's
    target positions and key mask for each batch."""
    adapter = model.adapter
    if adapter.arch not in READOUTS or is_installed(model):
        return False
    block = adapter.layers()[-1]
    block._readout_arch, block._readout_decoder = adapter.arch, adapter.is_decoder
    block._readout_positions = block._readout_key_mask = None
    block.forward = types.MethodType(_forward, block)
    # a partial, not a closure: deepcopy copies its arguments, so a copied backbone's hook sets its own block
    adapter.backbone.register_forward_pre_hook(functools.partial(_set_targets, block), with_kwargs=True)
    return True


def _set_targets(block: nn.Module, _backbone, _args, kwargs) -> None:
    mask = kwargs["attention_mask"]
    block._readout_key_mask = mask
    block._readout_positions = target_positions(mask, block._readout_decoder)
