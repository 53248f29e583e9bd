"""Intervals and tests against hand-computed cases and closed forms."""
import math

import numpy as np
import pytest
from scipy import stats as sps

from llm_anatomy import stats


def test_accuracy_interval_matches_the_normal_approximation():
    # 1000 reviews, 850 right: the bootstrap percentile interval is close to p +- 1.96 sqrt(p(1-p)/n)
    x = np.r_[np.ones(850), np.zeros(150)]
    iv = stats.accuracy_interval(x)
    half = 1.96 * math.sqrt(0.85 * 0.15 / 1000)  # 0.0221
    assert iv.value == 0.85
    assert iv.lo == pytest.approx(0.85 - half, abs=0.004) and iv.hi == pytest.approx(0.85 + half, abs=0.004)


def test_accuracy_interval_of_a_constant_sample_is_the_point():
    assert stats.accuracy_interval(np.ones(40)) == stats.Interval(1.0, 1.0, 1.0)


def test_mcnemar_exact_by_hand():
    # 8 reviews only a gets right, 2 only b: two-sided exact p = 2 * P(X <= 2 | n=10, 1/2) = 2 * 56/1024
    a = np.r_[np.ones(8), np.zeros(2), np.ones(30), np.zeros(5)]
    b = np.r_[np.zeros(8), np.ones(2), np.ones(30), np.zeros(5)]
    p, a_only, b_only = stats.mcnemar_exact(a, b)
    assert (a_only, b_only) == (8, 2)
    assert p == pytest.approx(112 / 1024)
    assert stats.mcnemar_exact(b, a)[0] == pytest.approx(112 / 1024)
    assert stats.mcnemar_exact(a, a)[0] == 1.0


def test_paired_difference_collapses_when_predictions_agree_everywhere():
    rng = np.random.default_rng(0)
    a = (rng.random(300) < 0.8).astype(float)
    d = stats.paired_difference(a, a.copy())
    assert (d.diff, d.lo, d.hi, d.p_mcnemar) == (0.0, 0.0, 0.0, 1.0)
    assert not d.detectable


def test_paired_difference_interval_matches_the_discordant_pair_variance():
    # a - b per review is +1 on 60 reviews, -1 on 20, 0 on 920: mean 0.04, sd of the mean
    # sqrt((80/1000 - 0.04^2) / 1000) = 0.00868; the paired interval is about +-1.96 of that
    a = np.r_[np.ones(60), np.zeros(20), np.ones(500), np.zeros(420)]
    b = np.r_[np.zeros(60), np.ones(20), np.ones(500), np.zeros(420)]
    d = stats.paired_difference(a, b)
    se = math.sqrt((80 / 1000 - 0.04 ** 2) / 1000)
    assert d.diff == pytest.approx(0.04)
    assert d.lo == pytest.approx(0.04 - 1.96 * se, abs=0.003) and d.hi == pytest.approx(0.04 + 1.96 * se, abs=0.003)
    assert d.detectable and d.p_mcnemar == pytest.approx(sps.binomtest(60, 80, 0.5).pvalue)
    # unpaired thinking would see two accuracies 0.56 and 0.52 with intervals of +-3 points overlapping
    assert d.hi - d.lo < 0.04


def test_seeded_interval_with_one_seed_is_the_paired_bootstrap():
    rng = np.random.default_rng(1)
    a = (rng.random(800) < 0.85).astype(float)
    r = (rng.random(800) < 0.80).astype(float)
    one = stats.seeded_difference(a, r[None, :])
    ref = stats.paired_difference(a, r)
    assert one.diff == pytest.approx(ref.diff)
    assert one.lo == pytest.approx(ref.lo, abs=0.006) and one.hi == pytest.approx(ref.hi, abs=0.006)
    assert one.p_mcnemar == pytest.approx(ref.p_mcnemar)


def test_seeded_interval_widens_with_the_spread_between_seeds():
    rng = np.random.default_rng(2)
    base = (rng.random(1000) < 0.8).astype(float)
    alike = np.stack([base] * 5)
    apart = np.stack([(rng.random(1000) < p).astype(float) for p in (0.6, 0.7, 0.8, 0.9, 0.95)])
    narrow, wide = stats.seeded_accuracy(alike), stats.seeded_accuracy(apart)
    assert narrow.value == pytest.approx(base.mean())
    assert (wide.hi - wide.lo) > 3 * (narrow.hi - narrow.lo)
    # identical seeds: the interval is the one-level bootstrap of the reviews
    ref = stats.accuracy_interval(base)
    assert narrow.lo == pytest.approx(ref.lo, abs=0.006) and narrow.hi == pytest.approx(ref.hi, abs=0.006)


def test_seeded_difference_reports_the_largest_mcnemar_p():
    a = np.r_[np.ones(50), np.zeros(50)]
    close = a.copy()
    close[:2] = 0  # 2 discordant reviews: p = 0.5
    far = np.zeros(100)  # 50 discordant: p tiny
    d = stats.seeded_difference(a, np.stack([close, far]))
    assert d.p_mcnemar == pytest.approx(0.5)


def test_spearman_interval_contains_the_estimate_and_is_tight_for_a_monotone_relation():
    rng = np.random.default_rng(3)
    x = rng.normal(size=300)
    iv = stats.spearman_interval(x, x ** 3 + 0.01 * rng.normal(size=300))
    assert iv.value > 0.99 and iv.lo > 0.98 and iv.lo <= iv.value <= iv.hi
    noise = stats.spearman_interval(x, rng.normal(size=300))
    assert noise.lo < 0 < noise.hi
