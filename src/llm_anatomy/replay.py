"""Run a backbone from a given block on: the blocks below return cached outputs instead of computing,
and the forward pass may stop right after a chosen block. Shared by the ablation check (which
recomputes only the blocks above an ablated neuron) and the layer-by-layer compensation fit."""
from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager

from .adapters import removed_on_exit
from .models import SentimentClassifier


class StopForward(Exception):
    """Raised by `stop_after` once the chosen block has run."""


@contextmanager
def replay_below(model: SentimentClassifier, layer: int, outputs: Sequence):
    """Blocks 0..layer-1 return their cached outputs (as the block returned them) instead of computing."""
    blocks = model.adapter.layers()[:layer]
    for block, out in zip(blocks, outputs):
        block.forward = (lambda cached: (lambda *args, **kwargs: cached))(out)
    try:
        yield
    finally:
        for block in blocks:
            del block.forward


@contextmanager
def stop_after(model: SentimentClassifier, layer: int, keep: list):
    """Append block `layer`'s output to `keep`, then end the forward pass (catch `StopForward`)."""
    def hook(_module, _args, out):
        keep.append(out)
        raise StopForward
    with removed_on_exit([model.adapter.layers()[layer].register_forward_hook(hook)]):
        yield
