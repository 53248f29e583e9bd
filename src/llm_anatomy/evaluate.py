"""Inference over a split: logits and accuracy."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .batching import autocast, progress_batches
from .models import SentimentClassifier


@torch.inference_mode()
def predict_logits(model: SentimentClassifier, encoded: Sequence[Sequence[int]], pad_id: int,
                   batch_size: int = 32, precision: str = "fp32", padding_side: str = "right",
                   desc: str | None = None) -> np.ndarray:
    """Logits in the order of `encoded`, from length-sorted, dynamically padded batches."""
    model.eval()
    logits = np.empty(len(encoded), dtype=np.float32)
    bar = progress_batches(encoded, batch_size, pad_id, padding_side, desc, mininterval=5)
    with autocast(precision):
        for idx, ids, mask in bar:
            logits[idx] = model(ids, mask).float().numpy()
    return logits


def accuracy(logits: np.ndarray, labels: Sequence[int]) -> float:
    return float(((logits > 0).astype(np.int64) == np.asarray(labels)).mean())
