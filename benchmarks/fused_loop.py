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

import numpy as np
import torch

from common import alternate, compare_predictions, load, parser
from llm_anatomy import fused
from llm_anatomy.batching import encode_reviews
from llm_anatomy.device import machine_info
from llm_anatomy.evaluate import inference_model, predict_logits
from llm_anatomy.pruning.timing import ratio_spread


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

    times, logits = alternate({name: (lambda r=runner: predict_logits(r, encoded, pad, args.batch_size,
                                                                      args.precision, side))
                               for name, runner in runners.items()}, args.repeats)
    same = compare_predictions(logits["fused"], logits["eager"], labels)
    print(json.dumps(dict(
        machine=machine_info(torch.device("cpu")), reviews=len(encoded), precision=args.precision,
        repeats=args.repeats, seconds=times, median_s={n: float(np.median(t)) for n, t in times.items()},
        eager_over_fused=ratio_spread(times["eager"], times["fused"]),
        accuracy=dict(zip(("fused", "eager"), same["accuracy"])), fused_minus_eager=same["difference"],
        predictions_that_differ=same["predictions_that_differ"], max_abs_logit_diff=same["max_abs_logit_diff"]),
        indent=2))


if __name__ == "__main__":
    main()
