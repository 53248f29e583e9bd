"""Does a kept FFN width that is a multiple of 8, 16 or 64 run faster than an odd one next to it?

    .venv/bin/python benchmarks/kept_widths.py results/offline/minilm/finetuned --widths 845,848,832,896 --reviews 500

Removes a random set of FFN neurons from every layer so that each keeps exactly `w` (one model per
width), then times the models in alternating, rotating order in one process (warm-up first, median
of `--repeats`). Prints per width the median seconds, the FFN multiply-adds and the seconds per
GFFN-multiply-add relative to the first width: if a rounder width is slower per unit of work than
the odd one, the kernels do not favour it. The CPU is printed with the result.
"""
from __future__ import annotations

import copy
import json

import numpy as np
import torch

from common import load, parser
from llm_anatomy.batching import encode_reviews
from llm_anatomy.device import machine_info
from llm_anatomy.inference import inference_model
from llm_anatomy.costs import forward_macs
from llm_anatomy.pruning.timing import time_variants
from llm_anatomy.surgery import remove_masked


def main():
    ap = parser(__doc__, reviews=500, repeats=5)
    ap.add_argument("--widths", default="845,848,832,896")
    args = ap.parse_args()

    model, tok, meta, reviews = load(args)
    encoded = encode_reviews(tok, meta, reviews["text"])
    lengths = [len(e) for e in encoded]
    precision = meta.get("precision", "fp32")
    rng = np.random.default_rng(0)
    variants, macs = {}, {}
    for w in (int(x) for x in args.widths.split(",")):
        pruned = copy.deepcopy(model)
        remove_masked(pruned.adapter, [np.sort(rng.permutation(n)[: n - w]) for n in model.adapter.ffn_widths()])
        variants[str(w)] = inference_model(pruned, precision)
        macs[str(w)] = forward_macs(pruned.adapter, lengths)
    times = time_variants(variants, encoded, tok.pad_token_id, args.batch_size, precision,
                          meta.get("padding_side", "right"), args.repeats)
    median = {w: float(np.median(t)) for w, t in times.items()}
    first = next(iter(median))
    per_work = {w: median[w] / macs[w] for w in median}
    print(json.dumps(dict(machine=machine_info(torch.device("cpu")), reviews=len(encoded), precision=precision,
                          seconds=times, median_s=median, macs=macs,
                          time_per_mac_vs_first={w: per_work[w] / per_work[first] for w in median}), indent=2))


if __name__ == "__main__":
    main()
