"""Target sparsity: the alpha at which a rule prunes a wanted fraction of all FFN neurons.

The pruned count is a step function of alpha, non-decreasing wherever c_l >= 0 (every
threshold grows with alpha). Bisection over alpha (everything else fixed) stops when the
count equals round(target * total), or when the bracket is narrower than float precision
(then the count is within the one step it straddles, at most one neuron per layer).

The paper's alpha is non-negative, so by default the search stays in alpha >= 0: a target
below what alpha = 0 already prunes (the encoder's beta term prunes on its own) is reported as
not reached, at alpha = 0, rather than met with a negative alpha the paper never used.
`negative_alpha=True` lifts that limit.
"""
from __future__ import annotations

import logging


from .rules import ThresholdRule, apply_rule

log = logging.getLogger(__name__)


def pruned_count(rule: ThresholdRule, c, scores) -> int:
    return sum(len(p) for p in apply_rule(rule, c, scores)[1])


def bisect_alpha(rule: ThresholdRule, c, scores, target_fraction: float, max_iter: int = 200,
                 negative_alpha: bool = False) -> tuple[float, int, bool]:
    """(alpha, pruned count, reached) for the wanted fraction of all neurons."""
    if not 0.0 <= target_fraction <= 1.0:
        raise ValueError(f"target fraction {target_fraction} is outside [0, 1]; give a fraction such as 0.5")
    total = sum(len(s) for s in scores)
    want = int(round(target_fraction * total))
    count = lambda a: pruned_count(rule.with_alpha(a), c, scores)  # noqa: E731
    hi = 0.05
    while count(hi) < want and hi < 1e6:
        hi *= 2
    lo = -hi if negative_alpha else 0.0
    while negative_alpha and count(lo) > want and lo > -1e6:
        lo *= 2
    n_lo, n_hi = count(lo), count(hi)
    if n_hi < want or n_lo > want:
        best = hi if abs(n_hi - want) <= abs(n_lo - want) else lo
        log.warning("target %.1f%% (%d neurons) is out of this rule's reach (%d..%d neurons for alpha in "
                    "[%g, %g]); using alpha=%g and reporting the target as not reached", 100 * target_fraction, want,
                    n_lo, n_hi, lo, hi, best)
        return float(best), count(best), False
    for _ in range(max_iter):
        if n_hi == want:
            return float(hi), n_hi, True
        if n_lo == want:
            return float(lo), n_lo, True
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        n_mid = count(mid)
        if n_mid < want:
            lo, n_lo = mid, n_mid
        else:
            hi, n_hi = mid, n_mid
    best, n = (hi, n_hi) if abs(n_hi - want) <= abs(n_lo - want) else (lo, n_lo)
    return float(best), n, abs(n - want) <= len(scores)
