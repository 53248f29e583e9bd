"""Validation-split evidence for the searched allocation (docs/PRUNING.md, "Choices"): the layer sensitivity
measured on the first S validation reviews, then searched vs uniform allocation with refit compensation,
each evaluated on validation reviews 200-499 (disjoint from the search when S <= 200), as JSON lines.

    python experiments/allocation_choice.py MODEL CAL_REVIEWS SEARCH_REVIEWS CRITERION PCTS
    python experiments/allocation_choice.py minilm 128 128 fluctuation 70,80

Reads the offline run's fine-tuned model and split (results/offline, data/processed/offline); never the
test split.
"""
import copy
import json
import logging
import sys

import torch

from llm_anatomy.ablation import Ablator
from llm_anatomy.batching import encode_reviews
from llm_anatomy.data import read_split
from llm_anatomy.evaluate import predict_logits
from llm_anatomy.models import load_classifier, set_threads
from llm_anatomy.pruning.allocation import allocate
from llm_anatomy.pruning.sensitivity import layer_sensitivity
from llm_anatomy.pruning.calibration import ffn_activation_stats
from llm_anatomy.pruning.criteria import NeuronStats, importance
from llm_anatomy.pruning.refit import fit_compensation
from llm_anatomy.scores import per_layer
from llm_anatomy.surgery import remove_masked

logging.basicConfig(level=logging.WARNING)
name, ncal, nsearch, crit = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
pcts = [int(x) for x in sys.argv[5].split(",")]
set_threads(2)
model, tok, meta = load_classifier(f"results/offline/{name}/finetuned")
train, val = read_split("data/processed/offline/train.parquet"), read_split("data/processed/offline/val.parquet")
pad, side, prec = tok.pad_token_id, meta.get("padding_side", "right"), meta.get("precision", "fp32")
cal = encode_reviews(tok, meta, train["text"].iloc[:ncal])
held = val.iloc[200:500]
held_enc, held_y = encode_reviews(tok, meta, held["text"]), held["label"].to_numpy()


def acc(m):
    return float(((predict_logits(m, held_enc, pad, 32, prec, side) > 0).astype(int) == held_y).mean())


dense_acc = acc(model)
print("dense", dense_acc, flush=True)
st = ffn_activation_stats(copy.deepcopy(model), cal, pad, side, 16, "fp32").set_index(["layer", "neuron"])
stats = NeuronStats({n: per_layer(st[n], "ffn_stats") for n in ("mean", "var", "value_norm_sq")})
imp = importance(crit, stats)
search = val.iloc[:nsearch]
ablator = Ablator(copy.deepcopy(model), encode_reviews(tok, meta, search["text"]), search["label"].to_numpy(), pad,
                  side, 16)
ablator.means = [torch.tensor(m, dtype=torch.float32) for m in stats["mean"]]
sensitivity = layer_sensitivity(ablator, imp, [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9])
del ablator
for p in pcts:
    for alloc in ("searched", "uniform"):
        pruned = allocate(imp, p / 100, alloc, sensitivity)
        m, _ = fit_compensation(model, pruned, cal, pad, side, 16, "refit", 1e-2)
        remove_masked(m.adapter, pruned)
        a = acc(m)
        print(json.dumps(dict(model=name, crit=crit, pct=p, alloc=alloc, reviews=len(held), acc=a,
                              gap=round(a - dense_acc, 4), counts=[len(x) for x in pruned])), flush=True)
