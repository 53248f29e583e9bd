"""The harness shared by the experiments that refit the offline run's plans in different ways and compare them
on validation reviews (`readout_ridge.py`, `sequential_obs.py`; docs/PRUNING.md, "Choices").

`compare` loads the fine-tuned model, the first CAL_REVIEWS train reviews (the calibration reviews) and the
first VAL_REVIEWS validation reviews, then for every sparsity reads the curve's plan and runs each variant's
fit on it. Per variant it prints one JSON line: accuracy and mean cross-entropy against dense, the mean
squared difference of the logit margin from the dense model's (fidelity), the share of predictions that agree
with dense, the fit's wall seconds, and paired bootstrap intervals (4,000 resamples) against the sparsity's
first variant. Reads results/offline and data/processed/offline; never the test split.
"""
import json
import logging
import time
from collections.abc import Callable, Sequence

import numpy as np

from llm_anatomy.data import read_split
from llm_anatomy.inference import predict_logits
from llm_anatomy.layout import Layout
from llm_anatomy.models import open_checkpoint
from llm_anatomy.pruning.plan import Plan, read_plan
from llm_anatomy.surgery import remove_masked

# fit(dense model, plan, calibration reviews, pad id, padding side) -> (compensated float32 model, pruned sets)
Fit = Callable[..., tuple]


def compare(name: str, curve: str, pcts: Sequence[int], ncal: int, nval: int,
            variants: Sequence[tuple[dict, Fit]]) -> None:
    """Each (label, fit) of `variants` on the plans `curve`-<pct> of model `name`; `label` opens its JSON line."""
    logging.basicConfig(level=logging.WARNING)
    layout = Layout("offline")
    ck = open_checkpoint(layout.model(name).finetuned, threads=2)
    model, pad, side, prec = ck.model, ck.pad_id, ck.padding_side, ck.precision
    train, val = read_split(layout.split("train")), read_split(layout.split("val"))
    cal = ck.encode(train["text"].iloc[:ncal])
    val = val.iloc[:nval]
    venc, vy = ck.encode(val["text"]), val["label"].to_numpy()
    dense = predict_logits(model, venc, pad, 32, prec, side)
    draws = np.random.default_rng(0).integers(0, len(vy), (4000, len(vy)))

    def outcomes(z):
        return dict(acc=((z > 0) == vy).astype(float), ce=np.logaddexp(0, -(2 * vy - 1) * z), sq=(z - dense) ** 2,
                    agree=((z > 0) == (dense > 0)).astype(float))

    def interval(d):
        lo, hi = np.quantile(d[draws].mean(1), [0.025, 0.975])
        return [round(float(d.mean()), 4), round(float(lo), 4), round(float(hi), 4)]

    base = outcomes(dense)
    print(json.dumps(dict(model=name, reviews=len(vy), dense_acc=base["acc"].mean())), flush=True)
    for p in pcts:
        plan: Plan = read_plan(layout.target(name, f"{curve}-{p}").plan)
        first = None
        for label, fit in variants:
            start = time.time()
            m, pruned = fit(model, plan, cal, pad, side)
            fit_s = time.time() - start
            remove_masked(m.adapter, pruned)
            got = outcomes(predict_logits(m, venc, pad, 32, prec, side))
            row = dict(pct=p, **label, acc=got["acc"].mean(), acc_vs_dense=interval(got["acc"] - base["acc"]),
                       ce_vs_dense=interval(got["ce"] - base["ce"]), sq_logit_diff=round(float(got["sq"].mean()), 4),
                       agree_with_dense=got["agree"].mean(), fit_s=round(fit_s, 1))
            if first is None:
                first = got
            else:
                row.update({f"{k}_vs_first": interval(got[k] - first[k]) for k in ("acc", "ce", "sq")})
            print(json.dumps(row), flush=True)
