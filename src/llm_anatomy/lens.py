"""The classifier lens: the fine-tuned head read off every layer's target token.

Layer l < L goes through the backbone's final norm first (identity for BERT), because the head
was trained on normed states; layer L is already the normed state the head reads, so the lens at
L is the model's own logit.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from .models import SentimentClassifier


@torch.inference_mode()
def normed_states(model: SentimentClassifier, hidden: np.ndarray) -> np.ndarray:
    """[N, L+1, H] with the backbone's final norm applied to layers 0..L-1 (layer L already has it).

    Identity for encoders. The space the head reads, so layers compare without the norm's distortion."""
    if not model.adapter.is_decoder:
        return np.asarray(hidden, dtype=np.float32)
    h = torch.from_numpy(np.ascontiguousarray(hidden, dtype=np.float32))
    out = h.clone()
    out[:, :-1] = model.adapter.final_norm(h[:, :-1])
    return out.float().numpy()


@torch.inference_mode()
def lens_logits(model: SentimentClassifier, hidden: np.ndarray) -> np.ndarray:
    """Logits [N, L+1] from target states [N, L+1, H] (hidden_states.parquet layout)."""
    model.eval()
    h = torch.from_numpy(normed_states(model, hidden))
    return model.head_logits(h).float().numpy()


def lens_table(input_set: str, logits: np.ndarray, labels: Sequence[int]) -> pd.DataFrame:
    """Per layer: accuracy against the labels, the share predicted positive (0 or 1: the head reads one constant
    class off that layer) and agreement with the model's final prediction."""
    labels = np.asarray(labels)
    pred = logits > 0
    return pd.DataFrame({"input_set": input_set, "layer": np.arange(logits.shape[1]),
                         "accuracy": (pred == (labels[:, None] == 1)).mean(0),
                         "positive_share": pred.mean(0),
                         "agreement_with_final": (pred == pred[:, -1:]).mean(0),
                         "mean_logit": logits.mean(0)})


def head_direction(model: SentimentClassifier) -> np.ndarray:
    """The head's weight as seen from the residual stream before the final norm ([H]).

    Decoders: the norm's gain folded in (and, for LayerNorm, mean-centred); the per-input 1/rms
    scale is left out, so contributions are exact up to a positive factor per input."""
    w = model.head.weight.detach()[0].double()
    if model.adapter.is_decoder:
        norm = getattr(model.backbone, "norm", None) or getattr(model.backbone, "ln_f", None)
        if norm is not None and getattr(norm, "weight", None) is not None:
            w = w * norm.weight.detach().double()
        if isinstance(norm, nn.LayerNorm):
            w = w - w.mean()
    return w.numpy()
