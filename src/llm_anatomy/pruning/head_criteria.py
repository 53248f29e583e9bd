"""Per-head importance criteria for pruning attention heads: one registry, as `criteria` is for FFN neurons.

A criterion turns what one pass over labelled calibration reviews measured about each query head
(`attribution.review_effects`) into one importance per (layer, head); lower is pruned first.
head_stats.parquet (`layout.ModelFiles.head_stats`), one row per (layer, head), from the first calibration
reviews of the train split (the reviews ffn_stats and mask_gradients measure):

  layer int16, head int16
  norm           mean over real tokens of ||c||, c = o W_o[h]: the head's output as written into the
                 residual stream (o its attention output, W_o[h] its rows of the output projection)
  fluctuation    mean ||c - mean c||^2 over the same tokens: what folding the head's mean output into
                 the bias cannot restore (FLAP's fluctuation, for a head's whole output)
  grad_sum       sum_i g_ih, g_ih = dl_i/dm_h the loss gradient of a mask on the head, per review i
  grad_sq        sum_i g_ih^2
  attribution    mean_i A_ih (signed): the first-order margin change of mean-ablating the head (its output
                 pinned to its calibration mean, what the bias fold leaves)
  loss_estimate  mean_i [softplus(-(m_i + A_ih)) - softplus(-m_i)]: that margin change put through the exact
                 loss, the estimated loss increase of removing the head alone with the bias fold
  reviews int64, tokens int64

`criterion_agreement` compares criteria with exact effects (`sensitivity.head_sensitivity`) as the anatomy's
neuron check does (`ablation.score_agreement`).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..ablation import effect_summary, rank_agreement
from ..scores import per_layer
from .attribution import ReviewEffects


@dataclass(frozen=True)
class HeadCriterion:
    name: str
    compute: Callable[[pd.DataFrame], np.ndarray]  # one importance per row of head_stats
    doc: str


HEAD_CRITERIA: dict[str, HeadCriterion] = {}


def _criterion(name: str):
    def register(fn):
        HEAD_CRITERIA[name] = HeadCriterion(name, fn, " ".join((fn.__doc__ or "").split()))
        return fn
    return register


@_criterion("norm")
def norm(df):
    """Mean ||o W_o[h]|| over calibration tokens: the size of what the head writes (output-norm pruning)."""
    return df["norm"].to_numpy()


@_criterion("fluctuation")
def fluctuation(df):
    """Mean ||o W_o[h] - its mean||^2: FLAP's fluctuation for a head, what the bias fold cannot restore."""
    return df["fluctuation"].to_numpy()


@_criterion("fisher")
def fisher(df):
    """sum_i (dl_i/dm_h)^2 over calibration reviews: the empirical Fisher information of a mask on the head,
    Kwon et al.'s (2022) importance (per review, as they define it)."""
    return df["grad_sq"].to_numpy()


@_criterion("taylor")
def taylor(df):
    """|sum_i dl_i/dm_h| / reviews: the first-order loss change of zeroing the head."""
    return np.abs(df["grad_sum"].to_numpy()) / df["reviews"].to_numpy()


@_criterion("attribution")
def attribution(df):
    """|mean_i A_ih|: the anatomy's attribution patching (activation x gradient) of mean-ablating the head, the
    first-order change of the mean margin."""
    return np.abs(df["attribution"].to_numpy())


@_criterion("loss-estimate")
def loss_estimate(df):
    """mean_i softplus(-(m_i + A_ih)) - softplus(-m_i): the attribution per review put through the exact loss,
    the estimated loss increase of removing the head with the bias fold."""
    return df["loss_estimate"].to_numpy()


def head_stats_frame(effects: ReviewEffects) -> pd.DataFrame:
    """head_stats.parquet's rows from `attribution.review_effects` on the calibration reviews (their own means
    are the ones mean-ablation pins the heads to)."""
    attr = effects.head_attribution(effects.head_means())
    scale = effects.loss_gradient_scale()[:, None]
    rows = []
    for layer, (s, a) in enumerate(zip(effects.head_s, attr)):
        grads = scale * s  # [N, heads]: dl_i/dm_h
        rows.append(pd.DataFrame({
            "layer": np.int16(layer), "head": np.arange(s.shape[1], dtype=np.int16),
            "norm": effects.head_norm_sum[layer] / effects.tokens,
            # E||c||^2 - ||E c||^2 can round below 0 for a head that writes a constant
            "fluctuation": np.maximum(effects.head_sq_sum[layer] / effects.tokens - effects.head_mean_out_sq[layer], 0.0),
            "grad_sum": grads.sum(0), "grad_sq": (grads * grads).sum(0), "attribution": a.mean(0),
            "loss_estimate": effect_summary(a.T, effects.margins)["exact_loss_effect"],
            "reviews": np.int64(effects.reviews), "tokens": np.int64(effects.tokens)}))
    return pd.concat(rows, ignore_index=True)


def head_importance(name: str, stats: pd.DataFrame, where: str = "head_stats") -> list[np.ndarray]:
    """Per layer, every query head's importance by the named criterion (lower = pruned first); `where` names
    the table in errors."""
    if name not in HEAD_CRITERIA:
        raise ValueError(f"head criterion {name!r} is not one of {sorted(HEAD_CRITERIA)}")
    # per_layer checks every layer holds heads 0..H-1, under its (layer, neuron) index names
    values = pd.Series(HEAD_CRITERIA[name].compute(stats), index=pd.MultiIndex.from_frame(
        stats[["layer", "head"]].astype("int64"), names=["layer", "neuron"]))
    return per_layer(values.astype(np.float64), where)


def criterion_agreement(table: pd.DataFrame, criteria: Sequence[str], effects: Sequence[str],
                        seed: int = 0) -> pd.DataFrame:
    """Spearman's rho (95% bootstrap interval over heads) of each importance column `criteria` of `table` (one
    row per (layer, head)) with each exact-effect column `effects`: pooled over layers, and within layers
    (both ranked inside their layer first: the choice a per-layer count makes), as the neuron check does
    (`ablation.rank_agreement`, as `ablation.score_agreement`)."""
    return pd.DataFrame([dict(criterion=name, effect=effect,
                              **rank_agreement(table[name], table[effect], table["layer"], seed), heads=len(table))
                         for effect in effects for name in criteria])
