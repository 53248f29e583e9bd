"""Validation-split evidence against choosing the pruned neurons on the compensated student (docs/EVIDENCE.md,
"Choices"; not adopted). The pipeline fixes every layer's pruned set in the plan, from the dense model's
statistics, and then fits the compensation layer by layer. Here each layer's set is chosen during that
pass instead: with the layers below already pruned and refitted, the greedy optimal-brain-surgeon order
(`pruning.obs.obs_order`) is run on the student's activations against the drift-aware target, starting
from the full least-squares fit, and the plan's per-layer count of the lowest is pruned (ZipLM/SlimGPT's
sequential layer-wise order). Variants, each as `select:readout_ridge`: `fixed` (the plan's neurons, the
pipeline's `refit`) or `obs`; the token-level ridge is the plan's.

    python experiments/sequential_obs.py MODEL CURVE PCTS CAL_REVIEWS VARIANTS [VAL_REVIEWS]
    python experiments/sequential_obs.py minilm fluctuation-searched-refit 60,70,80 128 fixed:10,obs:10
    python experiments/sequential_obs.py smollm2 wanda-sp-uniform-refit 50 64 fixed:10,obs:10

The pass is `refit.fit_compensation`'s, with its `select` hook choosing each layer's neurons. What each row
prints, against dense and the first variant: `plan_fits.compare`. Never reads the test split.
"""
import sys

import numpy as np

from llm_anatomy.pruning.compensation import relative_ridge
from llm_anatomy.pruning.obs import obs_order
from llm_anatomy.pruning.refit import fit_compensation
from plan_fits import compare


def obs_select(_layer, stats, values, ridge, count):
    """The layer's `count` first neurons in the greedy OBS order on the student's sums, starting from the full
    least-squares fit (a `select` hook of `refit.fit_compensation`)."""
    if not count:
        return []
    width = len(values)
    _ma, _my, g, cross = stats.centred(np.arange(width))
    lam = relative_ridge(g, ridge)
    full = np.linalg.solve(g + lam * np.eye(width), cross + lam * values)
    rank, _delta = obs_order(full, g, ridge)
    return np.argsort(rank, kind="stable")[:count]


def fit_by(select: str, readout_ridge: float):
    def fit(model, plan, cal, pad, side):
        student, report = fit_compensation(model, plan.pruned, cal, pad, side, 16, "refit", plan.spec.ridge,
                                           readout_ridge, select=obs_select if select == "obs" else None)
        return student, [r["pruned"] for r in report] if select == "obs" else plan.pruned
    return fit


if __name__ == "__main__":
    variants = [(v.split(":")[0], float(v.split(":")[1])) for v in sys.argv[5].split(",")]
    compare(sys.argv[1], sys.argv[2], [int(x) for x in sys.argv[3].split(",")], int(sys.argv[4]),
            int(sys.argv[6]) if len(sys.argv) > 6 else 500,
            [(dict(select=sel, readout_ridge=rr), fit_by(sel, rr)) for sel, rr in variants])
