"""Validation-split evidence for the searched allocation (docs/EVIDENCE.md, "Choices"): the layer sensitivity
measured on the first S validation reviews in two ways, then uniform vs searched allocation with refit
compensation, each evaluated on held-out validation reviews (disjoint from the search), as JSON lines.

The two sensitivities, each layer pruned alone with the layers below dense:
- `bias`: the pipeline's rule `layer_sensitivity` (`sensitivity.sensitivity_table`: the pruned activations
  pinned to their calibration means);
- `refit`: the layer's kept value vectors and bias refitted by least squares to the dense FFN output on the
  calibration tokens, the compensation the method itself applies (an experiment, not in the pipeline: the
  same table with its `prune` hook refitting the layer).

    python experiments/allocation_choice.py MODEL CAL_REVIEWS SEARCH_REVIEWS CRITERION PCTS [FIRST:END]
    python experiments/allocation_choice.py minilm 128 128 fluctuation 60,70,80 128:500

FIRST:END (default 200:500) are the held-out validation reviews. Each pair of allocations is compared on
them with a paired bootstrap (4,000 resamples) of accuracy and of mean cross-entropy. Reads the offline
run's fine-tuned model and split (results/offline, data/processed/offline); never the test split.
"""
import copy
import json
import logging
import sys
from contextlib import contextmanager
from itertools import combinations

import numpy as np
import torch

from llm_anatomy.ablation import Ablator
from llm_anatomy.batching import iter_padded, sorted_batches
from llm_anatomy.data import read_split
from llm_anatomy.inference import predict_logits
from llm_anatomy.layout import Layout
from llm_anatomy.models import open_checkpoint
from llm_anatomy.pruning.allocation import allocate
from llm_anatomy.pruning.calibration import ffn_activation_stats
from llm_anatomy.pruning.compensation import LayerStats, compensate
from llm_anatomy.pruning.criteria import NeuronStats, importance
from llm_anatomy.pruning.refit import fit_compensation
from llm_anatomy.pruning.sensitivity import sensitivity_table
from llm_anatomy.scores import per_layer
from llm_anatomy.surgery import remove_masked

FRACTIONS = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
RIDGE = 1e-2


@torch.inference_mode()
def dense_ffn_stats(model, encoded, pad, side) -> list[LayerStats]:
    """Per layer, the sums of the activations and the dense FFN output over the real calibration tokens."""
    ad = model.adapter
    stats = [LayerStats(ad.ffn_width(l), ad.hidden_size) for l in range(ad.num_layers)]
    for _i, ids, mask in iter_padded(encoded, sorted_batches([len(s) for s in encoded], 16), pad, side,
                                     torch.device("cpu")):
        seen = {}
        hooks = [ad.ffn(l).output.register_forward_hook(lambda _m, a, o, l=l: seen.__setitem__(l, (a[0], o)))
                 for l in range(ad.num_layers)]
        try:
            model(ids, mask)
        finally:
            for h in hooks:
                h.remove()
        real = mask.bool()
        for l, (a, o) in seen.items():
            stats[l].add(a[real].double().numpy(), o[real].double().numpy())
    return stats


def refit_layer(model, stats: list[LayerStats]):
    """A `prune` context of `sensitivity.sensitivity_table`: the layer's kept value vectors and bias refitted by
    least squares to the dense FFN output on the calibration tokens, in place of the pruned neurons' means."""
    ad, fits = model.adapter, {}

    @contextmanager
    def prune(layer, idx):
        key = (layer, len(idx))
        if key not in fits:
            kept = np.setdiff1d(np.arange(ad.ffn_width(layer)), idx)
            values, bias = ad.value_vectors(layer).double().numpy(), ad.ffn(layer).output.bias.double().numpy()
            w, c = compensate(stats[layer], kept, values, bias, "refit", RIDGE)
            fits[key] = torch.from_numpy(kept), torch.from_numpy(w).float(), torch.from_numpy(c).float()
        k, w, c = fits[key]
        hook = ad.ffn(layer).output.register_forward_hook(lambda _m, a, _o: a[0][..., k] @ w + c)
        try:
            yield
        finally:
            hook.remove()
    return prune


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    name, ncal, nsearch, crit = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    pcts = [int(x) for x in sys.argv[5].split(",")]
    first, end = (int(x) for x in (sys.argv[6] if len(sys.argv) > 6 else "200:500").split(":"))
    if first < nsearch:
        raise SystemExit(f"held-out reviews {first}:{end} overlap the {nsearch} search reviews; start at >= {nsearch}")
    layout = Layout("offline")
    ck = open_checkpoint(layout.model(name).finetuned, threads=2)
    model, pad, side, prec = ck.model, ck.pad_id, ck.padding_side, ck.precision
    train, val = read_split(layout.split("train")), read_split(layout.split("val"))
    cal = ck.encode(train["text"].iloc[:ncal])
    held = val.iloc[first:end]
    held_enc, held_y = ck.encode(held["text"]), held["label"].to_numpy()

    def outcomes(m):
        z = predict_logits(m, held_enc, pad, 32, prec, side)
        return ((z > 0).astype(int) == held_y).astype(float), np.logaddexp(0, -(2 * held_y - 1) * z)

    dense_acc, dense_ce = outcomes(model)
    print(json.dumps(dict(model=name, reviews=len(held), dense_acc=dense_acc.mean(), dense_ce=dense_ce.mean())), flush=True)
    st = ffn_activation_stats(copy.deepcopy(model), cal, pad, side, 16, "fp32").set_index(["layer", "neuron"])
    stats = NeuronStats({n: per_layer(st[n], "ffn_stats") for n in ("mean", "var", "value_norm_sq")})
    imp = importance(crit, stats)
    work = copy.deepcopy(model).float().eval()
    work.adapter.ensure_ffn_biases()
    search = val.iloc[:nsearch]
    ablator = Ablator(work, ck.encode(search["text"]), search["label"].to_numpy(), pad, side, 16)
    ablator.means = [torch.tensor(m, dtype=torch.float32) for m in stats["mean"]]
    tables = {"searched-bias": sensitivity_table(ablator, imp, FRACTIONS, desc="sensitivity (bias)"),
              "searched-refit": sensitivity_table(ablator, imp, FRACTIONS,
                                                  refit_layer(work, dense_ffn_stats(work, cal, pad, side)),
                                                  desc="sensitivity (refit)")}
    for label, table in tables.items():
        print(label, "loss increase per (layer, fraction):")
        print(table.pivot(index="layer", columns="fraction", values="loss_increase").round(4).to_string(), flush=True)
    del ablator, work
    draws = np.random.default_rng(0).integers(0, len(held_y), (4000, len(held_y)))
    for p in pcts:
        got = {}
        for alloc in ("uniform", *tables):
            pruned = allocate(imp, p / 100, alloc.split("-")[0], tables.get(alloc))
            m, _ = fit_compensation(model, pruned, cal, pad, side, 16, "refit", RIDGE)
            remove_masked(m.adapter, pruned)
            got[alloc] = outcomes(m)
            print(json.dumps(dict(pct=p, alloc=alloc, acc=got[alloc][0].mean(), gap=got[alloc][0].mean() - dense_acc.mean(),
                                  ce_increase=got[alloc][1].mean() - dense_ce.mean(), counts=[len(x) for x in pruned])),
                  flush=True)
        for a, b in combinations(got, 2):
            for k, what in enumerate(("acc", "ce")):
                d = got[b][k] - got[a][k]
                lo, hi = np.quantile(d[draws].mean(1), [0.025, 0.975])
                print(json.dumps(dict(pct=p, diff=f"{b} - {a}", of=what, mean=d.mean(), lo=lo, hi=hi)), flush=True)


if __name__ == "__main__":
    main()
