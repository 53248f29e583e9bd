"""Intervals and tests against hand-computed cases and closed forms."""
import math

import numpy as np
import pandas as pd
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


def test_paired_difference_interval_matches_the_discordant_pair_variance():
    # a - b per review is +1 on 60 reviews, -1 on 20, 0 on 920: mean 0.04, sd of the mean
    # sqrt((80/1000 - 0.04^2) / 1000) = 0.00868; the paired interval is about +-1.96 of that
    a = np.r_[np.ones(60), np.zeros(20), np.ones(500), np.zeros(420)]
    b = np.r_[np.zeros(60), np.ones(20), np.ones(500), np.zeros(420)]
    d = stats.paired_difference(a, b)
    se = math.sqrt((80 / 1000 - 0.04 ** 2) / 1000)
    assert d.diff == pytest.approx(0.04)
    assert d.lo == pytest.approx(0.04 - 1.96 * se, abs=0.003) and d.hi == pytest.approx(0.04 + 1.96 * se, abs=0.003)
    assert d.lo > 0 and d.p_mcnemar == pytest.approx(sps.binomtest(60, 80, 0.5).pvalue)
    # unpaired thinking would see two accuracies 0.56 and 0.52 with intervals of +-3 points overlapping
    assert d.hi - d.lo < 0.04


# ---- a random baseline over seeds: seeds and reviews crossed ----------------------------------------------

def test_crossed_parts_are_the_two_way_anova_by_hand_and_by_statsmodels():
    # a = [1, 1, 1], two seeds [0, 1, 0] and [1, 1, 0]: per-review differences [[1, 0, 1], [0, 0, 1]].
    # By hand: mean 1/2; per-seed means 2/3, 1/3 (sample variance 1/18, seed part 1/18 / 2 = 1/36);
    # per-review means 1/2, 0, 1: MS_review = 2 * 1/4 = 1/2; SS_total = 6/4, so
    # MS_interaction = (3/2 - 1 * 1/6 - 2 * 1/2) / (1 * 2) = 1/6; review part (1/2 - 1/6) / 6 = 1/18.
    import statsmodels.formula.api as smf
    from statsmodels.stats.anova import anova_lm

    d = np.array([[1.0, 0, 1], [0, 0, 1]])
    mean, seed_part, review_part = stats.crossed_parts(d)
    assert (mean, seed_part, review_part) == pytest.approx((0.5, 1 / 36, 1 / 18))
    # a larger table against statsmodels' OLS two-way ANOVA mean squares
    rng = np.random.default_rng(4)
    v = (rng.random((4, 15)) < 0.6).astype(float) - (rng.random((4, 15)) < 0.5)
    long = pd.DataFrame(dict(v=v.ravel(), seed=np.repeat(np.arange(4), 15), review=np.tile(np.arange(15), 4)))
    ms = anova_lm(smf.ols("v ~ C(seed) + C(review)", long).fit())["mean_sq"]
    _, seed_part, review_part = stats.crossed_parts(v)
    assert seed_part == pytest.approx(ms["C(seed)"] / 60)
    assert review_part == pytest.approx(max(ms["C(review)"] - ms["Residual"], 0) / 60)


def test_the_test_of_a_seeded_mean_by_hand():
    # the table above: the 95% half-width is sqrt(t_{1}^2 / 36 + t_{2}^2 / 18) = sqrt(12.706^2 / 36 + 4.303^2 / 18)
    # = 2.348, clipped to [-1, 1]; the p-value is the alpha at which that width is 1/2, found here by bisection
    d = stats.seeded_difference(np.ones(3), np.array([[0, 1, 0], [1, 1, 0]]))
    assert (d.diff, d.lo, d.hi, d.seeds, d.reviews) == (0.5, -1.0, 1.0, 2, 3)
    assert float(stats.combined_half_width(1 / 36, 1 / 18, 2, 3)) == pytest.approx(2.3480, abs=1e-4)

    def width(alpha):
        return math.sqrt(sps.t.isf(alpha / 2, 1) ** 2 / 36 + sps.t.isf(alpha / 2, 2) ** 2 / 18)
    lo, hi = 1e-9, 1.0
    for _ in range(100):
        lo, hi = ((lo + hi) / 2, hi) if width((lo + hi) / 2) > 0.5 else (lo, (lo + hi) / 2)
    assert d.p == pytest.approx(lo, rel=1e-8) and d.p == pytest.approx(0.27715, abs=1e-5)


def test_the_seeded_test_is_the_t_test_over_seeds_when_reviews_do_not_vary():
    # every seed is right on all reviews or on none, the method on all: per-seed differences 0, 1, 1, 0, 1 and
    # no review part; the test is the one-sample t test over seeds and the interval its t interval
    a = np.ones(40)
    rand = np.stack([np.full(40, float(right)) for right in (1, 0, 0, 1, 0)])
    d = stats.seeded_difference(a, rand)
    per_seed = np.array([0, 1, 1, 0, 1.0])
    ref = sps.ttest_1samp(per_seed, 0.0)
    lo, hi = ref.confidence_interval(0.95)
    assert d.diff == pytest.approx(0.6) and d.p == pytest.approx(ref.pvalue)
    assert (d.lo, d.hi) == pytest.approx((lo, min(hi, 1.0)))


def test_the_seeded_test_is_the_paired_t_test_over_reviews_when_seeds_agree():
    # identical seeds: no spread between seeds and no interaction; the test is the paired t test over reviews
    rng = np.random.default_rng(1)
    a = (rng.random(800) < 0.85).astype(float)
    r = (rng.random(800) < 0.80).astype(float)
    d = stats.seeded_difference(a, np.stack([r] * 5))
    ref = sps.ttest_rel(a, r)
    lo, hi = ref.confidence_interval(0.95)
    assert d.diff == pytest.approx((a - r).mean()) and d.p == pytest.approx(ref.pvalue)
    assert (d.lo, d.hi) == pytest.approx((lo, hi))
    acc = stats.seeded_accuracy(np.stack([r] * 5))
    assert (acc.lo, acc.hi) == pytest.approx(sps.ttest_1samp(r, 0.0).confidence_interval(0.95))


def test_the_seeded_p_value_is_below_5_percent_exactly_when_the_interval_excludes_0():
    rng = np.random.default_rng(5)
    for case in range(40):
        s = 3 + case % 4
        a = (rng.random(300) < 0.8).astype(float)
        rand = (rng.random((s, 300)) < (0.76 + rng.normal(0, 0.03, (s, 1)))).astype(float)
        d = stats.seeded_difference(a, rand)
        assert (d.p < 0.05) == (d.lo > 0 or d.hi < 0)
        if 0.001 < d.p < 0.999:  # the (1 - p) interval ends at 0
            m, seed_part, review_part = stats.crossed_parts(a[None, :] - rand)
            assert float(stats.combined_half_width(seed_part, review_part, s, 300, d.p)) == pytest.approx(abs(m))


def test_seeded_interval_widens_with_the_spread_between_seeds():
    rng = np.random.default_rng(2)
    base = (rng.random(1000) < 0.8).astype(float)
    alike = np.stack([base] * 5)
    apart = np.stack([(rng.random(1000) < p).astype(float) for p in (0.6, 0.7, 0.8, 0.9, 0.95)])
    narrow, wide = stats.seeded_accuracy(alike), stats.seeded_accuracy(apart)
    assert narrow.value == pytest.approx(base.mean())
    assert (wide.hi - wide.lo) > 3 * (narrow.hi - narrow.lo)


def test_a_seeded_interval_needs_two_seeds():
    with pytest.raises(ValueError, match="at least 2 seeds, got 1.*random_seeds"):
        stats.seeded_difference(np.ones(10), np.ones((1, 10)))


# Simulated experiments with a known answer. Per review a difficulty u ~ U(-0.08, 0.08) and one latent uniform;
# the method is right where latent < 0.75 + u, each seed where its own draw < 0.65 + u + its seed effect
# (normal, sd `seed_sd`), the draw being the review's latent on 80% of the reviews (so the seeds and the method
# agree on most reviews, as pruned models do) and fresh elsewhere. Over seeds and reviews the method's
# accuracy is 0.75 and the random baseline's 0.65: the seeded difference is 0.10 exactly.
METHOD, RANDOM = 0.75, 0.65


def _simulate(rng, experiments: int, seeds: int, reviews: int, seed_sd: float):
    u = rng.uniform(-0.08, 0.08, size=(experiments, 1, reviews))
    latent = rng.random((experiments, 1, reviews))
    p = RANDOM + u + rng.normal(0.0, seed_sd, size=(experiments, seeds, 1))
    assert 0 < p.min() and p.max() < 1  # no probability clipped: the expectations above are exact
    draw = np.where(rng.random((experiments, seeds, reviews)) < 0.8, latent, rng.random((experiments, seeds, reviews)))
    return (latent < METHOD + u)[:, 0].astype(np.float64), (draw < p).astype(np.float64)


def _coverage(values, truth) -> float:
    s, n = values.shape[-2:]
    mean, seed_part, review_part = stats.crossed_parts(values)
    return float(np.mean(np.abs(mean - truth) <= stats.combined_half_width(seed_part, review_part, s, n)))


@pytest.mark.parametrize("seeds", [3, 5])
def test_seeded_intervals_cover_the_known_answer_in_95_percent_of_simulated_experiments(seeds):
    # 4,000 experiments of 200 reviews per regime: the reviews alone vary (seed_sd 0), both, the seeds dominate.
    # Band: at least 94% (95% less three Monte Carlo standard errors, 3 x 0.0034; Banerjee's combination is
    # conservative), at most 98.5% (an interval merely wide would exceed it). Measured (seeded, so fixed):
    # S = 3 from 96.4% to 97.4%, S = 5 from 95.1% to 96.4% (differences and accuracies).
    rng = np.random.default_rng(seeds)
    for seed_sd in (0.0, 0.02, 0.05):
        a, rand = _simulate(rng, 4000, seeds, 200, seed_sd)
        for values, truth in ((a[:, None, :] - rand, METHOD - RANDOM), (rand, RANDOM)):
            assert 0.94 <= _coverage(values, truth) <= 0.985, (seeds, seed_sd, truth)
        # the public functions compute what the vectorised ones do, one experiment at a time
        d, acc = stats.seeded_difference(a[0], rand[0]), stats.seeded_accuracy(rand[0])
        mean, seed_part, review_part = stats.crossed_parts(a[0][None, :] - rand[0])
        half = float(stats.combined_half_width(seed_part, review_part, seeds, 200))
        assert (d.diff, d.lo, d.hi) == pytest.approx((mean, mean - half, mean + half))
        assert acc.value == pytest.approx(rand[0].mean()) and acc.lo < acc.value < acc.hi


# ---- multiplicity -----------------------------------------------------------------------------------------

def test_holm_and_benjamini_hochberg_by_hand():
    p = [0.01, 0.04, 0.03, 0.005, float("nan")]  # the NaN (no test) is left out of the family of four
    # Holm: sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04, made monotone: 0.06 for 0.04
    np.testing.assert_allclose(stats.adjust_p(p, "holm"), [0.03, 0.06, 0.06, 0.02, np.nan])
    # BH: sorted times 4/rank = 0.02, 0.02, 0.04, 0.04, each the least of itself and those above it
    np.testing.assert_allclose(stats.adjust_p(p, "fdr_bh"), [0.02, 0.04, 0.04, 0.02, np.nan])


def test_judge_adjusts_within_each_family_and_words_the_gaps_by_the_adjusted_test():
    df = pd.DataFrame(dict(model=["m", "m", "m", "m", "n", "n"],
                           gap=[0.05, -0.04, 0.02, 0.01, -0.03, 0.0],
                           gap_p=[0.01, 0.04, 0.03, 0.005, 0.03, 1.0],
                           reviews=1000))
    holm = stats.judge(df, "gap", stats.Family(by=("model",), method="holm"))
    assert list(holm.columns) == ["model", "gap", "gap_p", "gap_p_adj", "gap_verdict", "reviews"]
    # model m: Holm over its four rows (as above); model n: its own family of two, 0.03 x 2 = 0.06
    np.testing.assert_allclose(holm["gap_p_adj"], [0.03, 0.06, 0.06, 0.02, 0.06, 1.0])
    assert holm["gap_verdict"].tolist() == ["higher", stats.NO_DIFFERENCE, stats.NO_DIFFERENCE, "higher",
                                            stats.NO_DIFFERENCE, stats.NO_DIFFERENCE]
    bh = stats.judge(df, "gap", stats.Family(by=("model",), method="fdr_bh"), verdict_column="verdict")
    assert bh["verdict"].tolist() == ["higher", "lower", "higher", "higher", stats.NO_DIFFERENCE, stats.NO_DIFFERENCE]
    # a table without the test (an uncompensated plan's compensation gap) gets no verdict
    empty = stats.judge(df.assign(gap_p=np.nan), "gap", stats.FAMILIES["summary"])
    assert empty["gap_verdict"].tolist() == [""] * 6


def test_verdict_follows_the_adjusted_p_value_only():
    assert stats.verdict(0.06, 0.049) == "higher" and stats.verdict(-0.06, 0.049) == "lower"
    assert stats.verdict(0.06, 0.05) == stats.NO_DIFFERENCE  # e.g. an interval excluding 0 with p = 1 before
    assert stats.verdict(None, 0.01) == "" and stats.verdict(0.1, float("nan")) == ""


def test_spearman_interval_contains_the_estimate_and_is_tight_for_a_monotone_relation():
    rng = np.random.default_rng(3)
    x = rng.normal(size=300)
    iv = stats.spearman_interval(x, x ** 3 + 0.01 * rng.normal(size=300))
    assert iv.value > 0.99 and iv.lo > 0.98 and iv.lo <= iv.value <= iv.hi
    noise = stats.spearman_interval(x, rng.normal(size=300))
    assert noise.lo < 0 < noise.hi
