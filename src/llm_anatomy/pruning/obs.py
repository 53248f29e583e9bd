"""Optimal-brain-surgeon order of a layer's FFN neurons: which neuron the kept ones can best stand in for.

Removing neuron j from an FFN output y = a V + b and refitting the kept neurons' output weights by least
squares (the `refit` compensation) costs, on the calibration tokens,

  delta_j = ||W_j||^2 / [H^-1]_jj,   H = Cov(a) + lambda I

(the optimal-brain-surgeon saliency of a whole row, Hassibi and Stork 1993; structured as in ZipLM,
Kurtic et al. 2023, and SlimGPT). W starts as the dense value vectors V, the exact fit, and H is the
covariance of the activations, since the refit leaves the bias free. Greedily removing the neuron of
least delta_j and updating W and H^-1 in closed form,

  W  <- W  - H^-1[:, j] W_j / [H^-1]_jj,      H^-1 <- H^-1 - H^-1[:, j] H^-1[j, :] / [H^-1]_jj,

orders every neuron of the layer. The criterion `obs` ranks neurons by that removal order, so the first
k removed are the k that the refit can best do without. It reads the dense model's activations on the
calibration reviews (`ffn_moments`), one pass.

obs_scores.parquet, one row per (layer, neuron): layer int16, neuron int32, obs_rank float64 (position in
the removal order, 0 first), obs_delta float64 (delta_j at its removal), tokens int64.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from ..io import write_parquet
from ..data import read_split
from ..models import SentimentClassifier, open_checkpoint
from .calibration import calibration_reviews, real_token_passes


@torch.no_grad()
def ffn_moments(model: SentimentClassifier, encoded: Sequence[Sequence[int]], pad_id: int, padding_side: str = "right",
                batch_size: int = 16) -> tuple[list[np.ndarray], list[np.ndarray], int]:
    """Per layer, (mean activation [F], covariance of the activations [F, F]) over every real token, float64."""
    model.float().eval()
    adapter = model.adapter
    widths = adapter.ffn_widths()
    s1 = [torch.zeros(w, dtype=torch.float64) for w in widths]
    s2 = [torch.zeros(w, w, dtype=torch.float64) for w in widths]
    state: dict = {}

    def grab(layer):
        def hook(_module, args):
            x = args[0][state["mask"]].double().cpu()
            s1[layer] += x.sum(0)
            s2[layer] += x.T @ x
        return hook

    with adapter.activation_hooks(grab):
        n = real_token_passes(model, encoded, pad_id, padding_side, batch_size, state, "moments")
    means = [(s / n).numpy() for s in s1]
    covs = [(s / n).numpy() - np.outer(m, m) for s, m in zip(s2, means)]
    return means, covs, n


def obs_order(values: np.ndarray, cov: np.ndarray, ridge: float) -> tuple[np.ndarray, np.ndarray]:
    """(rank [F], delta [F]): each neuron's position in the greedy removal order and its saliency when removed.
    `values` [F, H] are the dense value vectors, `cov` [F, F] the activations' covariance; the relative ridge
    adds ridge x mean(diag cov) to the diagonal (as the refit does). float64; the removed rows and columns
    are dropped every few steps, so the whole order costs about F^3 / 3 multiply-adds rather than F^3."""
    w = torch.tensor(np.asarray(values), dtype=torch.float64)
    f = len(w)
    h = torch.tensor(np.asarray(cov), dtype=torch.float64)
    h.diagonal().add_(ridge * max(float(h.diagonal().sum()) / f, 1e-12) + 1e-12)
    hinv = torch.linalg.inv(h)
    ids = torch.arange(f)  # original index of each row still held
    alive = torch.ones(f, dtype=torch.bool)
    rank, delta = np.empty(f), np.empty(f)
    for step in range(f):
        d = (w * w).sum(1) / hinv.diagonal().clamp_min(1e-300)
        d[~alive] = float("inf")
        j = int(torch.argmin(d))
        rank[ids[j]], delta[ids[j]] = step, float(d[j])
        col = hinv[:, j].clone()
        w.sub_(torch.outer(col / col[j], w[j]))
        hinv.sub_(torch.outer(col, col / col[j]))
        alive[j] = False
        if step % 64 == 63 and step < f - 1:  # compact: drop the removed rows and columns
            keep = alive.nonzero().squeeze(1)
            w, hinv, ids, alive = w[keep], hinv[keep][:, keep], ids[keep], alive[keep]
    return rank, delta


def obs_table(model: SentimentClassifier, encoded, pad_id: int, padding_side: str, batch_size: int,
              ridge: float) -> pd.DataFrame:
    """Every layer's removal order (`obs_order`) from the activations' covariance on `encoded`: the
    obs_scores table of the module doc."""
    _means, covs, n = ffn_moments(model, encoded, pad_id, padding_side, batch_size)
    frames = []
    for layer, cov in enumerate(covs):
        rank, delta = obs_order(model.adapter.value_vectors(layer).double().cpu().numpy(), cov, ridge)
        frames.append(pd.DataFrame({"layer": np.int16(layer), "neuron": np.arange(len(rank), dtype=np.int32),
                                    "obs_rank": rank, "obs_delta": delta, "tokens": np.int64(n)}))
    return pd.concat(frames, ignore_index=True)


def obs_scores(finetuned, train, obs_scores, reviews: int, ridge: float, batch_size: int, threads: int | None,
               device: str) -> dict:
    """Rule obs_scores: the `obs_scores` file from the first `reviews` train reviews (the calibration reviews of
    every criterion)."""
    ck = open_checkpoint(finetuned, device, threads)
    encoded, _labels = calibration_reviews(read_split(train), ck, reviews)
    scores = obs_table(ck.model, encoded, ck.pad_id, ck.padding_side, batch_size, ridge)
    write_parquet(scores, obs_scores)
    return dict(reviews=len(encoded), tokens=int(scores["tokens"].iloc[0]), neurons=len(scores))
