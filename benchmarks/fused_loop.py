"""The evaluation loop with and without the fused FFN input maps (`llm_anatomy.fused`): the same
checkpoint, reviews and precision; the unfused side is `inference_model(..., fuse=False)`.

    .venv/bin/python benchmarks/fused_loop.py results/offline/minilm/finetuned --reviews 1000 --precision bf16

Tokenises once, warms both up, then times `--repeats` alternating passes of each. Prints the
median seconds, the ratio per repeat (min, median, max), both accuracies, the paired difference
(fused minus eager) with its 95% interval and McNemar p, how many predictions differ, the largest
logit difference and the CPU.
"""
from __future__ import annotations

import json
import time

import numpy as np
import torch

from common import load, parser
from llm_anatomy import fused
from llm_anatomy.batching import encode_reviews
from llm_anatomy.device import machine_info
from llm_anatomy.evaluate import inference_model, predict_logits
from llm_anatomy.stats import paired_difference


def main():
    ap = parser(__doc__, reviews=1000, repeats=5)
    ap.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    args = ap.parse_args()
    if not fused.available():
        raise SystemExit("this torch build has no oneDNN fused linear (torch.ops.mkldnn._linear_pointwise)")

    model, tok, meta, test = load(args)
    labels = test["label"].to_numpy()
    encoded = encode_reviews(tok, meta, test["text"])
    side, pad = meta.get("padding_side", "right"), tok.pad_token_id
    runners = {"eager": inference_model(model, args.precision, fuse=False),
               "fused": inference_model(model, args.precision)}
    assert fused.is_fused(runners["fused"]) and not fused.is_fused(runners["eager"])

    def run(name):
        return predict_logits(runners[name], encoded, pad, args.batch_size, args.precision, side)

    for name in runners:  # warm-up
        run(name)
    times, logits = {n: [] for n in runners}, {}
    for r in range(args.repeats):
        for name in (list(runners) if r % 2 == 0 else list(runners)[::-1]):
            start = time.perf_counter()
            logits[name] = run(name)
            times[name].append(time.perf_counter() - start)
    right = {n: (l > 0) == labels for n, l in logits.items()}
    d = paired_difference(right["fused"], right["eager"])
    ratio = np.asarray(times["eager"]) / np.asarray(times["fused"])
    print(json.dumps(dict(
        machine=machine_info(torch.device("cpu")), reviews=len(encoded), precision=args.precision,
        repeats=args.repeats, seconds=times, median_s={n: float(np.median(t)) for n, t in times.items()},
        eager_over_fused=dict(min=float(ratio.min()), median=float(np.median(ratio)), max=float(ratio.max())),
        accuracy={n: float(r.mean()) for n, r in right.items()},
        fused_minus_eager=dict(diff=d.diff, lo=d.lo, hi=d.hi, p_mcnemar=d.p_mcnemar),
        predictions_that_differ=int(((logits["fused"] > 0) != (logits["eager"] > 0)).sum()),
        max_abs_logit_diff=float(np.abs(logits["fused"] - logits["eager"]).max())), indent=2))


if __name__ == "__main__":
    main()
