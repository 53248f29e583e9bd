"""Gradients of the classification loss with respect to a per-neuron mask (Kwon et al., 2022, "A Fast
Post-Training Pruning Framework for Transformers"): every FFN neuron's activation is multiplied by a
mask m_lj = 1, and for each batch b of labelled calibration reviews

  g_bj = dL_b / dm_lj = sum over the batch's tokens of a_lj * dL_b / da_lj

where L_b is the batch's mean binary cross-entropy of the classifier. Removing the neuron moves m
from 1 to 0, so -g_bj is the first-order change of the loss. The criteria built on it
(`pruning.criteria`): empirical Fisher F_lj = sum_b g_bj^2 (Kwon et al.'s importance) and first-order
Taylor T_lj = |sum_b g_bj| / B.

mask_gradients.parquet, one row per (layer, neuron): layer int16, neuron int32, grad_sum float64
(sum_b g_bj), grad_sq float64 (sum_b g_bj^2), batches int64 (B), reviews int64.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..batching import iter_padded, sorted_batches
from ..device import model_device
from ..io import write_parquet
from ..data import read_split
from ..models import SentimentClassifier, open_checkpoint
from .calibration import calibration_reviews


def gradient_table(model: SentimentClassifier, encoded: Sequence[Sequence[int]], labels, pad_id: int,
                   padding_side: str, batch_size: int) -> pd.DataFrame:
    """Per-batch mask gradients of every FFN neuron, in float32 with dropout off (the model is left so)."""
    if not len(encoded):
        raise ValueError("no calibration reviews given; set calibration_reviews >= 1")
    model.float().eval()
    adapter = model.adapter
    device = model_device(model)
    widths = adapter.ffn_widths()
    masks = [torch.ones(w, device=device, requires_grad=True) for w in widths]
    gsum = [torch.zeros(w, dtype=torch.float64) for w in widths]
    gsq = [torch.zeros(w, dtype=torch.float64) for w in widths]
    targets = torch.as_tensor(np.asarray(labels, dtype=np.float32))
    loss_fn = nn.BCEWithLogitsLoss()

    def scale(layer):
        def hook(_module, args):
            return (args[0] * masks[layer],) + tuple(args[1:])
        return hook

    # Gradients with respect to the masks only: the weights are frozen so no weight gradient is built.
    frozen = [(q, q.requires_grad) for q in model.parameters()]
    for q, _ in frozen:
        q.requires_grad_(False)
    batches = sorted_batches([len(s) for s in encoded], batch_size)
    try:
        with torch.enable_grad(), adapter.activation_hooks(scale):
            for idx, ids, mask in iter_padded(encoded, batches, pad_id, padding_side, device):
                loss = loss_fn(model(ids, mask).float(), targets[idx].to(device))
                for l, g in enumerate(torch.autograd.grad(loss, masks)):
                    g = g.detach().double().cpu()
                    gsum[l] += g
                    gsq[l] += g * g
    finally:
        for q, flag in frozen:
            q.requires_grad_(flag)
    return pd.concat([pd.DataFrame({"layer": np.int16(l), "neuron": np.arange(w, dtype=np.int32),
                                    "grad_sum": gsum[l].numpy(), "grad_sq": gsq[l].numpy(),
                                    "batches": np.int64(len(batches)), "reviews": np.int64(len(encoded))})
                      for l, w in enumerate(widths)], ignore_index=True)


def mask_gradients(finetuned, train, mask_gradients, reviews: int, batch_size: int, threads: int | None,
                   device: str) -> dict:
    """Rule mask_gradients: the `mask_gradients` file from the first `reviews` labelled reviews of the train split
    (the reviews ffn_stats measures), tokenised as in training."""
    ck = open_checkpoint(finetuned, device, threads)
    encoded, labels = calibration_reviews(read_split(train), ck, reviews)
    grads = gradient_table(ck.model, encoded, labels, ck.pad_id, ck.padding_side, batch_size)
    write_parquet(grads, mask_gradients)
    return dict(reviews=len(encoded), batches=int(grads["batches"].iloc[0]), neurons=len(grads))
