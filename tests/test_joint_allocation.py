"""The joint allocation of heads and FFN widths under a latency budget (`pruning.joint`): the dynamic programme
against enumeration on hand-made tables with a known optimum, the head configurations against the grouped-query
rule, the kept heads and neurons, the estimated sensitivity against its formula written per review, and the
speed targets' names."""
import itertools

import numpy as np
import pandas as pd
import pytest

from llm_anatomy.pruning.criteria import CRITERIA
from llm_anatomy.pruning.joint import (HeadChoice, LayerChoices, SpeedMethod, allocate, estimated_losses,
                                       estimated_margin_change, head_configurations, kept_heads, layer_choices, measured_losses,
                                       sensitivity_frame)


def brute_force(losses, seconds, budget: float) -> tuple[float, list]:
    """The exact optimum by enumeration of every per-layer choice (small tables only)."""
    best, arg = np.inf, None
    for combo in itertools.product(*(list(np.ndindex(np.asarray(x).shape)) for x in losses)):
        if sum(float(seconds[l][kj]) for l, kj in enumerate(combo)) <= budget + 1e-12:
            v = sum(float(losses[l][kj]) for l, kj in enumerate(combo))
            if v < best:
                best, arg = v, list(combo)
    return best, arg


def test_allocation_finds_the_known_optimum():
    """Three layers, integer seconds: all dense take 11 s; within 7 s the optimum (by hand) keeps layer 0 dense
    (4 s), prunes layer 1 hardest (1 s, loss 0.3) and takes layer 2's second head option (2 s, loss 0.5): 0.8.
    Every other way to 7 s loses more (e.g. layer 0 at 3 s costs 1.0 alone)."""
    losses = [np.array([[0.0, 1.0, 5.0]]), np.array([[0.0, 0.1, 0.3]]), np.array([[0.0, 2.0], [0.5, 3.0]])]
    seconds = [np.array([[4.0, 3.0, 1.0]]), np.array([[4.0, 2.0, 1.0]]), np.array([[3.0, 2.0], [2.0, 1.0]])]
    picks = allocate(losses, seconds, budget=7.0, bins=7)
    assert picks == [(0, 0), (0, 2), (1, 0)]
    assert brute_force(losses, seconds, 7.0) == (pytest.approx(0.8), [(0, 0), (0, 2), (1, 0)])


@pytest.mark.parametrize("seed", range(20))
def test_allocation_equals_enumeration_on_random_integer_tables(seed):
    """With integer seconds and one bin per second the rounding is exact: the programme is the optimum."""
    rng = np.random.default_rng(seed)
    layers = rng.integers(2, 5)
    shapes = [(rng.integers(1, 4), rng.integers(1, 4)) for _ in range(layers)]
    losses = [rng.random(s) for s in shapes]
    seconds = [rng.integers(1, 6, size=s).astype(float) for s in shapes]
    lo, hi = sum(s.min() for s in seconds), sum(s.max() for s in seconds)
    budget = int(rng.integers(lo, hi + 1))
    picks = allocate(losses, seconds, budget=float(budget), bins=budget)
    best, _ = brute_force(losses, seconds, float(budget))
    assert sum(float(losses[l][kj]) for l, kj in enumerate(picks)) == pytest.approx(best, abs=1e-12)
    assert sum(float(seconds[l][kj]) for l, kj in enumerate(picks)) <= budget


def test_allocation_keeps_the_budget_with_rounding_and_refuses_the_impossible():
    rng = np.random.default_rng(0)
    losses = [rng.random((3, 4)) for _ in range(4)]
    seconds = [rng.random((3, 4)) + 0.1 for _ in range(4)]
    budget = 0.6 * sum(s.max() for s in seconds)
    picks = allocate(losses, seconds, budget, bins=500)
    assert sum(float(seconds[l][kj]) for l, kj in enumerate(picks)) <= budget
    # rounded up to steps of budget / 500, the programme loses at most what one step per layer can buy
    best, _ = brute_force(losses, seconds, budget - 4 * budget / 500)
    assert sum(float(losses[l][kj]) for l, kj in enumerate(picks)) <= best + 1e-12
    with pytest.raises(ValueError, match="out of reach"):
        allocate(losses, seconds, budget=0.5 * sum(s.min() for s in seconds))


def test_head_configurations_follow_the_grouped_query_rule():
    assert head_configurations(4, 4) == [(1, 1), (2, 2), (3, 3), (4, 4)]  # multi-head: any count
    # SmolLM2: 9 query heads in 3 groups of 3: k groups with c heads each
    smol = head_configurations(9, 3)
    assert smol == sorted({(k * c, k) for k, c in itertools.product((1, 2, 3), (1, 2, 3))})
    assert len(smol) == 9 and (9, 3) in smol and (3, 1) in smol and (3, 3) in smol
    with pytest.raises(ValueError, match="cannot share"):
        head_configurations(9, 2)


def test_kept_heads_take_the_most_important_that_fit():
    imp = np.array([5.0, 1.0, 2.0, 9.0, 0.5, 0.1, 3.0, 3.0, 8.0])  # groups {0,1,2} {3,4,5} {6,7,8}
    assert kept_heads(imp, 9, 3, 3).tolist() == [0, 3, 8]  # multi-head view: the three largest
    assert kept_heads(imp, 3, 3, 1).tolist() == [6, 7, 8]  # one whole group: the heaviest (14 > 9.6 > 8)
    assert kept_heads(imp, 3, 3, 3).tolist() == [0, 3, 8]  # one head of each group: each group's best
    # two per group, two groups: the pairs weigh {0,2} 7, {3,4} 9.5, {8,6} 11 (6 before 7: the lower index)
    assert kept_heads(imp, 3, 4, 2).tolist() == [3, 4, 6, 8]
    assert kept_heads(imp, 3, 0, 0).tolist() == []
    with pytest.raises(ValueError, match="is not a configuration"):
        kept_heads(imp, 3, 4, 3)


def test_layer_choices_and_the_sensitivity_estimate():
    rng = np.random.default_rng(1)
    H, F, N = 4, 16, 7
    ffn_imp, head_imp = rng.random(F), rng.random(H)
    joint = layer_choices("joint", ffn_imp, head_imp, kv_heads=2, width_steps=4)
    assert [(c.query, c.kv) for c in joint.heads] == [(0, 0), (1, 1), (2, 1), (2, 2), (4, 2)]
    assert joint.widths == [0, 4, 8, 12, 16]
    assert joint.pruned_neurons(1).tolist() == sorted(np.argsort(ffn_imp)[:12].tolist())
    assert layer_choices("ffn", ffn_imp, head_imp, 2, 4).heads[0].query == H
    assert layer_choices("heads", ffn_imp, head_imp, 2, 4).widths == [F]
    margins = rng.normal(size=N)
    a_head, a_ffn = rng.normal(size=(N, H)) * 0.3, rng.normal(size=(N, F)) * 0.1
    est = estimated_losses(joint, margins, a_head, a_ffn)
    margin = estimated_margin_change(joint, a_head, a_ffn)
    for k, c in enumerate(joint.heads):  # the formulas, one review at a time
        for j in range(len(joint.widths)):
            delta = a_head[:, c.pruned].sum(1) + a_ffn[:, joint.pruned_neurons(j)].sum(1)
            direct = np.mean(np.logaddexp(0, -(margins + delta)) - np.logaddexp(0, -margins))
            assert est[k, j] == pytest.approx(direct, abs=1e-12)
            assert margin[k, j] == pytest.approx(sum(abs(d) for d in delta) / N, abs=1e-12)
    assert est[-1, -1] == 0.0 and margin[-1, -1] == 0.0  # nothing pruned
    assert (margin >= 0).all() and (est < 0).any()  # the loss can fall when units go; the margin change cannot
    frame = sensitivity_frame([joint], [margin], "margin")
    assert len(frame) == 25 and frame.loc[(frame.heads_kept == 4) & (frame.width == 16), "cost"].item() == 0.0
    assert set(frame.objective) == {"margin"} and frame["cost"].to_numpy().reshape(margin.shape).tolist() == margin.tolist()


def test_measured_losses_add_heads_and_interpolated_ffn():
    choices = LayerChoices([HeadChoice(2, 2, np.array([0, 1])), HeadChoice(4, 4, np.array([], dtype=int))],
                           [0, 8, 16], np.arange(16))
    ffn = pd.DataFrame({"pruned": [0, 4, 8, 16], "loss_increase": [0.0, 0.1, 0.3, 1.0]})
    out = measured_losses(choices, [0.2, 0.0], ffn)
    np.testing.assert_allclose(out, [[1.2, 0.5, 0.2], [1.0, 0.3, 0.0]])
    with pytest.raises(ValueError, match="measure larger fractions"):
        measured_losses(choices, [0.2, 0.0], ffn[ffn.pruned < 16])


def test_speed_method_names():
    m = SpeedMethod.parse("fluctuation-joint-refit-x1.6")
    assert (m.criterion, m.structures, m.compensation, m.speedup) == ("fluctuation", "joint", "refit", 1.6)
    assert (m.ffn_criterion, m.head_criterion, m.name) == ("fluctuation", "fluctuation", "fluctuation-joint-refit-x1.6")
    other = SpeedMethod.parse("fluctuation+fisher-joint-refit-x1.6")  # two criteria: two names, not one
    assert (other.ffn_criterion, other.head_criterion) == ("fluctuation", "fisher") and other.name != m.name
    h = SpeedMethod.parse("loss-estimate-heads-bias-x1.25")
    assert (h.ffn_criterion, h.head_criterion) == (None, "loss-estimate")
    f = SpeedMethod.parse("wanda-sp-ffn-refit-x2")
    assert (f.name, f.ffn_criterion, f.head_criterion) == ("wanda-sp-ffn-refit-x2", "wanda-sp", None)
    for bad, match in (("fluctuation-joint-refit-1.6", "is not a speed target"),
                       ("wanda-sp-heads-refit-x1.5", "not a head criterion"),
                       ("norm-joint-refit-x1.5", "not an FFN criterion"),
                       ("wanda-sp-joint-refit-x1.5", "must name one: wanda-sp\\+<head criterion>-joint"),
                       ("fluctuation+flux-joint-refit-x1.5", "'flux' is not a head criterion"),
                       ("fluctuation+fisher-heads-refit-x1.5", "only a joint target names a second"),
                       ("fluctuation+fluctuation-joint-refit-x1.5", "write it as fluctuation-joint-refit-x1.5"),
                       ("fluctuation-joint-refit-x1.60", "write it as fluctuation-joint-refit-x1.6"),
                       ("fluctuation-joint-refit-x1,6", "x1,6 is not a speedup"),
                       ("fluctuation-joint-refit-x0.9", "no speedup"),
                       ("fluctuation-joint-refit-x1", "no speedup")):
        with pytest.raises(ValueError, match=match):
            SpeedMethod.parse(bad)


@pytest.mark.parametrize("structures", ["ffn", "heads", "joint"])
@pytest.mark.parametrize("criteria", [("fluctuation", "fluctuation"), ("wanda-sp", "loss-estimate"),
                                      ("fisher", "attribution")])
@pytest.mark.parametrize("speedup", [1.05, 1.6, 2.0, 3.25])
def test_speed_names_round_trip(structures, criteria, speedup):
    """Every method's name parses back to the same method (the head criterion of a joint plan included), and its
    curve is the name without the speedup (`spec.curve_of`)."""
    from llm_anatomy.pruning.head_criteria import HEAD_CRITERIA
    from llm_anatomy.pruning.spec import curve_of

    ffn, head = criteria
    criterion = head if structures == "heads" else ffn
    if structures == "heads" and head not in HEAD_CRITERIA or structures != "heads" and ffn not in CRITERIA:
        pytest.skip("not a criterion of this structure")
    method = SpeedMethod(criterion, structures, "refit", speedup, head, ridge=0.01, readout_ridge=10.0)
    parsed = SpeedMethod.parse(method.name)
    assert parsed == SpeedMethod(criterion, structures, "refit", speedup, head)
    assert SpeedMethod.from_dict(method.to_dict()) == method
    assert curve_of(method.name) == (method.curve, None) and method.name == f"{method.curve}-x{speedup:g}"
