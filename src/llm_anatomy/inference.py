"""Inference: the evaluation loop (`inference_model`, `predict_logits`), and a classifier folder evaluated on a
split (`evaluate_folder`; rule evaluate_dense) -> per-review logits (`llm_anatomy.logits`), which every later
comparison pairs on the same reviews."""
from __future__ import annotations

import copy
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from . import fused, readout
from .batching import progress_batches
from .data import read_split
from .device import amp_dtype, autocast, describe, machine_info, model_device
from .logits import accuracy_of, first_reviews, logits_frame, write_logits
from .models import SentimentClassifier, open_checkpoint
from .roofline import pass_speed

log = logging.getLogger(__name__)


def inference_model(model: SentimentClassifier, precision: str, fuse: bool = True,
                    last_token: bool = True) -> SentimentClassifier:
    """The model as inference runs it at `precision`, made once: a copy whose last block computes the
    classifier's one token only (`llm_anatomy.readout`), whose backbone parameters are stored in bf16
    (for bf16) and, on a CPU with oneDNN, whose FFN input maps run with their activation fused into the
    matmul (`llm_anatomy.fused`). The buffers (rotary frequencies) and the head stay in
    float32. The model passed in is never changed; a copy this function made for `precision` is
    returned as is (so `predict_logits` keeps what its caller prepared, `fuse=False` included).

    Stored bf16 weights replace autocast, which re-casts every weight on every call; the fused input map
    drops the separate bias and activation passes over the [tokens, FFN] tensor. Measured on MiniLM and
    SmolLM2, each is faster at the same accuracy (docs/SPEED.md). Float16 (the CUDA fallback where bf16
    is missing) keeps autocast, which keeps LayerNorm and softmax in float32. `fuse=False` keeps the
    eager FFN modules and `last_token=False` runs the last block for every token
    (`benchmarks/loop_parts.py --without fused|readout` times each against the whole loop)."""
    if getattr(model, "_inference_form", None) == precision:
        return model
    device = model_device(model)
    dtype = amp_dtype(precision, device)
    cast = dtype == torch.bfloat16 and backbone_dtype(model) != dtype
    pin = not (fuse and last_token)  # a copy even with nothing to change, marked so later calls keep it so
    fuse = fuse and device.type == "cpu" and dtype in (None, torch.bfloat16) and fused.available() and not fused.is_fused(model)
    last = last_token and readout.supported(model.adapter) and not readout.is_installed(model)
    if not (cast or fuse or pin or last):
        return model
    runner = copy.deepcopy(model)
    if cast:
        for param in runner.backbone.parameters():
            param.data = param.data.to(dtype)
    if fuse:
        fused.fuse_ffn_inputs(runner)
    if last:
        readout.install(runner)
    runner._inference_form = precision
    return runner


def loop_parts(runner: SentimentClassifier) -> dict:
    """Which of the loop's speed-ups a runner has, for the record of every time measured with it (times
    from runners with different parts are not comparable)."""
    return dict(fused_ffn_inputs=fused.is_fused(runner), read_token_only=readout.is_installed(runner),
                weights=str(backbone_dtype(runner)).removeprefix("torch."))


def backbone_dtype(model: SentimentClassifier) -> torch.dtype:
    return next(model.backbone.parameters()).dtype


@torch.inference_mode()
def predict_logits(model: SentimentClassifier, encoded: Sequence[Sequence[int]], pad_id: int,
                   batch_size: int = 32, precision: str = "fp32", padding_side: str = "right",
                   desc: str | None = None) -> np.ndarray:
    """Logits in the order of `encoded`, from length-sorted, dynamically padded batches, computed on
    the device the model's weights are on, as `inference_model` runs it at `precision`."""
    model = inference_model(model, precision)
    model.eval()
    device = model_device(model)
    logits = np.empty(len(encoded), dtype=np.float32)
    bar = progress_batches(encoded, batch_size, pad_id, padding_side, desc, mininterval=5, device=device)
    with autocast("fp32" if backbone_dtype(model) != torch.float32 else precision, device):  # stored bf16: no autocast
        for idx, ids, mask in bar:
            logits[idx] = model(ids, mask).float().cpu().numpy()
    return logits


def evaluate_folder(folder, split: pd.DataFrame, out, limit: int | None, batch_size: int, threads: int | None,
                    device: str) -> float:
    """A classifier folder + a split -> eval parquet with per-review logits; returns the accuracy."""
    ck = open_checkpoint(folder, device, threads)
    reviews = first_reviews(split, limit, f"{out}")
    start = time.perf_counter()
    encoded = ck.encode(reviews["text"], what=f"{out} reviews")
    tokenised = time.perf_counter()
    runner = inference_model(ck.model, ck.precision)
    ready = time.perf_counter()
    logits = predict_logits(runner, encoded, ck.pad_id, batch_size, ck.precision, ck.padding_side,
                            desc=f"evaluate {Path(folder).name}")
    done = time.perf_counter()
    df = logits_frame(logits, reviews["label"])
    device_ = model_device(ck.model)
    info = dict(model=str(folder), reviews=len(df), device=describe(device_), machine=machine_info(device_),
                precision=ck.precision, loop=loop_parts(runner), batch_size=batch_size,
                truncation=encoded.truncation(), seconds=done - start, tokenise_seconds=tokenised - start,
                inference_seconds=done - ready)
    if device_.type == "cpu":
        info.update(pass_speed(ck.model.adapter, [len(e) for e in encoded], batch_size, ck.precision, done - ready))
    write_logits(df, out, info)
    acc = accuracy_of(df)
    log.info("%s on %d reviews: accuracy %.4f (%.1f s)", folder, len(df), acc, info["seconds"])
    return acc


def evaluate_dense(finetuned, split, eval, limit: int | None, batch_size: int, threads: int | None,
                   device: str) -> None:
    """Rule evaluate_dense: per-review logits of the fine-tuned classifier on the first `limit` reviews of a split."""
    evaluate_folder(finetuned, read_split(split), eval, limit, batch_size, threads, device)
