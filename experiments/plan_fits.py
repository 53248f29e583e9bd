"""The harness shared by the experiments that refit pruned models in different ways and compare them on held-out
reviews (`readout_ridge.py`, `sequential_obs.py`, `decoder_levers.py`; docs/EVIDENCE.md, "Choices").

`Scorer` holds the dense model's logits on the evaluation reviews and turns a pruned model's logits into one
JSON-ready row: accuracy and mean cross-entropy against dense, the mean squared difference of the logit margin
from the dense model's (fidelity), the share of predictions that agree with dense, and paired bootstrap
intervals (4,000 resamples) against dense and against a reference variant. `compare` loads the fine-tuned
model, the first CAL_REVIEWS train reviews (the calibration reviews) and the first VAL_REVIEWS validation
reviews, then for every sparsity reads the curve's plan and runs each variant's fit on it. Reads results/offline
and data/processed/offline; never the test split.
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


class Scorer:
    """Paired comparisons of pruned models' logits with the dense model's on the same labelled reviews."""

    def __init__(self, dense_logits: np.ndarray, labels: np.ndarray, resamples: int = 4000):
        self.labels = np.asarray(labels)
        self.dense = np.asarray(dense_logits, dtype=np.float64)
        self.draws = np.random.default_rng(0).integers(0, len(self.labels), (resamples, len(self.labels)))
        self.base = self.outcomes(self.dense)

    def outcomes(self, z: np.ndarray) -> dict[str, np.ndarray]:
        """Per review: correct (acc), cross-entropy (ce), squared logit difference from dense (sq), agreement."""
        y = self.labels
        return dict(acc=((z > 0) == y).astype(float), ce=np.logaddexp(0, -(2 * y - 1) * z), sq=(z - self.dense) ** 2,
                    agree=((z > 0) == (self.dense > 0)).astype(float))

    def interval(self, d: np.ndarray) -> list[float]:
        """[mean, 2.5%, 97.5%] of the per-review differences `d`, paired bootstrap over reviews."""
        lo, hi = np.quantile(d[self.draws].mean(1), [0.025, 0.975])
        return [round(float(d.mean()), 4), round(float(lo), 4), round(float(hi), 4)]

    def row(self, z: np.ndarray, reference: dict | None = None) -> dict:
        """The JSON fields of one pruned model's logits `z`; against `reference` (another variant's outcomes) too."""
        got = self.outcomes(z)
        b = self.base
        row = dict(acc=got["acc"].mean(), acc_vs_dense=self.interval(got["acc"] - b["acc"]),
                   ce_vs_dense=self.interval(got["ce"] - b["ce"]), sq_logit_diff=round(float(got["sq"].mean()), 4),
                   agree_with_dense=got["agree"].mean())
        if reference is not None:
            row.update({f"{k}_vs_first": self.interval(got[k] - reference[k]) for k in ("acc", "ce", "sq")})
        return row


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
    venc = ck.encode(val["text"])
    scorer = Scorer(predict_logits(model, venc, pad, 32, prec, side), val["label"].to_numpy())
    print(json.dumps(dict(model=name, reviews=len(venc), dense_acc=scorer.base["acc"].mean())), flush=True)
    for p in pcts:
        plan: Plan = read_plan(layout.target(name, f"{curve}-{p}").plan)
        first = None
        for label, fit in variants:
            start = time.time()
            m, pruned = fit(model, plan, cal, pad, side)
            fit_s = time.time() - start
            remove_masked(m.adapter, pruned)
            z = predict_logits(m, venc, pad, 32, prec, side)
            print(json.dumps(dict(pct=p, **label, **scorer.row(z, first), fit_s=round(fit_s, 1))), flush=True)
            if first is None:
                first = scorer.outcomes(z)
