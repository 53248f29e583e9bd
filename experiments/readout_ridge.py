"""Validation-split evidence for `pruning.methods.readout_ridge` (docs/PRUNING.md, "Choices"): the offline
run's plans of one method curve, compensated by `refit` with several relative ridges for the last layer (the
one fitted on the read token alone) and the pipeline's `ridge` below, each scored on validation reviews
against the dense model, as JSON lines.

    python experiments/readout_ridge.py MODEL CURVE PCTS CAL_REVIEWS RIDGES [VAL_REVIEWS]
    python experiments/readout_ridge.py minilm fluctuation-searched-refit 60,70,80 128 0.01,0.1,1,10
    python experiments/readout_ridge.py smollm2 wanda-sp-uniform-refit 50,70 64 0.01,1,10

Per ridge: accuracy and mean cross-entropy against dense, the mean squared difference of the logit margin
from the dense model's (fidelity, the finest of the three), and the paired bootstrap (4,000 resamples) of
each against the first ridge. A plan does not depend on the readout ridge, so every row of a sparsity
prunes the same neurons. Reads results/offline and data/processed/offline; never the test split.
"""
import json
import logging
import sys
import time

import numpy as np

from llm_anatomy.batching import encode_reviews
from llm_anatomy.data import read_split
from llm_anatomy.evaluate import predict_logits
from llm_anatomy.models import load_classifier, set_threads
from llm_anatomy.pruning.plan import read_plan
from llm_anatomy.pruning.refit import fit_compensation
from llm_anatomy.surgery import remove_masked


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    name, curve, ncal = sys.argv[1], sys.argv[2], int(sys.argv[4])
    pcts = [int(x) for x in sys.argv[3].split(",")]
    ridges = [float(x) for x in sys.argv[5].split(",")]
    nval = int(sys.argv[6]) if len(sys.argv) > 6 else 500
    set_threads(2)
    model, tok, meta = load_classifier(f"results/offline/{name}/finetuned")
    train, val = read_split("data/processed/offline/train.parquet"), read_split("data/processed/offline/val.parquet")
    pad, side, prec = tok.pad_token_id, meta.get("padding_side", "right"), meta.get("precision", "fp32")
    cal = encode_reviews(tok, meta, train["text"].iloc[:ncal])
    val = val.iloc[:nval]
    venc, vy = encode_reviews(tok, meta, val["text"]), val["label"].to_numpy()
    sign = 2 * vy - 1

    def outcomes(z):
        return dict(acc=((z > 0) == vy).astype(float), ce=np.logaddexp(0, -sign * z), sq=(z - dense) ** 2,
                    agree=((z > 0) == (dense > 0)).astype(float))

    dense = predict_logits(model, venc, pad, 32, prec, side)
    base = outcomes(dense)
    draws = np.random.default_rng(0).integers(0, len(vy), (4000, len(vy)))

    def interval(d):
        lo, hi = np.quantile(d[draws].mean(1), [0.025, 0.975])
        return [round(float(d.mean()), 4), round(float(lo), 4), round(float(hi), 4)]

    print(json.dumps(dict(model=name, reviews=len(vy), dense_acc=base["acc"].mean())), flush=True)
    for p in pcts:
        plan = read_plan(f"results/offline/{name}/prune/{curve}-{p}/plan.parquet")
        first = None
        for r in ridges:
            start = time.time()
            m, _ = fit_compensation(model, plan.pruned, cal, pad, side, 16, "refit", plan.info["ridge"], readout_ridge=r)
            fit_s = time.time() - start
            remove_masked(m.adapter, plan.pruned)
            got = outcomes(predict_logits(m, venc, pad, 32, prec, side))
            row = dict(pct=p, readout_ridge=r, acc=got["acc"].mean(), acc_vs_dense=interval(got["acc"] - base["acc"]),
                       ce_vs_dense=interval(got["ce"] - base["ce"]), sq_logit_diff=round(float(got["sq"].mean()), 4),
                       agree_with_dense=got["agree"].mean(), fit_s=round(fit_s, 1))
            if first is None:
                first = got
            else:
                row.update({f"{k}_vs_first": interval(got[k] - first[k]) for k in ("acc", "ce", "sq")})
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
