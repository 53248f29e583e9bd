"""Validation-split evidence behind the offline methods (docs/EVIDENCE.md, "Choices"): criteria x
compensation x allocation at given sparsities, each pruned model's accuracy on the first N validation
reviews, printed as JSON lines.

    python experiments/method_choice.py MODEL CAL_REVIEWS VAL_REVIEWS PCTS CRITERIA COMPENSATIONS [ALLOCATIONS]
    python experiments/method_choice.py minilm 128 500 70,80 fluctuation,fisher none,bias,refit
    RIDGE=0.01 python experiments/method_choice.py smollm2 64 300 50,70 wanda-sp refit

Reads the offline run's fine-tuned model and data split (results/offline, data/processed/offline), never
the test split. `bias` here is the drift-aware least-squares bias of `refit.fit_compensation`, not
FLAP's mean fold; `obs` first computes the removal order on the calibration reviews.
"""
import copy
import json
import logging
import os
import sys
import time

from llm_anatomy.data import read_split
from llm_anatomy.inference import predict_logits
from llm_anatomy.layout import Layout
from llm_anatomy.models import open_checkpoint
from llm_anatomy.pruning.allocation import allocate
from llm_anatomy.pruning.calibration import ffn_activation_stats
from llm_anatomy.pruning.criteria import NeuronStats, importance
from llm_anatomy.pruning.gradients import gradient_table
from llm_anatomy.pruning.obs import obs_table
from llm_anatomy.pruning.refit import fit_compensation
from llm_anatomy.scores import per_layer
from llm_anatomy.surgery import remove_masked

logging.basicConfig(level=logging.WARNING)
name, ncal, nval = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
pcts = [int(x) for x in sys.argv[4].split(",")]
crits, comps = sys.argv[5].split(","), sys.argv[6].split(",")
allocs = sys.argv[7].split(",") if len(sys.argv) > 7 else ["uniform"]
ridge = float(os.environ.get("RIDGE", "0.01"))
layout = Layout("offline")
ck = open_checkpoint(layout.model(name).finetuned, threads=2)
model, pad, side, prec = ck.model, ck.pad_id, ck.padding_side, ck.precision
train, val = read_split(layout.split("train")), read_split(layout.split("val"))
cal = ck.encode(train["text"].iloc[:ncal])
cal_y = train["label"].iloc[:ncal].to_numpy()
v = val.iloc[:nval]
venc, vy = ck.encode(v["text"]), v["label"].to_numpy()


def acc(m):
    return float(((predict_logits(m, venc, pad, 32, prec, side) > 0).astype(int) == vy).mean())


dense_acc = acc(model)
print("dense", dense_acc, flush=True)
st = ffn_activation_stats(copy.deepcopy(model), cal, pad, side, 16, "fp32").set_index(["layer", "neuron"])
cols = {n: per_layer(st[n], "ffn_stats") for n in ("mean", "var", "mean_abs", "value_norm_sq", "in_norm_sq")}
if {"fisher", "taylor"} & set(crits):
    g = gradient_table(copy.deepcopy(model), cal, cal_y, pad, side, 16).set_index(["layer", "neuron"])
    cols.update({n: per_layer(g[n].astype(float), "mask_gradients") for n in ("grad_sum", "grad_sq", "batches")})
if "obs" in crits:
    ob = obs_table(copy.deepcopy(model), cal, pad, side, 16, ridge).set_index(["layer", "neuron"])
    cols["obs_rank"] = per_layer(ob["obs_rank"], "obs_scores")
stats = NeuronStats(cols)
for alloc in allocs:
    for c in crits:
        scores = importance(c, stats)
        for p in pcts:
            pruned = allocate(scores, p / 100, alloc)
            for comp in comps:
                start = time.time()
                if comp == "none":
                    m = copy.deepcopy(model).float()
                else:
                    m, _ = fit_compensation(model, pruned, cal, pad, side, 16, comp, ridge)
                fit_s = time.time() - start
                remove_masked(m.adapter, pruned)
                a = acc(m)
                print(json.dumps(dict(model=name, alloc=alloc, crit=c, pct=p, comp=comp, reviews=nval, acc=a,
                                      gap=round(a - dense_acc, 4), fit_s=round(fit_s, 1))), flush=True)
