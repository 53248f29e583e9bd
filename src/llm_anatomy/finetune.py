"""Fine-tune a backbone + the paper's head as a binary sentiment classifier, resumably.

The run is deterministic in its parameters: batch order comes from `grouped_batches`
seeded per epoch, and every `checkpoint_every` steps the trainable weights, optimizer,
schedule, step counter and RNG state are written atomically. A rerun continues from the last
checkpoint only when everything that determines training is unchanged (`fingerprint`: the model
source, the tokenizer, every fine-tune parameter, the seed, the content of the train and validation
splits); otherwise, or when the checkpoint cannot be read, it starts from step 0 and says why.
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd
import torch
from torch import nn
from transformers import get_linear_schedule_with_warmup

from .batching import encode, grouped_batches, iter_padded
from .device import autocast, describe, grad_scaler, resolve_device
from .inference import predict_logits
from .logits import accuracy
from .stats import accuracy_interval, correct
from .data import read_split
from .io import atomic_dir, atomic_path, json_digest, read_json, write_json
from .models import SentimentClassifier, load_backbone, load_tokenizer, save_classifier, set_threads
from .progress import progress

log = logging.getLogger(__name__)


@dataclass
class FinetuneParams:
    """A model's `finetune:` settings (params.yaml; every default is the schema's, `$defs.finetune`)."""

    epochs: int
    batch_size: int
    lr: float
    head_lr: float
    weight_decay: float
    warmup_ratio: float
    max_length: int
    truncation_side: str
    padding_side: str
    dropout: float
    freeze_embeddings: bool
    freeze_bottom_layers: int
    precision: str
    eval_batch_size: int
    checkpoint_every: int
    grad_clip: float
    seed: int
    threads: int | None = None
    extra: dict = field(default_factory=dict)  # keys the training loop does not read (train_limit)

    @classmethod
    def from_dict(cls, d: dict) -> "FinetuneParams":
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__ and k != "extra"}
        return cls(**known, extra={k: v for k, v in d.items() if k not in cls.__dataclass_fields__})


def freeze(model: SentimentClassifier, p: FinetuneParams) -> None:
    """Freeze the embeddings and/or the bottom layers (cheaper backward, steadier small-data fits)."""
    adapter = model.adapter
    if p.freeze_bottom_layers > adapter.num_layers:
        raise ValueError(f"freeze_bottom_layers={p.freeze_bottom_layers} exceeds the model's {adapter.num_layers} layers")
    if p.freeze_embeddings:
        model.backbone.get_input_embeddings().requires_grad_(False)
        for name, module in model.backbone.named_children():
            if "embed" in name or name in {"wpe", "wte"}:  # "embed" covers embeddings, embed_tokens
                module.requires_grad_(False)
    for layer in adapter.layers()[: p.freeze_bottom_layers]:
        layer.requires_grad_(False)


def param_groups(model: SentimentClassifier, p: FinetuneParams) -> list[dict]:
    trainable = [q for q in model.backbone.parameters() if q.requires_grad]
    return [{"params": [q for q in trainable if q.ndim >= 2], "lr": p.lr, "weight_decay": p.weight_decay},
            {"params": [q for q in trainable if q.ndim < 2], "lr": p.lr, "weight_decay": 0.0},
            {"params": list(model.head.parameters()), "lr": p.head_lr, "weight_decay": 0.0}]


def frame_digest(df: pd.DataFrame) -> str:
    """Content hash of a split's reviews and labels, in order (the order is the batch order's input)."""
    h = hashlib.sha256()
    for text, label in zip(df["text"], df["label"]):
        h.update(str(text).encode())
        h.update(f"\x00{int(label)}\x01".encode())
    return h.hexdigest()[:16]


def fingerprint(source: str, tokenizer, p: FinetuneParams, train: pd.DataFrame, val: pd.DataFrame) -> dict[str, str]:
    """Everything that determines a training run, part by part, so a mismatch can say what changed; of the
    tokenizer, what turns a review into ids: its class, its vocabulary and special tokens."""
    ids = [type(tokenizer).__name__, sorted(tokenizer.get_vocab().items()), tokenizer.all_special_tokens]
    return {"model source": source, "tokenizer": json_digest(ids), "seed": str(p.seed),
            # threads, like the device, may differ between the killed run and its resumption
            "fine-tune params": json_digest({k: v for k, v in asdict(p).items() if k not in ("seed", "threads")}),
            "train split": frame_digest(train), "validation split": frame_digest(val)}


def load_checkpoint(path: Path, fp: dict[str, str]) -> dict | None:
    """The checkpoint's state when it was written for this exact run; else None, with a warning that says why.

    An unreadable file (a kill mid-copy, a full disk) is moved aside, not deleted, so it can be inspected."""
    if not path.exists():
        return None
    try:
        state = torch.load(path, weights_only=False, map_location="cpu")
        written = state["fingerprint"]
    except Exception as err:  # noqa: BLE001 (any unreadable file: truncated zip, pickle error, missing key)
        aside = path.with_name(f"{path.name}.unreadable-{time.strftime('%Y%m%dT%H%M%S')}")
        os.replace(path, aside)
        log.warning("checkpoint %s cannot be read (%s: %s); moved it to %s and fine-tuning starts from step 0",
                    path, type(err).__name__, str(err)[:200], aside)
        return None
    if not isinstance(written, dict):
        log.warning("ignoring checkpoint %s: it predates per-part fingerprints; fine-tuning starts from step 0",
                    path)
        return None
    changed = [part for part in fp if written.get(part) != fp[part]]
    if changed:
        log.warning("ignoring checkpoint %s: %s changed since it was written; fine-tuning starts from step 0",
                    path, ", ".join(changed))
        return None
    return state


def save_checkpoint(path: Path, state: dict) -> None:
    with atomic_path(path) as tmp:  # a kill mid-write leaves the previous checkpoint intact
        torch.save(state, tmp)


def finetune(train, val, finetuned, metrics, spec: dict, model_name: str, threads: int | None, device: str,
             checkpoint) -> None:
    """Rule finetune: the model `spec` (source, tokenizer, num_layers, finetune settings) fine-tuned on the
    first `train_limit` reviews of the train split, validated on the val split, saved to the `finetuned` folder
    with its `metrics`; the resumable `checkpoint` is removed once the folder supersedes it."""
    settings = spec["finetune"]
    train_df = read_split(train).iloc[: settings.get("train_limit")]
    result = train_classifier(spec["source"], spec["tokenizer"], train_df, read_split(val), finetuned, metrics,
                              checkpoint, FinetuneParams.from_dict(dict(settings, threads=threads)),
                              model_name=model_name, expect_layers=spec.get("num_layers"), device=device)
    log.info("%s: validation accuracy %.4f [%.4f, %.4f], %.0f s training", model_name, result["val_accuracy"],
             result["val_accuracy_lo"], result["val_accuracy_hi"], result["train_seconds"])
    shutil.rmtree(Path(checkpoint).parent, ignore_errors=True)  # the checkpoint's own folder


def finetune_summary(metrics: list, summary, models: list) -> None:
    """Rule finetune_summary: every model's fine-tune metrics in one file keyed by model (DVC's metrics)."""
    write_json(summary, {model: read_json(path) for model, path in zip(models, metrics)})


def train_classifier(source: str, tokenizer_source: str, train: pd.DataFrame, val: pd.DataFrame,
                     out_dir: str | Path, metrics_path: str | Path, checkpoint_path: str | Path,
                     p: FinetuneParams, model_name: str = "model", expect_layers: int | None = None,
                     device: str = "auto") -> dict:
    """Train, evaluate on the validation split, save the classifier folder and the metrics JSON.

    The test split is not an input: it is read only by the final evaluation (rule evaluate_dense),
    so no choice made while fine-tuning can have looked at it.

    `device` (auto, cpu, cuda, cuda:<i>) and the thread count are not part of the checkpoint
    fingerprint: a run interrupted on one device resumes on another."""
    set_threads(p.threads)
    device = resolve_device(device)
    checkpoint_path = Path(checkpoint_path)
    tokenizer = load_tokenizer(tokenizer_source)
    backbone = load_backbone(source, tokenizer, seed=p.seed)
    torch.manual_seed(p.seed)
    model = SentimentClassifier(backbone, dropout=p.dropout)
    if expect_layers is not None and model.adapter.num_layers != expect_layers:
        raise ValueError(f"{model_name}: params say num_layers={expect_layers} but {source} has "
                         f"{model.adapter.num_layers} layers; fix num_layers in params.yaml")
    freeze(model, p)
    model.to(device)

    enc = {name: encode(tokenizer, df["text"], p.max_length, p.truncation_side, what=f"{model_name} {name} reviews")
           for name, df in (("train", train), ("val", val))}
    labels = torch.tensor(train["label"].to_numpy(), dtype=torch.float32, device=device)
    lengths = [len(s) for s in enc["train"]]
    steps_per_epoch = -(-len(lengths) // p.batch_size)
    total_steps = steps_per_epoch * p.epochs

    optimizer = torch.optim.AdamW(param_groups(model, p))
    scheduler = get_linear_schedule_with_warmup(optimizer, int(p.warmup_ratio * total_steps), total_steps)
    scaler = grad_scaler(p.precision, device)  # active only for fp16 (a CUDA device without bf16)
    loss_fn = nn.BCEWithLogitsLoss()
    fp = fingerprint(source, tokenizer, p, train, val)

    step, history, train_seconds, resumed_from, final_val = 0, [], 0.0, None, None
    state = load_checkpoint(checkpoint_path, fp)
    if state is not None:
        model.load_state_dict(state["model"], strict=False)
        optimizer.load_state_dict(state["optimizer"])  # moves the moments to the parameters' device
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state.get("scaler") or {})
        torch.set_rng_state(state["rng"])
        if device.type == "cuda" and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(state["cuda_rng"], device)
        step, history, train_seconds = state["step"], state["history"], state["train_seconds"]
        resumed_from = step
        log.info("resumed %s from step %d of %d (%s)", model_name, step, total_steps, checkpoint_path)

    trainable = {n for n, prm in model.named_parameters() if prm.requires_grad}  # all a checkpoint saves of the model
    n_trainable = sum(prm.numel() for prm in model.parameters() if prm.requires_grad)
    log.info("%s: %d train reviews, %d steps, %.1fM trainable parameters, %s on %s",
             model_name, len(lengths), total_steps, n_trainable / 1e6, p.precision, describe(device))
    bar = progress(total=total_steps, initial=step, desc=f"fine-tune {model_name}")
    while step < total_steps:
        epoch, offset = divmod(step, steps_per_epoch)
        batches = grouped_batches(lengths, p.batch_size, seed=p.seed * 1000 + epoch)
        model.train()
        started = time.perf_counter()
        for idx, ids, mask in iter_padded(enc["train"], batches[offset:], tokenizer.pad_token_id, p.padding_side,
                                          device):
            with autocast(p.precision, device):
                logits = model(ids, mask)
            loss = loss_fn(logits.float(), labels[torch.as_tensor(idx, device=device)])
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_([q for q in model.parameters() if q.requires_grad], p.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
            if step % p.checkpoint_every == 0 or step % steps_per_epoch == 0:
                train_seconds += time.perf_counter() - started
                started = time.perf_counter()
                # A log line per checkpoint, whether or not a terminal shows the bar.
                log.info("step %d/%d, loss %.4f, %.0f s of training so far", step, total_steps, loss.item(),
                         train_seconds)
                if step % steps_per_epoch == 0:
                    val_logits = predict_logits(model, enc["val"], tokenizer.pad_token_id, p.eval_batch_size,
                                                p.precision, p.padding_side)
                    history.append({"epoch": epoch + 1, "step": step,
                                    "val_accuracy": accuracy(val_logits, val["label"])})
                    final_val = val_logits if step == total_steps else None
                    log.info("epoch %d: validation accuracy %.4f", epoch + 1, history[-1]["val_accuracy"])
                    model.train()
                save_checkpoint(checkpoint_path, {
                    "fingerprint": fp, "model": {k: v for k, v in model.state_dict().items() if k in trainable},
                    "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict(), "rng": torch.get_rng_state(),
                    "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None, "step": step,
                    "history": history, "train_seconds": train_seconds})
    bar.close()

    model.eval()
    t0 = time.perf_counter()
    if final_val is None:  # resumed from the last step's checkpoint: the loop did not validate
        final_val = predict_logits(model, enc["val"], tokenizer.pad_token_id, p.eval_batch_size, p.precision,
                                   p.padding_side, desc=f"validate {model_name}")
    val_seconds = time.perf_counter() - t0
    val_correct = correct(final_val, val["label"])
    metrics = {"model": model_name, "source": source, "arch": model.adapter.arch,
               **accuracy_interval(val_correct).to_dict("val_accuracy"), "n_train": len(train), "n_val": len(val),
               "epochs": p.epochs, "steps": total_steps, "train_seconds": round(train_seconds, 1),
               "train_examples_per_second": round(len(train) * p.epochs / max(train_seconds, 1e-9), 2),
               "val_seconds": round(val_seconds, 2), "precision": p.precision, "device": describe(device),
               "max_length": p.max_length, "truncation": {name: e.truncation() for name, e in enc.items()},
               "trainable_parameters": n_trainable, "resumed_from_step": resumed_from, "history": history}
    meta = {"model": model_name, "source": source, "max_length": p.max_length,
            "truncation_side": p.truncation_side, "padding_side": p.padding_side, "precision": p.precision}
    with atomic_dir(out_dir) as tmp:
        save_classifier(model, tokenizer, tmp, meta)
    write_json(metrics_path, metrics)
    return metrics
