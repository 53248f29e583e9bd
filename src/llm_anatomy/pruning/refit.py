"""Layer-by-layer compensation of a pruned classifier on calibration reviews, without training.

From the bottom layer up (Kwon et al. 2022's mask tuning; K-prune's sublayer refit), the pruned
model (the student) runs on the calibration reviews with its lower layers already compensated. At
layer l it yields the kept neurons' activations a and the residual r_s that the FFN output is added
to; the target is what the dense model (the teacher) has there, y* = FFN_t + r_t - r_s, so the layer
also absorbs the drift that pruning below has caused. `compensation.compensate` fits the kept
neurons' output weights and the bias in closed form, the student takes them, and the next layer
follows. Each pass computes one block: the blocks below replay their cached outputs and the
forward pass stops after block l. The compensated block's output, which the layers above replay, is
its first pass's with the refitted FFN output in place (`ModelAdapter.with_ffn_output`): one block pass
per layer and batch.

The last layer is fitted on one token per review (the one the classifier reads), so it has as many
samples as there are calibration reviews, fewer than its kept neurons: its own ridge (`readout_ridge`,
larger than the token-level layers' `ridge`) keeps the fit near the dense value vectors instead of
interpolating those few samples.

Attention heads pruned as well (`heads`, speed plans): in a layer with pruned heads the attention sublayer is
fitted first, the same way. Its output projection W_o maps the heads' concatenated outputs to the hidden state,
which is added to the block's input r; the kept heads' outputs (the student's) are the activations and the
target is the teacher's W_o output plus r_t - r_s, so W_o's kept columns and bias absorb the heads removed and
the drift from below. The layer's FFN is then fitted on the student with that attention in place. (Kwon et al.
2022 tune the masks of heads and neurons layer by layer the same way; here both are least-squares fits of the
output projections.)
"""
from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from ..adapters import removed_on_exit
from ..batching import iter_padded, sorted_batches
from ..device import model_device
from ..heads import check_heads, zero_masked_heads
from ..models import SentimentClassifier
from ..replay import StopForward, replay_below, stop_after
from ..surgery import set_output_rows, set_outputs, zero_masked, zero_neurons
from .calibration import calibration_reviews
from .compensation import LayerStats, compensate, relative_ridge
from .head_compensation import head_output_weights, kept_features

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


TOKEN_WEIGHTS = ("uniform", "norm")


def norm_weights(h: torch.Tensor, centred: bool) -> torch.Tensor:
    """Per token, 1 / the mean square of `h` [..., H] over its dimensions (centred first for a LayerNorm):
    how much the next normalisation scales an error added to that token's residual stream, squared."""
    if centred:
        h = h - h.mean(-1, keepdim=True)
    return 1.0 / (h.double() * h.double()).mean(-1).clamp_min(1e-12)


@torch.no_grad()
def refit_head(head: torch.nn.Linear, z: np.ndarray, logits: np.ndarray, ridge: float) -> tuple[np.ndarray, float]:
    """(w [H], b): the classifier head refitted by ridge least squares to the dense model's `logits` [R] from
    the student's read-token hidden states `z` [R, H] (after the final norm), held toward the dense head:
    min sum_r (z_r w + b - logit_r)^2 + lambda ||w - w_0||^2, lambda = ridge x trace(centred z^T z) / H."""
    z, y = np.asarray(z, dtype=np.float64), np.asarray(logits, dtype=np.float64)
    w0 = head.weight.detach().double().cpu().numpy().reshape(-1)
    zc, yc = z - z.mean(0), y - y.mean()
    g = zc.T @ zc
    lam = relative_ridge(g, ridge)
    w = np.linalg.solve(g + lam * np.eye(len(w0)), zc.T @ yc + lam * w0)
    return w, float(y.mean() - z.mean(0) @ w)


@torch.no_grad()
def fit_compensation(dense: SentimentClassifier, pruned: Sequence[np.ndarray], encoded, pad_id: int,
                     padding_side: str, batch_size: int, method: str, ridge: float, readout_ridge: float | None = None,
                     token_weights: str = "uniform", readout_context: float = 0.0, head_ridge: float | None = None,
                     select: Callable | None = None, heads: Sequence[np.ndarray] | None = None
                     ) -> tuple[SentimentClassifier, list[dict]]:
    """(student, per-sublayer report). The student is a float32 copy of `dense` (float64 if `dense` is) with the
    `pruned` neurons (and the `heads`, per layer the pruned query heads, if given) zeroed and every layer's kept
    value vectors and output bias (and, in a layer with pruned heads first, its attention output projection's kept
    columns and bias) fitted by `method`. The report holds, per fitted sublayer (`sublayer`: attention or ffn),
    the kept count (attention: heads), the calibration tokens fitted on (every real token; the last layer: the
    token the classifier reads, and the others at weight `readout_context`) and the reconstruction error
    with no compensation, with bias compensation, and with `method` (the fit never exceeds the first two).
    `readout_ridge` (default: `ridge`) is the last layer's relative ridge. `token_weights` "norm" weights
    each token's squared error by 1 / the mean square of the dense residual stream there (what the next
    norm divides by; `norm_weights`), "uniform" by 1. `head_ridge` (None: keep the dense head) refits the
    classifier head to the dense logits on the calibration reviews' read tokens (`refit_head`).

    `select(layer, stats, values, ridge, count)`, where given, re-chooses each layer's pruned neurons during the
    pass (experiments/sequential_obs.py): `stats` are then the sums over every neuron of the layer (the student's
    activations, the drift-aware target), `values` [F, H] the dense value vectors, `count` the plan's number for
    the layer; it returns the indices to prune, which the report's `pruned` records."""
    if token_weights not in TOKEN_WEIGHTS:
        raise ValueError(f"token_weights {token_weights!r} is not one of {TOKEN_WEIGHTS}")
    if readout_context < 0:
        raise ValueError(f"readout_context = {readout_context} must be >= 0 (0: the read token alone)")
    # float32 (a half-precision checkpoint is fitted in float32); a float64 model stays float64, so the fit can be
    # checked against an independent float64 solve at a tolerance set by the problem's conditioning, not by the
    # float32 rounding of the forward passes, which the solve amplifies (tests/test_pruning_refit.py).
    dtype = torch.float64 if next(dense.parameters()).dtype == torch.float64 else torch.float32
    teacher = copy.deepcopy(dense).to(dtype).eval()
    student = copy.deepcopy(dense).to(dtype).eval()
    adapter, t_adapter = student.adapter, teacher.adapter
    adapter.ensure_ffn_biases()
    t_adapter.ensure_ffn_biases()
    if select is None:
        zero_masked(adapter, [np.asarray(p, dtype=np.int64) for p in pruned])
    device = model_device(student)
    L = adapter.num_layers
    heads = [np.zeros(0, dtype=np.int64)] * L if heads is None else check_heads(adapter, heads)
    with_heads = [l for l in range(L) if len(heads[l])]
    if with_heads:
        adapter.ensure_attention_biases()
        zero_masked_heads(adapter, heads)
    batches = []  # (ids, mask, per layer the weight of each position in its fit [B, S], 0: not fitted on)
    for _i, ids, mask in iter_padded(encoded, sorted_batches([len(s) for s in encoded], batch_size), pad_id,
                                     padding_side, device):
        # Every real token in the layers below the last. The last layer only matters at the token the classifier
        # reads (Kwon et al.'s cls_only): that token, and every other real token at `readout_context` (0: none).
        read = torch.zeros_like(mask, dtype=torch.bool)
        read[torch.arange(len(mask), device=mask.device), adapter.target_positions(mask)] = True
        real = mask.double()
        batches.append((ids, mask, [real] * (L - 1) + [torch.where(read, torch.ones_like(real), real * readout_context)]))

    # The teacher's FFN output plus residual at every layer, and its attention output plus the block's input at
    # every layer with pruned heads, on the tokens fitted on: one dense pass.
    sums: list[list[torch.Tensor]] = [[] for _ in range(L)]
    weights: list[list[np.ndarray]] = [[] for _ in range(L)]
    att_sums: dict[int, list[torch.Tensor]] = {l: [] for l in with_heads}
    att_weights: dict[int, list[np.ndarray]] = {l: [] for l in with_heads}
    dense_logits = []
    for ids, mask, fit_w in batches:
        seen: dict = {}
        hooks = []
        for l in range(L):
            site, arg = t_adapter.residual_site(l)
            hooks.append(site.register_forward_pre_hook(
                lambda _m, args, l=l, arg=arg: seen.__setitem__(("r", l), args[arg])))
            hooks.append(t_adapter.ffn(l).output.register_forward_hook(
                lambda _m, _a, out, l=l: seen.__setitem__(("y", l), out)))
        for l in with_heads:
            hooks.append(t_adapter.layers()[l].register_forward_pre_hook(
                lambda _m, args, kwargs, l=l: seen.__setitem__(("in", l), _block_input(args, kwargs)), with_kwargs=True))
            hooks.append(t_adapter.attention(l).output.register_forward_hook(
                lambda _m, _a, out, l=l: seen.__setitem__(("att", l), out)))
        with removed_on_exit(hooks):
            dense_logits.append(teacher(ids, mask).double().cpu().numpy())
        parts = [(l, seen[("y", l)] + seen[("r", l)], sums[l], weights[l]) for l in range(L)]
        parts += [(l, seen[("att", l)] + seen[("in", l)], att_sums[l], att_weights[l]) for l in with_heads]
        for l, h, to_sums, to_weights in parts:
            on = fit_w[l] > 0
            u = fit_w[l][on]
            if token_weights == "norm":
                u = u * norm_weights(h[on], adapter.norm_centres).to(u.device)
            to_sums.append(h[on].cpu())
            to_weights.append(u.cpu().numpy())

    report, cached = [], [[] for _ in batches]  # cached[b]: the student's compensated block outputs
    for l in range(L):
        lam = ridge if readout_ridge is None or l < L - 1 else readout_ridge
        if l in att_sums:  # the attention output projection first, on the kept heads' output features
            block = adapter.attention(l)
            features = kept_features(block.heads, block.head_dim, heads[l])
            values = head_output_weights(adapter, l).flatten(0, 1).double().cpu().numpy()[features]
            bias = block.output.bias.detach().double().cpu().numpy()
            stats, _passes = _sublayer_sums(student, l, batches, cached, block.output, adapter.layers()[l],
                                            _block_input, features, att_sums[l], att_weights[l])
            w, c, errors = _fit(stats, np.arange(len(features)), values, bias, method, lam)
            set_output_rows(block.output, features.tolist(), torch.from_numpy(w), torch.from_numpy(c))
            report.append(dict(layer=l, sublayer="attention", kept=int(block.heads - len(heads[l])), tokens=stats.tokens,
                               ridge=lam, **{f"error_{m}": e for m, e in errors.items()}))
        width = adapter.ffn_width(l)
        kept = np.setdiff1d(np.arange(width), np.asarray(pruned[l], dtype=np.int64))
        cols = kept if select is None else np.arange(width)  # the activations the sums are taken over
        out = adapter.ffn(l).output
        values = adapter.value_vectors(l).double().cpu().numpy()[cols]
        bias = out.bias.detach().double().cpu().numpy()
        site, arg = adapter.residual_site(l)
        # per batch: the block's output, the residual its FFN output is added to, the activations
        stats, passes = _sublayer_sums(student, l, batches, cached, out, site, lambda args, _kwargs, arg=arg: args[arg],
                                       cols, sums[l], weights[l])
        chosen = {}
        if select is not None:
            drop = np.sort(np.asarray(select(l, stats, values, lam, len(pruned[l])), dtype=np.int64))
            zero_neurons(adapter, l, drop.tolist())
            kept, chosen = np.setdiff1d(cols, drop), dict(pruned=drop)
        idx = np.arange(len(kept)) if select is None else kept  # the kept neurons' rows of the sums
        w, c, errors = _fit(stats, idx, values, bias, method, lam)
        set_outputs(adapter, l, kept.tolist(), torch.from_numpy(w), torch.from_numpy(c))
        for b, (block_out, r, a) in enumerate(passes):  # the compensated block's output, for the layers above
            cached[b].append(adapter.with_ffn_output(l, block_out, r, out(a)))
        report.append(dict(layer=l, sublayer="ffn", kept=int(len(kept)), tokens=stats.tokens, ridge=lam,
                           **{f"error_{m}": e for m, e in errors.items()}, **chosen))
        log.info("layer %d: %d kept, reconstruction error none %.4g, bias %.4g, %s %.4g", l, len(kept),
                 errors["none"], errors["bias"], method, errors[method])
    if head_ridge is not None:
        z = []
        for b, (ids, mask, _fit_w) in enumerate(batches):  # every block replays: the final norm and read token
            with replay_below(student, L, cached[b]):
                z.append(student.target_tokens(adapter.last_hidden_state(ids, mask), mask).double().cpu().numpy())
        w, c = refit_head(student.head, np.concatenate(z), np.concatenate(dense_logits), head_ridge)
        student.head.weight.copy_(torch.from_numpy(w).reshape(student.head.weight.shape))
        student.head.bias.fill_(c)
    return student, report


def _block_input(args, kwargs) -> torch.Tensor:
    """A transformer block's hidden-state input, however the backbone passed it."""
    return args[0] if args else kwargs["hidden_states"]


def _sublayer_sums(student, layer, batches, cached, out, site, read, cols, sums, weights):
    """The sums one sublayer of block `layer` is fitted on, one student pass per batch (the blocks below replayed
    from `cached`, the pass stopped after block `layer`): the input features `cols` of its output projection `out`
    against `sums[b]` (the teacher's sublayer output plus residual) minus the residual the student adds the output
    to (`read(args, kwargs)` of `site`'s forward input), token weights `weights[b]`. Returns (the sums, per batch
    (the block's output, that residual, `out`'s input))."""
    stats = LayerStats(len(cols), student.adapter.hidden_size)
    passes = []
    for b, (ids, mask, fit_w) in enumerate(batches):
        seen, keep = {}, []
        with removed_on_exit([site.register_forward_pre_hook(lambda _m, args, kwargs: seen.__setitem__("r", read(args, kwargs)),
                                                             with_kwargs=True),
                              out.register_forward_pre_hook(lambda _m, args: seen.__setitem__("a", args[0]))]), \
                replay_below(student, layer, cached[b]), stop_after(student, layer, keep):
            with contextlib.suppress(StopForward):  # stop_after ends the pass after block `layer`
                student(ids, mask)
        passes.append((keep[0], seen["r"], seen["a"]))
        on = fit_w[layer] > 0
        a = seen["a"][on].double().cpu().numpy()[:, cols]
        stats.add(a, (sums[b].double() - seen["r"][on].double().cpu()).numpy(), weights[b])
    return stats, passes


def _fit(stats: LayerStats, idx: np.ndarray, values: np.ndarray, bias: np.ndarray, method: str, lam: float):
    """(W, c, errors): `method`'s fit on the sums `stats` over their features `idx`, and the reconstruction error
    of no compensation, the bias fold (both unridged) and `method`."""
    w, c = compensate(stats, idx, values, bias, method, lam)
    errors = {m: stats.error(idx, *compensate(stats, idx, values, bias, m, 0.0)) for m in ("none", "bias")}
    errors[method] = stats.error(idx, w, c)
    return w, c, errors
