"""Side-by-side speed of a dense classifier and its physically pruned copies, against the multiply-add bound.

    .venv/bin/python benchmarks/prune_speed.py results/offline/minilm/finetuned --fractions 0.3,0.5,0.7,0.8 --reviews 1000
    .venv/bin/python benchmarks/prune_speed.py results/offline/minilm/finetuned --fractions "" \
        --folders results/offline/minilm/speed/*-estimated

Removes `fraction` of every layer's FFN neurons (the lowest |score| when --neuron-scores is given,
else at random; --zeroed adds the zeroed copy, same shapes, for each fraction), then times dense and
every pruned model in alternating, rotating order in one process (a warm-up pass each, `--repeats`
rounds), at one batch size, thread count and precision (the checkpoint's: bf16 weights stored once).
`--eager` and `--every-token` time the loop without its fused FFN input maps or without its
read-token-only last block (docs/SPEED.md). Prints, per model, the median seconds, the speedup with
its per-repeat spread, the multiply-add bound (dense / pruned multiply-adds over these reviews, as the
loop runs them: `costs.forward_macs`) and the share of the bound reached,
(speedup - 1) / (bound - 1), with the CPU it ran on. `--folders` times saved pruned classifier folders of this
checkpoint too (heads and FFN widths as saved; e.g. experiments/speed_pruning.py --save), each with the validation
row its pruning.json holds, so measured speed and validated accuracy sit in one table.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import torch

from common import load, parser
from llm_anatomy.batching import encode_reviews
from llm_anatomy.device import machine_info
from llm_anatomy.inference import inference_model
from llm_anatomy.costs import forward_macs
from llm_anatomy.io import read_json
from llm_anatomy.models import load_classifier
from llm_anatomy.pruning.timing import ratio_spread, time_variants
from llm_anatomy.surgery import remove_masked, zero_masked


def main():
    ap = parser(__doc__, reviews=1000, repeats=5)
    ap.add_argument("--fractions", default="0.5", help="comma-separated shares of each layer's FFN neurons to remove")
    ap.add_argument("--folders", nargs="*", default=[], help="pruned classifier folders of this checkpoint to time too")
    ap.add_argument("--precision", choices=["bf16", "fp32"], default=None, help="default: the checkpoint's")
    ap.add_argument("--neuron-scores", default=None)
    ap.add_argument("--zeroed", action="store_true", help="also time the zeroed copy of each fraction")
    ap.add_argument("--multiple-of", type=int, default=1, help="round each layer's kept width up to a multiple")
    ap.add_argument("--eager", action="store_true",
                    help="the eager FFN modules (inference_model(fuse=False)), not the fused loop")
    ap.add_argument("--every-token", action="store_true",
                    help="the last block for every token (inference_model(last_token=False)), bound to match")
    args = ap.parse_args()

    model, tok, meta, reviews = load(args)
    encoded = encode_reviews(tok, meta, reviews["text"])
    lengths = [len(e) for e in encoded]
    precision = args.precision or meta.get("precision", "fp32")
    run = dict(fuse=not args.eager, last_token=not args.every_token)
    if args.neuron_scores:
        from llm_anatomy.scores import mean_neuron_scores
        order = [np.argsort(np.abs(s)) for s in mean_neuron_scores(args.neuron_scores)]
    else:
        rng = np.random.default_rng(0)
        order = [rng.permutation(w) for w in model.adapter.ffn_widths()]
    variants = {"dense": inference_model(model, precision, **run)}
    macs = {"dense": forward_macs(model.adapter, lengths, readout=run["last_token"])}
    validation = {}
    folders = [Path(f) for f in args.folders]
    names = [f.name for f in folders]
    for folder in folders:
        # a folder is named by its path when another one shares its name (they would overwrite each other's row)
        name = str(folder) if names.count(folder.name) > 1 else folder.name
        pruned_model, _tok, _meta = load_classifier(folder)
        variants[name] = inference_model(pruned_model, precision, **run)
        macs[name] = forward_macs(pruned_model.adapter, lengths, readout=run["last_token"])
        info = folder / "pruning.json"
        validation[name] = read_json(info).get("validation") if info.exists() else None
    for fraction in (float(f) for f in args.fractions.split(",") if f):
        pruned = []
        for w, o in zip(model.adapter.ffn_widths(), order):
            keep = w - int(round(fraction * w))
            keep = min(w, -(-keep // args.multiple_of) * args.multiple_of)
            pruned.append(np.sort(o[: w - keep]))
        removed = copy.deepcopy(model)
        remove_masked(removed.adapter, pruned)
        name = f"removed-{100 * fraction:g}"
        variants[name] = inference_model(removed, precision, **run)
        macs[name] = forward_macs(removed.adapter, lengths, readout=run["last_token"])
        if args.zeroed:
            zeroed = copy.deepcopy(model)
            zero_masked(zeroed.adapter, pruned)
            variants[f"zeroed-{100 * fraction:g}"] = inference_model(zeroed, precision, **run)
            macs[f"zeroed-{100 * fraction:g}"] = macs["dense"]
    times = time_variants(variants, encoded, tok.pad_token_id, args.batch_size, precision,
                          meta.get("padding_side", "right"), args.repeats)
    median = {name: float(np.median(t)) for name, t in times.items()}
    rows = {}
    for name in median:
        bound = macs["dense"] / macs[name]
        speedup = median["dense"] / median[name]
        rows[name] = dict(median_s=median[name], speedup=speedup, spread=ratio_spread(times["dense"], times[name]),
                          bound=bound, share_of_bound=(speedup - 1) / (bound - 1) if bound > 1 else None,
                          widths=variants[name].adapter.ffn_widths(), heads=variants[name].adapter.head_counts(),
                          validation=validation.get(name))
    print(json.dumps(dict(machine=machine_info(torch.device("cpu")), checkpoint=args.checkpoint, reviews=len(encoded),
                          batch_size=args.batch_size, precision=precision, fused=not args.eager,
                          last_token_only=not args.every_token, repeats=args.repeats, multiple_of=args.multiple_of,
                          seconds=times, models=rows), indent=2))


if __name__ == "__main__":
    main()
