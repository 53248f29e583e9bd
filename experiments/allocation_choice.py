"""Validation-split evidence for the searched allocation (docs/EVIDENCE.md, "Choices"): the layer sensitivity
measured on the first S validation reviews in two ways, then uniform vs searched allocation with refit
compensation, each evaluated on held-out validation reviews (disjoint from the search), as JSON lines.

The two sensitivities, each layer pruned alone with the layers below dense:
- `bias`: the pipeline's rule `layer_sensitivity` (the pruned activations pinned to their calibration means);
- `refit`: the layer's kept value vectors and bias refitted by least squares to the dense FFN output on the
  calibration tokens, the compensation the method itself applies (an experiment, not in the pipeline).

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
from itertools import combinations

import numpy as np
import pandas as pd
import torch

from llm_anatomy.ablation import Ablator, margin_of
from llm_anatomy.batching import encode_reviews, iter_padded, sorted_batches
from llm_anatomy.data import read_split
from llm_anatomy.evaluate import predict_logits
from llm_anatomy.models import load_classifier, set_threads
from llm_anatomy.pruning.allocation import allocate, lowest
from llm_anatomy.pruning.calibration import ffn_activation_stats
from llm_anatomy.pruning.compensation import LayerStats, compensate
from llm_anatomy.pruning.criteria import NeuronStats, importance
from llm_anatomy.pruning.refit import fit_compensation
from llm_anatomy.pruning.sensitivity import layer_sensitivity
from llm_anatomy.replay import replay_below
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


@torch.inference_mode()
def refit_sensitivity(ablator: Ablator, imp, stats: list[LayerStats]) -> pd.DataFrame:
    """layer_sensitivity's table, with each pruned layer refitted instead of mean-pinned."""
    model, ad = ablator.model, ablator.model.adapter
    dense = sum(float(torch.nn.functional.softplus(-b.margin).sum()) for b in ablator.batches)
    rows = []
    for l in range(ad.num_layers):
        rows.append(dict(layer=l, fraction=0.0, pruned=0, loss_increase=0.0))
        values, bias = ad.value_vectors(l).double().numpy(), ad.ffn(l).output.bias.double().numpy()
        for f in FRACTIONS:
            idx = lowest(imp[l], int(round(f * len(imp[l]))))
            kept = np.setdiff1d(np.arange(len(imp[l])), idx)
            w, c = (torch.from_numpy(x).float() for x in compensate(stats[l], kept, values, bias, "refit", RIDGE))
            k = torch.from_numpy(kept)
            hook = ad.ffn(l).output.register_forward_hook(lambda _m, a, _o: a[0][..., k] @ w + c)
            total = 0.0
            try:
                for b in ablator.batches:
                    with replay_below(model, l, b.block_outputs):
                        total += float(torch.nn.functional.softplus(-margin_of(model, b)).sum())
            finally:
                hook.remove()
            rows.append(dict(layer=l, fraction=f, pruned=len(idx), loss_increase=(total - dense) / ablator.n_reviews))
    return pd.DataFrame(rows)


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    name, ncal, nsearch, crit = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    pcts = [int(x) for x in sys.argv[5].split(",")]
    first, end = (int(x) for x in (sys.argv[6] if len(sys.argv) > 6 else "200:500").split(":"))
    if first < nsearch:
        raise SystemExit(f"held-out reviews {first}:{end} overlap the {nsearch} search reviews; start at >= {nsearch}")
    set_threads(2)
    model, tok, meta = load_classifier(f"results/offline/{name}/finetuned")
    train, val = read_split("data/processed/offline/train.parquet"), read_split("data/processed/offline/val.parquet")
    pad, side, prec = tok.pad_token_id, meta.get("padding_side", "right"), meta.get("precision", "fp32")
    cal = encode_reviews(tok, meta, train["text"].iloc[:ncal])
    held = val.iloc[first:end]
    held_enc, held_y = encode_reviews(tok, meta, held["text"]), held["label"].to_numpy()

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
    ablator = Ablator(work, encode_reviews(tok, meta, search["text"]), search["label"].to_numpy(), pad, side, 16)
    ablator.means = [torch.tensor(m, dtype=torch.float32) for m in stats["mean"]]
    tables = {"searched-bias": layer_sensitivity(ablator, imp, FRACTIONS),
              "searched-refit": refit_sensitivity(ablator, imp, dense_ffn_stats(work, cal, pad, side))}
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
