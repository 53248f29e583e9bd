"""Inference that computes the last block for the token the classifier reads, and for no other.

The classifier reads one token of the last hidden state (CLS for encoders, the last real token for
decoders). In the last block every other token's query, attention row, output projection and FFN is
work whose result is never read: only that block's keys and values need every token. On MiniLM
(6 layers) that is about a sixth of the evaluation's multiply-adds; on SmolLM2 (30 layers) about a
thirtieth. `install` swaps the last block's forward for one that writes the target token's row into
(a copy of) the block's input and returns it (each architecture's attention for one query is its adapter's
`read_token`, `llm_anatomy.adapters`): the classifier picks the same position as before,
and the rows it does not read are stale. Used by `inference.inference_model` only; every analysis that
reads hidden states or activations runs the unchanged backbone.
"""
from __future__ import annotations

import functools
import types

import torch
from torch import nn

from .adapters import ADAPTERS, target_positions


def _forward(block: nn.Module, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """The block's forward for the target token of each row, written into (a copy of) its input."""
    rows = torch.arange(hidden_states.shape[0], device=hidden_states.device)
    positions = block._readout_positions
    out = ADAPTERS[block._readout_arch].read_token(block, hidden_states, rows, positions, kwargs)
    hidden_states = hidden_states.clone()
    hidden_states[rows, positions] = out.to(hidden_states.dtype)
    return hidden_states


def supported(adapter) -> bool:
    """Whether the architecture's adapter has a read-token forward for its last block."""
    return type(adapter).read_token is not None


def is_installed(model: nn.Module) -> bool:
    return any(hasattr(m, "_readout_arch") for m in model.modules())


def install(model) -> bool:
    """Run `model`'s last block for the classifier's target token only, in place. Returns False (model
    unchanged) for an architecture without a readout, or where it is already installed.

    The block stays where it is (the adapter finds its FFN as before); its `forward` is rebound, as a
    method, so `copy.deepcopy` rebinds it to the copy, and a pre-hook on the backbone sets the block's
    target positions and key mask for each batch."""
    adapter = model.adapter
    if not supported(adapter) or is_installed(model):
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
