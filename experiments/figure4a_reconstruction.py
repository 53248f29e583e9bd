"""How well the encoder rule's reconstruction is pinned down by the paper's Figure-4a log.

The log gives one threshold per layer; the rule's form is a guess. Each placement of the focusing
multiplier k implies its own c_l from the same thresholds:
  beta   t_l = alpha c_l + k_l beta l        (PAPER_NOTES; the project's rule)
  alpha  t_l = k_l alpha c_l + beta l
  both   t_l = k_l (alpha c_l + beta l)
  none   t_l = alpha c_l + beta l            (k ignored)
with the last layer t = alpha c_{L-1} (times k_{L-1} where k multiplies alpha). A c_l curve that
zig-zags with the focusing layers is evidence against its placement: c_l is a cosine with the
final target, which the paper's Figure 1 and every model here show rising smoothly with depth.

    python experiments/figure4a_reconstruction.py results/offline/minilm/layer_scores.parquet

prints the implied curves, their direction changes, and their agreement with a measured curve
resampled to 12 layers by relative depth.
"""
from __future__ import annotations

import sys
from collections.abc import Sequence

import numpy as np
from scipy import stats

# Figure 4a of the paper (BERT, alpha 0.01, beta 0.001, focusing 4, 6, 8, 10, 11), per PAPER_NOTES
PAPER_LOG = dict(thresholds=[0.0038626, 0.0048271, 0.0045707, 0.0072547, 0.0162324, 0.0093418, 0.0224969,
                             0.0117278, 0.0289785, 0.0148232, 0.0375011, 0.0090354],
                 alpha=0.01, beta=0.001, focusing=(4, 6, 8, 10, 11), k=3.0)
PLACEMENTS = ("beta", "alpha", "both", "none")


def implied_c(thresholds: Sequence[float], alpha: float, beta: float, focusing: Sequence[int], k: float,
              placement: str) -> np.ndarray:
    """c_0..c_{L-1} that make the encoder rule, with k placed as named, give `thresholds`."""
    t = np.asarray(thresholds, dtype=np.float64)
    L = len(t)
    layer = np.arange(L)
    kl = np.where(np.isin(layer, list(focusing)), k, 1.0)
    if placement == "beta":
        c = (t - kl * beta * layer) / alpha
        c[-1] = t[-1] / alpha
    elif placement == "alpha":
        c = (t - beta * layer) / (kl * alpha)
        c[-1] = t[-1] / (kl[-1] * alpha)
    elif placement == "both":
        c = (t / kl - beta * layer) / alpha
        c[-1] = t[-1] / (kl[-1] * alpha)
    elif placement == "none":
        c = (t - beta * layer) / alpha
        c[-1] = t[-1] / alpha
    else:
        raise ValueError(f"placement {placement!r} is not one of {PLACEMENTS}")
    return c


def direction_changes(c: Sequence[float]) -> int:
    """How often the curve turns (sign changes of its first difference)."""
    d = np.sign(np.diff(np.asarray(c, dtype=np.float64)))
    d = d[d != 0]
    return int((d[1:] != d[:-1]).sum())


def resample(c_measured: Sequence[float], layers: int = 12) -> np.ndarray:
    """A measured c_0..c_L (L+1 values, the last = 1) at relative depths l/layers, l = 0..layers-1."""
    c = np.asarray(c_measured, dtype=np.float64)[:-1]
    return np.interp(np.arange(layers) / layers, np.arange(len(c)) / len(c), c)


def report(c_measured: Sequence[float] | None = None) -> list[dict]:
    log = PAPER_LOG
    rows = []
    ref = resample(c_measured, len(log["thresholds"])) if c_measured is not None else None
    for placement in PLACEMENTS:
        c = implied_c(log["thresholds"], log["alpha"], log["beta"], log["focusing"], log["k"], placement)
        row = dict(placement=placement, c=np.round(c, 3).tolist(), direction_changes=direction_changes(c))
        if ref is not None:
            row["spearman_with_measured"] = float(stats.spearmanr(c, ref).statistic)
        rows.append(row)
    return rows


if __name__ == "__main__":
    from llm_anatomy.scores import mean_layer_scores

    measured = mean_layer_scores(sys.argv[1]) if len(sys.argv) > 1 else None
    if measured is not None:
        print("measured c_l:", np.round(measured, 3).tolist())
        print("resampled to 12 layers:", np.round(resample(measured), 3).tolist())
    for r in report(measured):
        print(r)
