"""Uncertainty of accuracies and of differences between classifiers judged on the same reviews.

Every accuracy the pipeline reports is a mean of per-review 0/1 outcomes, so:
  accuracy_interval   95% percentile bootstrap over reviews (scipy.stats.bootstrap)
  paired_difference   accuracy(a) - accuracy(b) on the same reviews: a paired bootstrap interval
                      (reviews resampled jointly) and the exact McNemar p-value, an exact two-sided
                      binomial test on the discordant reviews (scipy.stats.binomtest)
  seeded_accuracy / seeded_difference
                      a random baseline drawn with several seeds: seeds and reviews both resampled
                      (a two-level bootstrap), so the interval covers both the draw of the neurons
                      and the draw of the reviews; scipy has no nested bootstrap, hence the numpy
                      resampler below, checked against scipy's one-level bootstrap in the tests.
The per-review outcome is `logits.correct` (the one accuracy definition). The percentile method is
used throughout: BCa is undefined on degenerate samples (two classifiers
that agree everywhere), which here must give the point interval [0, 0].
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

from .logits import correct  # noqa: F401 (the per-review outcome every interval here starts from)

CONFIDENCE = 0.95
RESAMPLES = 4000


@dataclass(frozen=True)
class Interval:
    value: float
    lo: float
    hi: float

    def to_dict(self, prefix: str, bounds: str | None = None) -> dict:
        """{prefix: value, <bounds>_lo, <bounds>_hi}; `bounds` defaults to `prefix`."""
        bounds = bounds or prefix
        return {prefix: self.value, f"{bounds}_lo": self.lo, f"{bounds}_hi": self.hi}


@dataclass(frozen=True)
class Difference:
    """a - b in accuracy: the paired interval, the exact McNemar p-value and the discordant counts."""

    diff: float
    lo: float
    hi: float
    p_mcnemar: float
    a_only: int    # reviews a gets right and b gets wrong
    b_only: int

    def to_dict(self, prefix: str) -> dict:
        return {f"{prefix}": self.diff, f"{prefix}_lo": self.lo, f"{prefix}_hi": self.hi,
                f"{prefix}_p": self.p_mcnemar}

    @property
    def detectable(self) -> bool:
        """False when the interval contains 0: report "no detectable difference"."""
        return verdict(self.diff, self.lo, self.hi) not in ("", NO_DIFFERENCE)


NO_DIFFERENCE = "no detectable difference"


def verdict(diff: float | None, lo: float | None, hi: float | None) -> str:
    """How a difference may be worded: its sign only when its 95% interval excludes 0 ("" when unknown).
    Takes plain numbers, so values read back from JSON are judged by the same rule."""
    if diff is None or lo is None or hi is None or diff != diff:
        return ""
    if lo <= 0.0 <= hi:
        return NO_DIFFERENCE
    return "higher" if diff > 0 else "lower"


def _bootstrap(data: tuple, statistic, seed: int, paired: bool) -> tuple[float, float]:
    res = stats.bootstrap(data, statistic, paired=paired, vectorized=True, n_resamples=RESAMPLES,
                          confidence_level=CONFIDENCE, method="percentile", random_state=np.random.default_rng(seed))
    lo, hi = res.confidence_interval
    return float(lo), float(hi)


def accuracy_interval(outcomes, seed: int = 0) -> Interval:
    """Accuracy with its 95% bootstrap interval over reviews."""
    x = np.asarray(outcomes, dtype=np.float64)
    if x.size == 0:
        raise ValueError("no reviews to compute an accuracy interval on")
    if np.all(x == x[0]):
        return Interval(float(x[0]), float(x[0]), float(x[0]))
    lo, hi = _bootstrap((x,), lambda s, axis=-1: s.mean(axis=axis), seed, paired=False)
    return Interval(float(x.mean()), lo, hi)


def mcnemar_exact(a, b) -> tuple[float, int, int]:
    """(two-sided exact p, a_only, b_only): a binomial test of a_only against a_only + b_only at 1/2."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    a_only, b_only = int((a & ~b).sum()), int((~a & b).sum())
    n = a_only + b_only
    p = 1.0 if n == 0 else float(stats.binomtest(a_only, n, 0.5).pvalue)
    return p, a_only, b_only


def paired_difference(a, b, seed: int = 0) -> Difference:
    """accuracy(a) - accuracy(b) for two classifiers' outcomes on the same reviews."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired outcomes must cover the same reviews: {a.shape} vs {b.shape}")
    p, a_only, b_only = mcnemar_exact(a, b)
    d = a - b
    diff = float(d.mean())
    if np.all(d == d[0]):
        lo = hi = diff
    else:
        lo, hi = _bootstrap((d,), lambda s, axis=-1: s.mean(axis=axis), seed, paired=False)
    return Difference(diff, lo, hi, p, a_only, b_only)


def _two_level(a: np.ndarray | None, seeded: np.ndarray, seed: int) -> tuple[float, float]:
    """Percentile interval of mean(a) - mean(seeded) (or mean(seeded) when a is None), resampling the
    seeds (rows of `seeded`) and the reviews (columns, jointly with a) with replacement."""
    rng = np.random.default_rng(seed)
    s, n = seeded.shape
    w_seed = rng.multinomial(s, np.full(s, 1 / s), size=RESAMPLES) / s      # [B, S]
    w_rev = rng.multinomial(n, np.full(n, 1 / n), size=RESAMPLES) / n       # [B, N]
    per_review = w_seed @ seeded                                             # [B, N]
    seeded_mean = (per_review * w_rev).sum(axis=1)
    stat = seeded_mean if a is None else w_rev @ a - seeded_mean
    alpha = (1 - CONFIDENCE) / 2
    lo, hi = np.quantile(stat, [alpha, 1 - alpha])
    return float(lo), float(hi)


def seeded_accuracy(outcomes_by_seed, seed: int = 0) -> Interval:
    """Mean accuracy over seeds [S, N] with an interval over both seeds and reviews."""
    m = np.atleast_2d(np.asarray(outcomes_by_seed, dtype=np.float64))
    lo, hi = _two_level(None, m, seed)
    return Interval(float(m.mean()), lo, hi)


def seeded_difference(a, outcomes_by_seed, seed: int = 0) -> Difference:
    """accuracy(a) - mean accuracy over seeds, same reviews; the interval resamples seeds and reviews.

    McNemar's test needs one partner per review: the p-value reported is the largest over the seeds
    (each seed tested on its own), so "p < 0.05" holds against every seed.
    """
    a = np.asarray(a, dtype=np.float64)
    m = np.atleast_2d(np.asarray(outcomes_by_seed, dtype=np.float64))
    if m.shape[1] != a.shape[0]:
        raise ValueError(f"paired outcomes must cover the same reviews: {a.shape[0]} vs {m.shape[1]}")
    tests = [mcnemar_exact(a, row) for row in m]
    worst = max(tests, key=lambda t: t[0])
    lo, hi = _two_level(a, m, seed)
    return Difference(float(a.mean() - m.mean()), lo, hi, worst[0], worst[1], worst[2])


def spearman_interval(x, y, seed: int = 0) -> Interval:
    """Spearman's rank correlation with a 95% bootstrap interval over the (x, y) pairs."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    rho = float(stats.spearmanr(x, y).statistic)

    def statistic(xs, ys, axis=-1):
        return stats.spearmanr(xs, ys).statistic

    res = stats.bootstrap((x, y), statistic, paired=True, vectorized=False, n_resamples=1000,
                          confidence_level=CONFIDENCE, method="percentile", random_state=np.random.default_rng(seed))
    lo, hi = res.confidence_interval
    return Interval(rho, float(lo), float(hi))
