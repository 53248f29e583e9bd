"""Apply a plan to a fine-tuned classifier: in memory (zeroed or removed) or as a saved, smaller folder.

A materialised folder is a classifier checkpoint like the fine-tuned one (safetensors,
config, tokenizer, head, classifier.json with the per-layer FFN widths), with any
compensation already in its weights (the bias fold, or the fitted value vectors and output
biases of rescale/refit; a speed plan's pruned heads removed too, their compensation in the
attention output projection), plus `pruning.json` (the plan's
parameters, parameter counts and the folder's size). It loads in a fresh process with
`llm_anatomy.load_classifier(folder)` (also spelled `load_pruned`).
"""
from __future__ import annotations

import copy
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..adapters import ModelAdapter
from ..io import atomic_dir, write_json
from ..data import read_split
from ..layout import folder_file
from ..models import SentimentClassifier, open_checkpoint, save_classifier
from ..heads import remove_heads, zero_masked_heads
from ..surgery import remove_masked, set_output_rows, set_outputs, zero_masked
from ..costs import count_parameters
from .head_compensation import fold_head_bias, head_output_means, head_output_weights, kept_features
from .plan import Plan, read_plan
from .refit import CalibrationSet, fit_compensation

log = logging.getLogger(__name__)

@torch.no_grad()
def compensate_bias(adapter: ModelAdapter, pruned: Sequence[Sequence[int]], pruned_means: Sequence[np.ndarray]) -> None:
    """Add sum_j mean_lj * v_lj over the pruned neurons to each layer's output bias.

    `pruned_means[l]` holds the mean activation of each neuron in `pruned[l]`, in the same
    order. Call before zeroing or removing those neurons (it reads their value vectors). An
    FFN without biases (Llama's, `mlp_bias: false`) is given them first (`ensure_ffn_biases`),
    so the compensated model saves and reloads as a standard checkpoint."""
    for layer, (drop, mu) in enumerate(zip(pruned, pruned_means)):
        if not len(drop):
            continue
        if len(mu) != len(drop):
            raise ValueError(f"layer {layer}: {len(mu)} mean activations for {len(drop)} pruned neurons")
        adapter.ensure_ffn_biases()
        idx = torch.as_tensor(np.asarray(drop, dtype=np.int64))
        out = adapter.ffn(layer).output
        values = adapter.value_vectors(layer).double()[idx]
        delta = (torch.tensor(np.asarray(mu, dtype=np.float64), device=values.device).unsqueeze(1) * values).sum(0)
        out.bias += delta.to(out.bias.dtype)


def pruned_copy(model: SentimentClassifier, plan: Plan, how: str = "removed",
                calibration: CalibrationSet | None = None) -> SentimentClassifier:
    """A deep copy of `model` with the plan's neurons (and heads, if it prunes any) zeroed (same shapes) or
    removed (smaller matrices), the plan's compensation applied first: the bias fold (the neurons' from the
    plan's means, the heads' mean outputs measured here on `calibration`), or a fitted one (rescale, refit)
    computed here on `calibration`, layer by layer (`refit.fit_compensation`, heads and neurons together)."""
    if how not in ("zeroed", "removed"):
        raise ValueError(f"how={how!r}: choose zeroed or removed")
    if plan.needs_calibration and calibration is None:
        raise ValueError(f"{plan.compensation} compensation of this plan is computed on calibration reviews; none "
                         "were given")
    if plan.fitted:
        dtype = next(model.parameters()).dtype
        out, _report = fit_compensation(model, plan.pruned, calibration.encoded, calibration.pad_id,
                                        calibration.padding_side, calibration.batch_size, plan.compensation,
                                        plan.spec.ridge, plan.spec.readout_ridge, heads=plan.pruned_heads)
        out.to(dtype)
    else:
        out = copy.deepcopy(model)
        if plan.compensation == "bias":
            if plan.pruned_heads is not None:
                fold_head_bias(out.adapter, plan.pruned_heads,
                               head_output_means(out, calibration.encoded, calibration.pad_id, calibration.padding_side,
                                                 calibration.batch_size))
            compensate_bias(out.adapter, plan.pruned, plan.pruned_means)
    (zero_masked if how == "zeroed" else remove_masked)(out.adapter, plan.pruned)
    if plan.pruned_heads is not None:
        (zero_masked_heads if how == "zeroed" else remove_heads)(out.adapter, plan.pruned_heads)
    return out


def zeroed_like(dense: SentimentClassifier, removed: SentimentClassifier, plan: Plan) -> SentimentClassifier:
    """The zeroed counterpart of a materialised model: the dense shapes with the plan's neurons (and heads)
    zeroed and every kept neuron's value vector and the output biases (in a layer with pruned heads, the kept
    heads' output columns and the attention output bias too) taken from `removed`, so a compensation computed
    on calibration reviews (which it would need to recompute) is carried over as the folder holds it."""
    out = copy.deepcopy(dense)
    out.adapter.ensure_ffn_biases()
    zero_masked(out.adapter, plan.pruned)
    for layer, drop in enumerate(plan.pruned):
        kept = np.setdiff1d(np.arange(dense.adapter.ffn_width(layer)), np.asarray(drop, dtype=np.int64))
        set_outputs(out.adapter, layer, kept.tolist(), removed.adapter.value_vectors(layer).detach(),
                    removed.adapter.ffn(layer).output.bias.detach())
    if plan.pruned_heads is not None and any(map(len, plan.pruned_heads)):
        out.adapter.ensure_attention_biases()
        zero_masked_heads(out.adapter, plan.pruned_heads)
        for layer, drop in enumerate(plan.pruned_heads):
            if len(drop):  # the layers whose attention output the compensation changed (and gave a bias)
                block = dense.adapter.attention(layer)
                kept = kept_features(block.heads, block.head_dim, drop)
                rows = head_output_weights(removed.adapter, layer).flatten(0, 1)
                set_output_rows(out.adapter.attention(layer).output, kept.tolist(), rows[:len(kept)],
                                removed.adapter.attention(layer).output.bias.detach())
    return out


def folder_bytes(folder: str | Path) -> int:
    return sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file())


def calibration_set(plan: Plan, ck, fit: dict | None, train, where) -> CalibrationSet | None:
    """The calibration reviews a plan's fitted compensation (or its pruned heads' bias fold) is computed on (None
    for any other plan): the first `fit["reviews"]` reviews of the `train` split, batched by `fit["batch_size"]`."""
    if not plan.needs_calibration:
        return None
    if train is None or not fit:
        raise ValueError(f"{where}: {plan.compensation} compensation of this plan is computed on the train split's "
                         "calibration reviews; pass train and fit (the rules do for fitted plans)")
    return CalibrationSet.from_split(read_split(train), ck, fit["reviews"], fit["batch_size"])


def materialise(finetuned, plan, pruned, target: str, fit: dict | None = None, train=None) -> None:
    """Rule materialise: the physically pruned classifier of `plan` written to the folder `pruned` (atomically),
    with its pruning.json. A fitted compensation is computed on the calibration reviews `fit` names."""
    start = time.perf_counter()
    plan_path, ck = plan, open_checkpoint(finetuned)
    model, plan = ck.model, read_plan(plan_path)
    calibration = calibration_set(plan, ck, fit, train, plan_path)
    widths = model.adapter.ffn_widths()
    if [int(w) for w in plan.table["width"]] != widths:
        raise ValueError(f"{plan_path} was planned for FFN widths {plan.table['width'].tolist()}, but {finetuned} "
                         f"has {widths}; rebuild the plan from this checkpoint's scores")
    heads = model.adapter.head_counts()
    if plan.pruned_heads is not None and [int(h) for h in plan.table["heads"]] != heads:
        raise ValueError(f"{plan_path} was planned for {plan.table['heads'].tolist()} heads per layer, but {finetuned} "
                         f"has {heads}; rebuild the plan from this checkpoint")
    out = pruned_copy(model, plan, "removed", calibration)
    info = dict(target=target, source=str(finetuned), plan=plan.info.to_dict(), ffn_widths_dense=widths,
                calibration_reviews=len(calibration.encoded) if calibration else 0,
                ffn_widths=out.adapter.ffn_widths(), neurons_pruned=int(sum(plan.counts)),
                params_dense=count_parameters(model), params_pruned=count_parameters(out))
    if plan.pruned_heads is not None:  # speed plans only: the others' pruning.json is as it was
        info.update(attention_heads_dense=heads, attention_heads=out.adapter.head_counts(),
                    kv_heads=out.adapter.kv_head_counts(), heads_pruned=int(sum(map(len, plan.pruned_heads))))
    with atomic_dir(pruned) as tmp:
        save_classifier(out, ck.tokenizer, tmp, dict(ck.meta, pruned_from=str(finetuned), target=target))
        info["bytes"] = folder_bytes(tmp)
        info["bytes_dense"] = folder_bytes(finetuned)
        info["seconds"] = time.perf_counter() - start
        write_json(folder_file(tmp, "pruning"), info)
    log.info("%s: %d of %d FFN neurons removed; %.1fM -> %.1fM parameters, %.1f -> %.1f MB on disk",
             pruned, info["neurons_pruned"], sum(widths), info["params_dense"] / 1e6, info["params_pruned"] / 1e6,
             info["bytes_dense"] / 1e6, info["bytes"] / 1e6)
