"""Bisection on alpha hits the wanted fraction; the random baseline keeps high neurons, reproducibly."""
import numpy as np
import pytest

from llm_anatomy.pruning.plan import random_masks
from llm_anatomy.pruning.rules import ThresholdRule, apply_rule, bisect_alpha


def _scores(seed=0, L=6, F=200):
    rng = np.random.default_rng(seed)
    s = [rng.normal(0, 0.05, F) for _ in range(L)]
    for layer in s:  # a few high neurons per layer
        layer[:3] = [0.5, 0.4, 0.9]
    c = np.linspace(0.3, 1.0, L + 1)
    return c, s


@pytest.mark.parametrize("kind", ["encoder", "decoder"])
@pytest.mark.parametrize("target", [0.1, 0.3, 0.5, 0.8])
def test_bisection_hits_target(kind, target):
    c, s = _scores()
    rule = ThresholdRule(kind, alpha=0.0, beta=0.0002 if kind == "encoder" else 0.0, focusing=(3, 5))
    alpha, n, reached = bisect_alpha(rule, c, s, target)
    total = sum(len(x) for x in s)
    got = sum(len(p) for p in apply_rule(rule.with_alpha(alpha), c, s)[1])
    assert got == n and reached
    assert abs(got - target * total) <= len(s)  # within one neuron per layer


def test_random_baseline_keeps_high_and_is_reproducible():
    c, s = _scores(1)
    rule = ThresholdRule("encoder", alpha=0.3, beta=0.01, focusing=(2,))
    _, pruned = apply_rule(rule, c, s)
    counts = [len(p) for p in pruned]
    a = random_masks(s, counts, seed=3, high=0.35)
    b = random_masks(s, counts, seed=3, high=0.35)
    other = random_masks(s, counts, seed=4, high=0.35)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert any(not np.array_equal(x, y) for x, y in zip(a, other))
    assert [len(x) for x in a] == counts
    for layer, mask in zip(s, a):
        assert not (layer[mask] > 0.35).any()
        assert len(set(mask.tolist())) == len(mask)
    # asking for more than the non-high neurons caps at them, still never high
    capped = random_masks(s, [len(x) for x in s], seed=0, high=0.35)
    assert all(len(m) == len(x) - 3 for m, x in zip(capped, s))


def test_bisection_stays_in_the_papers_domain_unless_asked():
    c, s = _scores()
    # beta alone (alpha = 0) prunes |s| < k_l * beta * l: with these scores about a third of the neurons
    rule = ThresholdRule("encoder", alpha=0.0, beta=0.01, focusing=(3, 5))
    at_zero = sum(len(p) for p in apply_rule(rule, c, s)[1])
    total = sum(len(x) for x in s)
    assert at_zero > 0.2 * total
    alpha, n, reached = bisect_alpha(rule, c, s, 0.05)
    assert (alpha, n, reached) == (0.0, at_zero, False)
    alpha, n, reached = bisect_alpha(rule, c, s, 0.05, negative_alpha=True)
    assert alpha < 0 and reached and abs(n - 0.05 * total) <= len(s)
