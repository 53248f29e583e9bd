"""Layer-by-layer compensation of a pruned classifier on calibration reviews, without training.

From the bottom layer up (Kwon et al. 2022's mask tuning; K-prune's sublayer refit), the pruned
model (the student) runs on the calibration reviews with its lower layers already compensated. At
layer l it yields the kept neurons' activations a and the residual r_s that the FFN output is added
to; the target is what the dense model (the teacher) has there, y* = FFN_t + r_t - r_s, so the layer
also absorbs the drift that pruning below has caused. `compensation.compensate` fits the kept
neurons' output weights and the bias in closed form, the student takes them, and the next layer
follows. Each pass computes one block: the blocks below replay their cached outputs and the
forward pass stops after block l.

The last layer is fitted on one token per review (the one the classifier reads), so it has as many
samples as there are calibration reviews, fewer than its kept neurons: its own ridge (`readout_ridge`,
larger than the token-level layers' `ridge`) keeps the fit near the dense value vectors instead of
interpolating those few samples.
"""
from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from ..batching import iter_padded, sorted_batches
from ..device import model_device
from ..models import SentimentClassifier
from ..replay import StopForward, replay_below, stop_after
from ..surgery import set_outputs, zero_masked, zero_neurons
from .calibration import calibration_reviews
from .compensation import LayerStats, compensate

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CalibrationSet:
    """The tokenised calibration reviews a fitted compensation is computed on (materialise and the random
    baselines use the same batch size, so both fit the same sums)."""

    encoded: Sequence[Sequence[int]]
    pad_id: int
    padding_side: str
    batch_size: int

    @classmethod
    def from_split(cls, train: pd.DataFrame, ck, reviews: int, batch_size: int) -> "CalibrationSet":
        """The first `reviews` reviews of the train split, tokenised as the checkpoint `ck` was fine-tuned (the
        same reviews `ffn_stats` and `mask_gradients` measure)."""
        encoded, _labels = calibration_reviews(train, ck, reviews)
        return cls(encoded, ck.pad_id, ck.padding_side, batch_size)


def _run(model, ids, mask) -> None:
    try:
        model(ids, mask)
    except StopForward:
        pass


@torch.no_grad()
def fit_compensation(dense: SentimentClassifier, pruned: Sequence[np.ndarray], encoded, pad_id: int,
                     padding_side: str, batch_size: int, method: str, ridge: float, readout_ridge: float | None = None,
                     select: Callable | None = None) -> tuple[SentimentClassifier, list[dict]]:
    """(student, per-layer report). The student is a float32 copy of `dense` with the `pruned` neurons
    zeroed and every layer's kept value vectors and output bias fitted by `method`. The report holds,
    per layer, the kept count, the calibration tokens fitted on (every real token; the last layer: the
    token the classifier reads) and the reconstruction error with no
    compensation, with bias compensation, and with `method` (the fit never exceeds the first two).
    `readout_ridge` (default: `ridge`) is the last layer's relative ridge.

    `select(layer, stats, values, ridge, count)`, where given, re-chooses each layer's pruned neurons during the
    pass (experiments/sequential_obs.py): `stats` are then the sums over every neuron of the layer (the student's
    activations, the drift-aware target), `values` [F, H] the dense value vectors, `count` the plan's number for
    the layer; it returns the indices to prune, which the report's `pruned` records."""
    teacher = copy.deepcopy(dense).float().eval()
    student = copy.deepcopy(dense).float().eval()
    adapter, t_adapter = student.adapter, teacher.adapter
    adapter.ensure_ffn_biases()
    t_adapter.ensure_ffn_biases()
    if select is None:
        zero_masked(adapter, [np.asarray(p, dtype=np.int64) for p in pruned])
    device = model_device(student)
    L = adapter.num_layers
    batches = []  # (ids, mask, the tokens each layer is fitted on)
    for _i, ids, mask in iter_padded(encoded, sorted_batches([len(s) for s in encoded], batch_size), pad_id,
                                     padding_side, device):
        # The last layer only matters at the token the classifier reads (Kwon et al.'s cls_only).
        target = torch.zeros_like(mask, dtype=torch.bool)
        target[torch.arange(len(mask), device=mask.device), adapter.target_positions(mask)] = True
        batches.append((ids, mask, [mask.bool()] * (L - 1) + [target]))

    # The teacher's FFN output plus residual at every layer, on real tokens: one dense pass.
    sums: list[list[torch.Tensor]] = [[] for _ in range(L)]
    for ids, mask, fit_on in batches:
        seen: dict = {}
        hooks = []
        for l in range(L):
            site, arg = t_adapter.residual_site(l)
            hooks.append(site.register_forward_pre_hook(
                lambda _m, args, l=l, arg=arg: seen.__setitem__(("r", l), args[arg])))
            hooks.append(t_adapter.ffn(l).output.register_forward_hook(
                lambda _m, _a, out, l=l: seen.__setitem__(("y", l), out)))
        try:
            teacher(ids, mask)
        finally:
            for h in hooks:
                h.remove()
        for l in range(L):
            sums[l].append((seen[("y", l)] + seen[("r", l)])[fit_on[l]].cpu())

    report, cached = [], [[] for _ in batches]  # cached[b]: the student's compensated block outputs
    for l in range(L):
        width = adapter.ffn_width(l)
        kept = np.setdiff1d(np.arange(width), np.asarray(pruned[l], dtype=np.int64))
        cols = kept if select is None else np.arange(width)  # the activations the sums are taken over
        out = adapter.ffn(l).output
        values = adapter.value_vectors(l).double().cpu().numpy()[cols]
        bias = out.bias.detach().double().cpu().numpy()
        stats = LayerStats(len(cols), adapter.hidden_size)
        site, arg = adapter.residual_site(l)
        for b, (ids, mask, fit_on) in enumerate(batches):
            seen = {}
            h1 = site.register_forward_pre_hook(lambda _m, args: seen.__setitem__("r", args[arg]))
            h2 = out.register_forward_pre_hook(lambda _m, args: seen.__setitem__("a", args[0]))
            try:
                with replay_below(student, l, cached[b]), stop_after(student, l, []):
                    _run(student, ids, mask)
            finally:
                h1.remove()
                h2.remove()
            a = seen["a"][fit_on[l]].double().cpu().numpy()[:, cols]
            target = (sums[l][b].double() - seen["r"][fit_on[l]].double().cpu()).numpy()
            stats.add(a, target)
        lam = ridge if readout_ridge is None or l < L - 1 else readout_ridge
        chosen = {}
        if select is not None:
            drop = np.sort(np.asarray(select(l, stats, values, lam, len(pruned[l])), dtype=np.int64))
            zero_neurons(adapter, l, drop.tolist())
            kept, chosen = np.setdiff1d(cols, drop), dict(pruned=drop)
        idx = np.arange(len(kept)) if select is None else kept  # the kept neurons' rows of the sums
        w, c = compensate(stats, idx, values, bias, method, lam)
        errors = {m: stats.error(idx, *compensate(stats, idx, values, bias, m, 0.0)) for m in ("none", "bias")}
        errors[method] = stats.error(idx, w, c)
        set_outputs(adapter, l, kept.tolist(), torch.from_numpy(w), torch.from_numpy(c))
        for b, (ids, mask, _fit_on) in enumerate(batches):  # the compensated block's output, for the layers above
            keep: list = []
            with replay_below(student, l, cached[b]), stop_after(student, l, keep):
                _run(student, ids, mask)
            cached[b].append(keep[0])
        report.append(dict(layer=l, kept=int(len(kept)), tokens=int(stats.n), ridge=lam,
                           **{f"error_{m}": e for m, e in errors.items()}, **chosen))
        log.info("layer %d: %d kept, reconstruction error none %.4g, bias %.4g, %s %.4g", l, len(kept),
                 errors["none"], errors["bias"], method, errors[method])
    return student, report
