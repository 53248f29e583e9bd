"""Uncertainty of accuracies and of differences between classifiers judged on the same reviews, and the
multiplicity adjustment every verdict follows.

Every accuracy the pipeline reports is a mean of per-review 0/1 outcomes, so:
  accuracy_interval   95% percentile bootstrap over reviews (scipy.stats.bootstrap)
  paired_difference   accuracy(a) - accuracy(b) on the same reviews: a paired bootstrap interval
                      (reviews resampled jointly) and the exact McNemar p-value, an exact two-sided
                      binomial test on the discordant reviews (scipy.stats.binomtest)
  seeded_accuracy / seeded_difference
                      a random baseline drawn with S >= 2 seeds, all on the same N reviews: the mean over
                      seeds and reviews of the [S, N] table of per-review values (outcomes, or a - outcome).
                      Seeds and reviews are crossed random factors; its variance has two estimated parts
                      (`crossed_parts`): between seeds, the sample variance of the S per-seed means over S
                      (S - 1 degrees of freedom); between reviews, the variance of the per-review seed means
                      over N less the seed-by-review interaction already counted in the first part (the
                      two-way ANOVA mean squares, N - 1 degrees of freedom). The 95% interval gives each part
                      its own t quantile, half-width sqrt(t_{S-1}^2 seed + t_{N-1}^2 review) (Banerjee 1960,
                      Sankhya 22: conservative, unlike a Welch-Satterthwaite df, which under-covers at S = 3);
                      the p-value is the level at which that interval reaches 0, a test of the mean itself.
                      Its coverage is measured on simulated experiments in tests/test_stats.py.
The per-review outcome is `logits.correct` (the one accuracy definition). The percentile bootstrap is
used for one classifier or a pair: BCa is undefined on degenerate samples (two classifiers that agree
everywhere), which here must give the point interval [0, 0].

Verdicts: a table's gaps form families (`FAMILIES`, the one place that says which rows and which
adjustment); `judge` adds each gap's adjusted p-value (statsmodels' multipletests) and a verdict that
follows it at ALPHA. The 95% intervals stay unadjusted.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import optimize, stats
from statsmodels.stats.multitest import multipletests

from .logits import correct  # noqa: F401 (the per-review outcome every interval here starts from)

ALPHA = 0.05  # the level every verdict's adjusted test is held to
CONFIDENCE = 1 - ALPHA
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
        return {prefix: self.diff, f"{prefix}_lo": self.lo, f"{prefix}_hi": self.hi, f"{prefix}_p": self.p_mcnemar}


@dataclass(frozen=True)
class SeededDifference:
    """a - the mean over seeds in accuracy: its interval over seeds and reviews and the p-value of the
    same combined test (`seeded_difference`)."""

    diff: float
    lo: float
    hi: float
    p: float
    seeds: int
    reviews: int

    def to_dict(self, prefix: str) -> dict:
        return {prefix: self.diff, f"{prefix}_lo": self.lo, f"{prefix}_hi": self.hi, f"{prefix}_p": self.p}


def _bootstrap_mean(x: np.ndarray, seed: int) -> Interval:
    """The mean with its 95% percentile bootstrap interval; a constant sample is its own point interval."""
    mean = float(x.mean())
    if np.all(x == x[0]):
        return Interval(mean, mean, mean)
    res = stats.bootstrap((x,), lambda s, axis=-1: s.mean(axis=axis), paired=False, vectorized=True,
                          n_resamples=RESAMPLES, confidence_level=CONFIDENCE, method="percentile",
                          random_state=np.random.default_rng(seed))
    lo, hi = res.confidence_interval
    return Interval(mean, float(lo), float(hi))


def accuracy_interval(outcomes, seed: int = 0) -> Interval:
    """Accuracy with its 95% bootstrap interval over reviews."""
    x = np.asarray(outcomes, dtype=np.float64)
    if x.size == 0:
        raise ValueError("no reviews to compute an accuracy interval on")
    return _bootstrap_mean(x, seed)


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
    d = _bootstrap_mean(a - b, seed)
    return Difference(d.value, d.lo, d.hi, p, a_only, b_only)


def crossed_parts(values) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean, seed part, review part) of the mean of per-review values of S seeds on the same N reviews,
    [..., S, N] (leading axes are independent tables: the coverage test passes thousands at once).

    With seeds and reviews crossed random factors (value = mean + seed + review + interaction) the
    variance of the mean is var_seed/S + var_review/N + var_interaction/(SN). The seed part, the sample
    variance of the S per-seed means over S, estimates var_seed/S + var_interaction/(SN) (S - 1 df); the
    review part, (MS_review - MS_interaction)/(SN) from the two-way ANOVA mean squares, estimates
    var_review/N (N - 1 df; floored at 0). Their sum is unbiased for the variance of the mean."""
    v = np.asarray(values, dtype=np.float64)
    s, n = v.shape[-2:]
    mean = v.mean(axis=(-2, -1))
    per_seed, per_review = v.mean(axis=-1), v.mean(axis=-2)
    ms_seed = n * per_seed.var(axis=-1, ddof=1)
    ms_review = s * per_review.var(axis=-1, ddof=1)
    residual = v - per_seed[..., :, None] - per_review[..., None, :] + mean[..., None, None]
    ms_interaction = (residual ** 2).sum(axis=(-2, -1)) / ((s - 1) * (n - 1))  # summed, not subtracted: exact 0s
    return mean, ms_seed / (s * n), np.maximum(ms_review - ms_interaction, 0.0) / (s * n)


def combined_half_width(seed_part, review_part, seeds: int, reviews: int, alpha: float = ALPHA):
    """Half-width of the (1 - alpha) interval of a seeded mean: each variance part scaled by its own t
    quantile (Banerjee 1960), sqrt(t_{S-1}^2 seed_part + t_{N-1}^2 review_part)."""
    t_seed, t_review = stats.t.isf(alpha / 2, seeds - 1), stats.t.isf(alpha / 2, reviews - 1)
    return np.sqrt(t_seed ** 2 * np.asarray(seed_part) + t_review ** 2 * np.asarray(review_part))


def combined_p(mean: float, seed_part: float, review_part: float, seeds: int, reviews: int) -> float:
    """Two-sided p-value of "the seeded mean is 0": the alpha at which combined_half_width reaches |mean|,
    so p < 0.05 exactly when the 95% interval excludes 0. Found by root search on log alpha, bracketed
    below by either part's own t test (the width is at least either part's) and above by the t test of
    the summed variance at the smaller df (the width is at most that)."""
    m = abs(mean)
    parts = [(part, df) for part, df in ((seed_part, seeds - 1), (review_part, reviews - 1)) if part > 0]
    if m == 0.0 or not parts:
        return 1.0 if m == 0.0 else 0.0
    alone = [float(2 * stats.t.sf(m / np.sqrt(part), df)) for part, df in parts]
    if len(parts) == 1:
        return alone[0]
    lo = max(alone)
    hi = float(2 * stats.t.sf(m / np.sqrt(seed_part + review_part), min(seeds, reviews) - 1))

    def excess(log_alpha):
        return float(combined_half_width(seed_part, review_part, seeds, reviews, np.exp(log_alpha))) - m

    if lo == 0.0 or excess(np.log(hi)) >= 0:
        return hi
    if excess(np.log(lo)) <= 0:
        return lo
    return float(np.exp(optimize.brentq(excess, np.log(lo), np.log(hi), xtol=1e-12)))


def _seeded_mean(values: np.ndarray, bounds: tuple[float, float]) -> tuple[float, float, float, float]:
    """(mean, lo, hi, p) of a [S, N] table of per-review values; the interval clipped to `bounds`."""
    s, n = values.shape
    if s < 2:
        raise ValueError(f"a seeded interval needs at least 2 seeds, got {s}: the spread between seeds is "
                         "otherwise unknown; raise random_seeds (profiles.<p>.pruning.<kind>.random_seeds)")
    if n < 2:
        raise ValueError(f"a seeded interval needs at least 2 reviews, got {n}; raise test_limit")
    mean, seed_part, review_part = (float(x) for x in crossed_parts(values))
    half = float(combined_half_width(seed_part, review_part, s, n))
    p = combined_p(mean, seed_part, review_part, s, n)
    return mean, max(mean - half, bounds[0]), min(mean + half, bounds[1]), p


def seeded_accuracy(outcomes_by_seed) -> Interval:
    """Mean accuracy over seeds [S, N] (the same N reviews for every seed) with its 95% interval over
    seeds and reviews (see the module doc)."""
    m = np.asarray(outcomes_by_seed, dtype=np.float64)
    mean, lo, hi, _ = _seeded_mean(m, (0.0, 1.0))
    return Interval(mean, lo, hi)


def seeded_difference(a, outcomes_by_seed) -> SeededDifference:
    """accuracy(a) - mean accuracy over seeds [S, N], all on the same reviews: the mean of the per-seed
    paired differences a - seed, with its 95% interval over seeds and reviews and the p-value of the
    same combined test (see the module doc)."""
    a = np.asarray(a, dtype=np.float64)
    m = np.asarray(outcomes_by_seed, dtype=np.float64)
    if m.ndim != 2 or m.shape[1] != a.shape[0]:
        raise ValueError(f"paired outcomes must cover the same reviews: {a.shape} vs seeds x reviews {m.shape}")
    diff, lo, hi, p = _seeded_mean(a[None, :] - m, (-1.0, 1.0))
    return SeededDifference(diff, lo, hi, p, m.shape[0], m.shape[1])


def spearman_interval(x, y, seed: int = 0) -> Interval:
    """Spearman's rank correlation with a 95% bootstrap interval over the (x, y) pairs."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    rho = float(stats.spearmanr(x, y).statistic)
    res = stats.bootstrap((x, y), lambda xs, ys, axis=-1: stats.spearmanr(xs, ys).statistic, paired=True,
                          vectorized=False, n_resamples=1000, confidence_level=CONFIDENCE, method="percentile",
                          random_state=np.random.default_rng(seed))
    lo, hi = res.confidence_interval
    return Interval(rho, float(lo), float(hi))


# ---- verdicts over families of comparisons ------------------------------------------------------------
NO_DIFFERENCE = "no detectable difference"


@dataclass(frozen=True)
class Family:
    """Which rows of a table form one family of tests, and the adjustment over it; each gap column of
    the table is a family of its own within those rows."""

    by: tuple[str, ...]  # the columns whose values split the table (none: the whole table)
    method: str          # statsmodels.stats.multitest.multipletests: holm (confirmatory), fdr_bh (exploratory)


# Every family of verdicts, in one place (docs/PRUNING.md, "Uncertainty and fair comparisons").
FAMILIES = {
    # summary.csv: per model and per gap (vs dense, vs random, compensation, selection alone), every
    # target of the model: the claims the docs make. Holm controls the family-wise error.
    "summary": Family(by=("model",), method="holm"),
    # comparisons.csv: method against method at the same target percentage, per model: exploratory,
    # Benjamini-Hochberg controls the false discovery rate.
    "comparisons": Family(by=("model",), method="fdr_bh"),
    # choices/<model>/flap_allocation.csv (one model): global against uniform at each sparsity, the
    # evidence for a setting rather than a claim: Benjamini-Hochberg.
    "flap_allocation": Family(by=(), method="fdr_bh"),
}


def adjust_p(p, method: str) -> np.ndarray:
    """Adjusted p-values of one family (multipletests); NaN (no test) stays NaN and is not counted."""
    p = np.asarray(p, dtype=np.float64)
    out = np.full_like(p, np.nan)
    tested = ~np.isnan(p)
    if tested.any():
        out[tested] = multipletests(p[tested], alpha=ALPHA, method=method)[1]
    return out


def verdict(diff: float | None, p_adjusted: float | None) -> str:
    """How a difference may be worded: its sign when its family-adjusted p-value is below ALPHA,
    "no detectable difference" otherwise, "" when unknown. Plain numbers, so values read back from a
    table are judged by the same rule."""
    if diff is None or p_adjusted is None or diff != diff or p_adjusted != p_adjusted:
        return ""
    if p_adjusted >= ALPHA or diff == 0:
        return NO_DIFFERENCE
    return "higher" if diff > 0 else "lower"


def judge(df: pd.DataFrame, gap: str, family: Family, verdict_column: str | None = None) -> pd.DataFrame:
    """`df` with `<gap>_p_adj` (the family's adjustment of `<gap>_p`) after `<gap>_p`, and the verdict of
    every row (`<gap>_verdict` unless named) after it."""
    verdict_column = verdict_column or f"{gap}_verdict"
    out = df.drop(columns=[c for c in (f"{gap}_p_adj", verdict_column) if c in df.columns])
    if out.empty or f"{gap}_p" not in out.columns:
        return out
    raw = pd.to_numeric(out[f"{gap}_p"], errors="coerce")
    adjusted = pd.Series(np.nan, index=out.index)
    families = [part.index for _, part in out.groupby(list(family.by), dropna=False)] if family.by else [out.index]
    for rows in families:
        adjusted[rows] = adjust_p(raw[rows], family.method)
    at = out.columns.get_loc(f"{gap}_p") + 1
    out.insert(at, f"{gap}_p_adj", adjusted)
    diffs = pd.to_numeric(out[gap], errors="coerce")
    out.insert(at + 1, verdict_column, [verdict(d, p) for d, p in zip(diffs, adjusted)])
    return out
