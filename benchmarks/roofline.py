"""This machine's roofline at a classifier's linear shapes (`llm_anatomy.roofline`), and how close the
evaluation loop comes to it.

    .venv/bin/python benchmarks/roofline.py results/offline/minilm/finetuned --reviews 1000 --threads 2

Measures the attainable rate of the backbone's linear maps in fp32 and bf16 (rows = batch x the
reviews' mean length), then times `--repeats` evaluation passes over the first `--reviews` test
reviews at each precision (tokenised once, outside the clock) and prints, per precision, the best
pass, its multiply-adds and its fraction of the roofline, with the CPU it ran on. One JSON object.
"""
from __future__ import annotations

import json
import time

import numpy as np

from common import load, parser
from llm_anatomy import roofline
from llm_anatomy.batching import encode_reviews
from llm_anatomy.inference import inference_model, predict_logits
from llm_anatomy.costs import forward_macs


def main():
    ap = parser(__doc__, reviews=1000, repeats=3)
    ap.add_argument("--precisions", default="bf16,fp32")
    args = ap.parse_args()

    model, tok, meta, reviews = load(args)
    encoded = encode_reviews(tok, meta, reviews["text"])
    lengths = [len(e) for e in encoded]
    macs = forward_macs(model.adapter, lengths)
    rows = args.batch_size * round(float(np.mean(lengths)))
    side = meta.get("padding_side", "right")
    out = dict(reviews=len(encoded), batch_size=args.batch_size, macs=macs, precisions={})
    for precision in args.precisions.split(","):
        limit = roofline.measure(model.adapter, precision, rows)
        runner = inference_model(model, precision)
        predict_logits(runner, encoded[: args.batch_size], tok.pad_token_id, args.batch_size, precision, side)
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            predict_logits(runner, encoded, tok.pad_token_id, args.batch_size, precision, side)
            times.append(time.perf_counter() - start)
        out["machine"] = limit.pop("machine")
        out["precisions"][precision] = dict(
            roofline=limit, seconds=[round(t, 3) for t in times], best_s=min(times),
            achieved_gflops=round(2 * macs / min(times) / 1e9, 1),
            roofline_fraction=round(roofline.fraction(macs, min(times), limit["attainable_gflops"]), 3))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
