"""What DVC compares across experiments (the headline metrics and the data-plot tables) and the summary's verdicts."""
import numpy as np
import pandas as pd
import pytest

from dataclasses import replace

from llm_anatomy.pruning.metrics import PruneMetrics
from llm_anatomy.pruning.report import experiment_headline, plot_series


def run(model, target, curve, acc, pct, speedup, dense=0.86, rand=None):
    return PruneMetrics(model=model, target=target, curve=curve, accuracy=acc, accuracy_lo=acc - 0.02, accuracy_hi=acc + 0.02,
                accuracy_dense=dense, accuracy_dense_lo=dense - 0.02, accuracy_dense_hi=dense + 0.02,
                pruned_pct=pct, speedup_removed=speedup, accuracy_random_mean=rand)


RUNS = [run("enc", "enc-a0.05-b0.001", "named", 0.815, 75.7595, 1.67123),
        run("enc", "flap-50", "flap", 0.858, 50.0, 1.41, rand=0.767),
        run("enc", "flap-30", "flap", 0.86, 30.0, 1.2, rand=0.8),
        run("dec", "dec-a0.1-f1", "named", 0.9, 12.5, 1.05, dense=0.94)]


def test_headline_holds_dense_and_named_configurations_in_percent():
    h = experiment_headline(RUNS)
    assert h["dense"] == {"enc": {"accuracy": 86.0, "accuracy_lo": 84.0, "accuracy_hi": 88.0},
                          "dec": {"accuracy": 94.0, "accuracy_lo": 92.0, "accuracy_hi": 96.0}}
    assert h["enc-a0.05-b0.001"] == {"enc": {"accuracy": 81.5, "accuracy_lo": 79.5, "accuracy_hi": 83.5,
                                             "pruned_pct": 75.76, "speedup": 1.671}}
    assert set(h) == {"dense", "enc-a0.05-b0.001", "dec-a0.1-f1"}  # curves stay out of the headline


def test_plot_series_one_line_per_model_and_method_in_pruning_order():
    acc, speed = plot_series(RUNS)
    flap = acc[acc.series == "enc · FLAP"]
    assert flap.pruned_pct.tolist() == [30.0, 50.0] and flap.accuracy.tolist() == [86.0, 85.8]
    assert acc[acc.series == "enc · random (FLAP's sizes)"].accuracy.tolist() == [80.0, 76.7]
    assert set(acc.series) == {"enc · FLAP", "enc · random (FLAP's sizes)", "enc · paper rule (Fig. 5a)",
                               "dec · paper rule (Fig. 5a)"}
    pd.testing.assert_series_equal(speed[speed.series == "enc · FLAP"].speedup.reset_index(drop=True),
                                   pd.Series([1.2, 1.41], name="speedup"))


def test_the_frontier_keeps_the_points_no_other_beats_on_both_axes():
    from llm_anatomy.pruning.report import frontier_table

    def point(target, curve, acc, pct, speedup):
        m = run("enc", target, curve, acc, pct, speedup)
        return replace(m, gap_dense=acc - 0.86, speedup_removed_spread=dict(min=speedup - 0.1, median=speedup,
                                                                           max=speedup + 0.1), test_reviews=1000)
    runs = [point("flap-50", "flap", 0.85, 50.0, 1.40),
            point("flap-70", "flap", 0.83, 70.0, 1.60),
            point("fisher-uniform-refit-70", "fisher-uniform-refit", 0.85, 70.0, 1.55),  # beats flap-50 on sparsity
            point("sweep-70", "sweep", 0.80, 70.0, 1.70),  # least accurate, but the fastest
            point("enc-a0.05-b0.001", "named", 0.90, 75.0, 1.9)]  # named configurations are not curve points
    f = frontier_table(runs).set_index("target")
    # by hand, (on the sparsity frontier, on the speedup frontier); flap-50 is beaten on both axes by
    # fisher-uniform-refit-70 (as accurate, sparser, faster), so it is not in the table
    expected = {"fisher-uniform-refit-70": (True, True),
                "flap-70": (False, True),  # sweep-70 is faster but less accurate; fisher-...-70 more accurate, slower
                "sweep-70": (False, True)}  # the fastest point
    assert {t: (bool(r.frontier_sparsity), bool(r.frontier_speedup)) for t, r in f.iterrows()} == expected
    assert f.loc["flap-70", "speedup_removed_min"] == 1.5


def test_the_summary_adjusts_each_gap_over_the_targets_of_its_model():
    from llm_anatomy.pruning.report import SUMMARY_GAPS, judge_summary
    from llm_anatomy.stats import NO_DIFFERENCE, adjust_p

    # two models, three targets each; the compensation and selection gaps exist for one target only
    table = pd.DataFrame(dict(model=["enc"] * 3 + ["dec"] * 3, target=["a", "b", "c"] * 2,
                              gap_dense=[-0.05, -0.02, -0.01, -0.04, -0.2, 0.01],
                              gap_dense_p=[0.001, 0.02, 0.5, 0.02, 1e-9, 0.9],
                              gap_random=[0.06, 0.02, 0.09, 0.01, 0.03, -0.1],
                              gap_random_p=[0.012, 0.3, 0.02, 0.8, 0.04, 0.001],
                              gap_compensation=[0.03, None, None, None, None, None],
                              gap_compensation_p=[0.01, None, None, None, None, None],
                              gap_selection=[None] * 6, gap_selection_p=[None] * 6))
    out = judge_summary(table)
    for gap in SUMMARY_GAPS:  # the adjusted p beside the raw one, the verdict after it
        at = list(out.columns).index(f"{gap}_p")
        assert list(out.columns)[at + 1:at + 3] == [f"{gap}_p_adj", f"{gap}_verdict"]
    # Holm per model, by hand: enc's gap_random p 0.012, 0.3, 0.02 -> 0.036, 0.3, 0.04
    assert out["gap_random_p_adj"][:3].tolist() == pytest.approx([0.036, 0.3, 0.04])
    for model in ("enc", "dec"):
        rows = out["model"] == model
        np.testing.assert_allclose(out.loc[rows, "gap_dense_p_adj"], adjust_p(table.loc[rows, "gap_dense_p"], "holm"))
    # dec's 0.02 vs dense: Holm over three gives 0.04, "lower"; its 0.04 vs random gives 0.08: no verdict of a sign
    assert out["gap_dense_verdict"].tolist() == ["lower", "lower", NO_DIFFERENCE, "lower", "lower", NO_DIFFERENCE]
    assert out["gap_random_verdict"].tolist() == ["higher", NO_DIFFERENCE, "higher", NO_DIFFERENCE, NO_DIFFERENCE,
                                                  "lower"]
    assert out["gap_compensation_verdict"].tolist() == ["higher"] + [""] * 5  # a family of one
    assert out["gap_selection_verdict"].tolist() == [""] * 6
