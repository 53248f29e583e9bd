"""Side-by-side speed of a dense classifier, its zeroed copy and its physically pruned copy.

    .venv/bin/python benchmarks/prune_speed.py results/offline/minilm/finetuned --fraction 0.5 --reviews 1000

Prunes `fraction` of each layer's FFN neurons (the lowest |score| when --neuron-scores is given,
else at random), then times the three models alternately in one process (warm-up first,
median of --repeats), at a fixed batch size, thread count and precision. Prints the ratios, their
spread over repeats, and the CPU they ran on.
"""
from __future__ import annotations

import argparse
import copy

import numpy as np
import torch

from llm_anatomy.batching import encode_reviews
from llm_anatomy.data import read_split
from llm_anatomy.models import load_classifier, set_threads
from llm_anatomy.device import machine_info
from llm_anatomy.evaluate import inference_model
from llm_anatomy.pruning.timing import ratio_spread, time_variants
from llm_anatomy.surgery import remove_masked, zero_masked


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("--test", default="data/processed/offline/test.parquet")
    ap.add_argument("--fraction", type=float, default=0.5)
    ap.add_argument("--reviews", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--precision", choices=["bf16", "fp32"], default=None, help="default: the checkpoint's")
    ap.add_argument("--neuron-scores", default=None)
    ap.add_argument("--multiple-of", type=int, default=1, help="round each layer's kept width up to a multiple")
    args = ap.parse_args()

    set_threads(args.threads)
    model, tok, meta = load_classifier(args.checkpoint)
    test = read_split(args.test).iloc[: args.reviews]
    encoded = encode_reviews(tok, meta, test["text"])
    rng = np.random.default_rng(0)
    if args.neuron_scores:
        from llm_anatomy.scores import mean_neuron_scores
        order = [np.argsort(np.abs(s)) for s in mean_neuron_scores(args.neuron_scores)]
    else:
        order = [rng.permutation(w) for w in model.adapter.ffn_widths()]
    pruned = []
    for w, o in zip(model.adapter.ffn_widths(), order):
        keep = w - int(round(args.fraction * w))
        keep = min(w, -(-keep // args.multiple_of) * args.multiple_of)
        pruned.append(np.sort(o[: w - keep]))
    zeroed, removed = copy.deepcopy(model), copy.deepcopy(model)
    zero_masked(zeroed.adapter, pruned)
    remove_masked(removed.adapter, pruned)
    precision = args.precision or meta.get("precision", "fp32")
    variants = {n: inference_model(m, precision) for n, m in (("dense", model), ("zeroed", zeroed), ("removed", removed))}
    times = time_variants(variants, encoded, tok.pad_token_id,
                          args.batch_size, precision, meta.get("padding_side", "right"), args.repeats)
    med = {name: float(np.median(t)) for name, t in times.items()}
    machine = machine_info(torch.device("cpu"))
    print(f"{len(encoded)} reviews, batch {args.batch_size}, {torch.get_num_threads()} threads, {precision}, "
          f"{machine['cpu']} ({' '.join(machine['cpu_features'])}), widths {removed.adapter.ffn_widths()}")
    for name in med:
        spread = ratio_spread(times["dense"], times[name])
        print(f"{name:8s} median {med[name]:.2f}s  runs {[round(t, 2) for t in times[name]]}  "
              f"speedup {med['dense'] / med[name]:.3f}x (per repeat {spread['min']:.3f}-{spread['max']:.3f}x)")


if __name__ == "__main__":
    main()
