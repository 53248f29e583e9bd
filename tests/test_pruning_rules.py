"""Threshold rules against hand-computed numbers and the paper's own log (Figure 4a)."""
import sys

import numpy as np
import pytest

from llm_anatomy.config import ParamsError, check_pruning
from llm_anatomy.pruning.rules import (RuleError, ThresholdRule, apply_rule, figure4a_lines, layer_table,
                                       resolve_focusing, rule_from_spec)
from llm_anatomy.pruning.spec import MethodSpec

from conftest import ROOT

# A hand-made 4-layer model, 5 neurons per layer.
C = np.array([0.2, 0.4, 0.5, 0.8, 1.0])  # c_0..c_4 (c_4 = final, unused)
S = [np.array([0.001, -0.003, 0.05, -0.2, 0.4]),
     np.array([0.004, 0.012, -0.011, 0.5, -0.001]),
     np.array([0.02, -0.02, 0.0, 0.03, 0.9]),
     np.array([-0.5, 0.004, 0.007, 0.2, -0.001])]


def test_encoder_rule_by_hand():
    rule = ThresholdRule("encoder", alpha=0.01, beta=0.002, focusing=(2, 3), focus_multiplier=3)
    t, pruned = apply_rule(rule, C, S)
    # t_l = alpha c_l + k_l beta l; last layer alpha c_3, one-sided
    expect_t = [0.01 * 0.2 + 0, 0.01 * 0.4 + 1 * 0.002 * 1, 0.01 * 0.5 + 3 * 0.002 * 2, 0.01 * 0.8]
    np.testing.assert_allclose(t, expect_t)  # 0.002, 0.006, 0.017, 0.008
    assert [p.tolist() for p in pruned] == [[0], [0, 4], [2], [0, 1, 2, 4]]  # last: s < 0.008 -> -0.5, .004, .007, -.001
    table = layer_table(rule, C, S, t, pruned, high=0.35)
    assert table["masked"].tolist() == [1, 2, 1, 4]
    assert table["sided"].tolist() == ["two", "two", "two", "one"]
    assert "between 0.017 and -0.017" in figure4a_lines(table)[2]
    assert figure4a_lines(table)[3].startswith("Threshold of layer 3 is 0.008 ")


def test_decoder_rule_by_hand():
    c = np.array([-0.1, 0.4, 0.5, 0.8, 1.0])
    rule = ThresholdRule("decoder", alpha=0.01, focusing=(3,), focus_multiplier=3)
    t, pruned = apply_rule(rule, c, S)
    np.testing.assert_allclose(t, [-0.001, 0.004, 0.005, 0.024])
    assert [p.tolist() for p in pruned] == [[], [4], [2], [1, 2, 4]]  # negative t prunes nothing; two-sided last


def test_rule_arithmetic_reproduces_the_logged_thresholds_from_their_implied_c():
    """Arithmetic only: the c_l fed in were derived from the same log with the same formula, so this checks
    the rule's implementation, not the reconstruction (see test_k_placements_against_the_log)."""
    c = [0.386, 0.383, 0.257, 0.425, 0.423, 0.434, 0.450, 0.473, 0.498, 0.582, 0.750, 0.904]
    logged = [0.0038626, 0.0048271, 0.0045707, 0.0072547, 0.0162324, 0.0093418, 0.0224969, 0.0117278,
              0.0289785, 0.0148232, 0.0375011, 0.0090354]
    rule = rule_from_spec(MethodSpec.threshold_rule(dict(rule="encoder", alpha=0.01, beta=0.001, focusing="even-from-third+last",
                                                         focus_multiplier=3.0), "fig4a"), 12)
    assert rule.focusing == (4, 6, 8, 10, 11)
    np.testing.assert_allclose(rule.thresholds(c + [1.0], 12), logged, atol=6e-6)
    gpt_c = np.array(logged[:0] + [-0.00764258, 0.00199288, 0.00207803, 0.00292773, 0.00384852, 0.00417143,
                                   0.00478516, 0.00628265, 0.00737932, 0.00662929, 0.00613247, 0.00741497]) / 0.05
    gpt_c[11] /= 3  # layer 11 is focusing: the log's threshold is 3 alpha c_11
    dec = rule_from_spec(MethodSpec.threshold_rule(dict(rule="decoder", alpha=0.05, focusing="last-1/12",
                                                        focus_multiplier=3.0), "fig5a"), 12)
    np.testing.assert_allclose(dec.thresholds(np.append(gpt_c, 1.0), 12)[[0, 8, 11]],
                               [-0.00764258, 0.00737932, 0.00741497], rtol=1e-6)


@pytest.mark.parametrize("spec,L,expect", [
    ("even-from-third+last", 12, [4, 6, 8, 10, 11]), ("even-from-third+last", 6, [2, 4, 5]),
    ("even-from-third+last", 4, [2, 3]), ("last-1/12", 12, [11]), ("last-2/12", 12, [10, 11]),
    ("last-4/12", 12, [8, 9, 10, 11]), ("last-1/12", 30, [27, 28, 29]), ("last-4/12", 30, list(range(20, 30))),
    ("last-2/12", 4, [3]), ([1, 3], 4, [1, 3]), ("none", 5, []),
])
def test_focusing_mapping(spec, L, expect):
    assert resolve_focusing(spec, L) == expect


def test_focusing_beyond_depth_is_rejected():
    with pytest.raises(RuleError, match=r"\[11\] do not exist in a model of 6 layers"):
        resolve_focusing([4, 11], 6)
    config = {"pruning": {"configs": {"x": {"rule": "encoder", "alpha": 0.1, "focusing": [4, 6, 11]}},
                          "sweep": {"encoder": "x"}}}
    prof = {"pruning": {}, "models": {"m": {"source": "embedded:minilm", "num_layers": 6}}}
    with pytest.raises(ParamsError, match=r"pruning.configs.x.focusing.*num_layers 6"):
        check_pruning(config, prof, "offline")


def test_k_placements_against_the_log():
    """The placements of k each imply a c_l curve from the same log; computed by hand for two layers
    (experiments/figure4a_reconstruction.py)."""
    sys.path.insert(0, str(ROOT / "experiments"))
    from figure4a_reconstruction import PAPER_LOG, direction_changes, implied_c, resample

    t = PAPER_LOG["thresholds"]
    beta = implied_c(t, 0.01, 0.001, PAPER_LOG["focusing"], 3.0, "beta")
    # layer 4 (focusing): (0.0162324 - 3 * 0.001 * 4) / 0.01 = 0.42324; layer 5: (0.0093418 - 0.005) / 0.01
    assert beta[4] == pytest.approx(0.42324) and beta[5] == pytest.approx(0.43418)
    alpha = implied_c(t, 0.01, 0.001, PAPER_LOG["focusing"], 3.0, "alpha")
    assert alpha[4] == pytest.approx((0.0162324 - 0.004) / 0.03) and alpha[11] == pytest.approx(0.0090354 / 0.03)
    both = implied_c(t, 0.01, 0.001, PAPER_LOG["focusing"], 3.0, "both")
    assert both[4] == pytest.approx((0.0162324 / 3 - 0.004) / 0.01)
    # only k on the beta term gives a curve that does not turn at every focusing layer
    assert direction_changes(beta) == 3 and min(direction_changes(c) for c in (alpha, both)) >= 8
    assert direction_changes([0.1, 0.2, 0.2, 0.3, 0.1]) == 1
    np.testing.assert_allclose(resample([0.0, 0.5, 1.0], 4), [0.0, 0.25, 0.5, 0.5])
