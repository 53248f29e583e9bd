"""Validation-split evidence for `pruning.methods.readout_ridge` (docs/EVIDENCE.md, "Choices"): the offline
run's plans of one method curve, compensated by `refit` with several relative ridges for the last layer (the
one fitted on the read token alone) and the pipeline's `ridge` below, each scored on validation reviews
against the dense model, as JSON lines.

    python experiments/readout_ridge.py MODEL CURVE PCTS CAL_REVIEWS RIDGES [VAL_REVIEWS]
    python experiments/readout_ridge.py minilm fluctuation-searched-refit 60,70,80 128 0.01,0.1,1,10
    python experiments/readout_ridge.py smollm2 wanda-sp-uniform-refit 50,70 64 0.01,1,10

What each row prints, against dense and the first ridge: `plan_fits.compare`. A plan does not depend on the
readout ridge, so every row of a sparsity prunes the same neurons. Never reads the test split.
"""
import sys

from llm_anatomy.pruning.refit import fit_compensation
from plan_fits import compare


def refit_with(readout_ridge: float):
    def fit(model, plan, cal, pad, side):
        student, _report = fit_compensation(model, plan.pruned, cal, pad, side, 16, "refit", plan.spec.ridge,
                                            readout_ridge=readout_ridge)
        return student, plan.pruned
    return fit


if __name__ == "__main__":
    ridges = [float(x) for x in sys.argv[5].split(",")]
    compare(sys.argv[1], sys.argv[2], [int(x) for x in sys.argv[3].split(",")], int(sys.argv[4]),
            int(sys.argv[6]) if len(sys.argv) > 6 else 500, [(dict(readout_ridge=r), refit_with(r)) for r in ridges])
