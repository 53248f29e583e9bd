"""Per-neuron activation statistics over calibration reviews, for activation-aware pruning.

ffn_stats.parquet, one row per (block, neuron):
  layer int16, neuron int32,
  mean           float64  mean activation over every real (non-pad) token of the calibration reviews
  var            float64  its variance (population) over the same tokens
  mean_abs       float64  mean |activation| over the same tokens
  value_norm_sq  float64  ||v_lj||^2, the squared norm of the neuron's value vector
  in_norm_sq     float64  squared norm of the neuron's input weights (Llama: gate and up rows summed)
  tokens         int64    tokens the statistics are taken over

"Activation" is the input of the FFN's output projection, as in ffn_activations.parquet
(gelu(x W_in) for BERT/GPT-2, silu(gate) * up for Llama), but over every token rather than
the target token only: every token's FFN output feeds the later layers.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from ..batching import progress_batches
from ..data import read_split
from ..device import autocast, model_device
from ..io import write_parquet
from ..models import Checkpoint, SentimentClassifier, open_checkpoint


def real_token_passes(model: SentimentClassifier, encoded: Sequence[Sequence[int]], pad_id: int, padding_side: str,
                      batch_size: int, state: dict, desc: str | None = None) -> int:
    """Run `model` over `encoded` in padded batches, with `state["mask"]` each batch's real tokens (bool) for the
    caller's hooks to read; returns how many real tokens there were."""
    tokens = 0
    for _idx, ids, mask in progress_batches(encoded, batch_size, pad_id, padding_side, desc, device=model_device(model)):
        state["mask"] = mask.bool()
        tokens += int(mask.sum())
        model(ids, mask)
    return tokens


@torch.inference_mode()
def ffn_activation_stats(model: SentimentClassifier, encoded: Sequence[Sequence[int]], pad_id: int,
                         padding_side: str, batch_size: int, precision: str = "fp32",
                         desc: str | None = None) -> pd.DataFrame:
    """Mean and variance of every FFN neuron's activation over the real tokens of `encoded`."""
    if not len(encoded):
        raise ValueError("no calibration reviews given; set calibration_reviews >= 1")
    model.eval()
    adapter = model.adapter
    L = adapter.num_layers
    # Shifted sums (shift = the first batch's mean) keep the float64 variance exact enough
    # when a neuron's mean is large against its spread.
    shift: list[torch.Tensor | None] = [None] * L
    device = model_device(model)
    s1 = [torch.zeros(adapter.ffn_width(l), dtype=torch.float64, device=device) for l in range(L)]
    s2 = [torch.zeros_like(s) for s in s1]
    sabs = [torch.zeros_like(s) for s in s1]
    state: dict = {}

    def grab(layer):
        def hook(_module, args):
            x = args[0].double()[state["mask"]]  # [real tokens, neurons]
            if shift[layer] is None:
                shift[layer] = x.mean(0)
            d = x - shift[layer]
            s1[layer] += d.sum(0)
            s2[layer] += (d * d).sum(0)
            sabs[layer] += x.abs().sum(0)
        return hook

    with adapter.activation_hooks(grab), autocast(precision, device):
        n = real_token_passes(model, encoded, pad_id, padding_side, batch_size, state, desc)
    frames = []
    for l in range(L):
        m1 = s1[l].cpu() / n
        mean = shift[l].cpu() + m1
        var = (s2[l].cpu() / n - m1 * m1).clamp(min=0.0)
        frames.append(pd.DataFrame({"layer": np.int16(l), "neuron": np.arange(len(mean), dtype=np.int32),
                                    "mean": mean.numpy(), "var": var.numpy(), "mean_abs": (sabs[l].cpu() / n).numpy(),
                                    "value_norm_sq": (adapter.value_vectors(l).double().cpu() ** 2).sum(1).numpy(),
                                    "in_norm_sq": adapter.input_norm_sq(l).cpu().numpy(), "tokens": np.int64(n)}))
    return pd.concat(frames, ignore_index=True)


def calibration_reviews(train: pd.DataFrame, ck: Checkpoint, reviews: int) -> tuple[list, np.ndarray]:
    """(token ids, labels) of the first `reviews` reviews of the train split, tokenised as the checkpoint was
    fine-tuned: the calibration reviews every statistic, gradient and fitted compensation is taken on."""
    if reviews > len(train):
        raise ValueError(f"calibration_reviews = {reviews} exceeds the {len(train)} reviews of the train split; "
                         "lower it or enlarge split.train")
    head = train.iloc[:reviews]
    return ck.encode(head["text"].tolist()), head["label"].to_numpy()


def ffn_stats(finetuned, train, ffn_stats, reviews: int, batch_size: int, threads: int | None, device: str) -> dict:
    """Rule ffn_stats: the `ffn_stats` file from the first `reviews` reviews of the train split, tokenised as in
    training, at the checkpoint's precision."""
    ck = open_checkpoint(finetuned, device, threads)
    encoded, _labels = calibration_reviews(read_split(train), ck, reviews)
    stats = ffn_activation_stats(ck.model, encoded, ck.pad_id, ck.padding_side, batch_size, ck.precision,
                                 desc="calibration")
    write_parquet(stats, ffn_stats)
    return dict(reviews=len(encoded), tokens=int(stats["tokens"].iloc[0]), neurons=len(stats))
