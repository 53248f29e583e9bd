"""The evaluation loop with and without one of its parts, on the same checkpoint, reviews and
precision (docs/SPEED.md):

- `--without fused`: the eager FFN input maps (`inference_model(..., fuse=False)`) instead of the
  fused ones (`llm_anatomy.fused`);
- `--without readout`: the last block run for every token (`inference_model(..., last_token=False)`)
  instead of the classifier's read token only (`llm_anatomy.readout`).

    .venv/bin/python benchmarks/loop_parts.py results/offline/minilm/finetuned --without fused --reviews 1000
    .venv/bin/python benchmarks/loop_parts.py results/offline/minilm/finetuned --without readout --reviews 1000

Tokenises once, warms both up, then times `--repeats` alternating passes of each. Prints the median
seconds, the ratio per repeat (without / with; min, median, max), the multiply-add ratio of the two
(`costs.forward_macs`), both accuracies, the paired difference (with minus without) with its
95% interval and McNemar p, how many predictions differ, the largest logit difference and the CPU.
"""
from __future__ import annotations

import json

import numpy as np
import torch

from common import alternate, compare_predictions, load, parser
from llm_anatomy import fused, readout
from llm_anatomy.batching import encode_reviews
from llm_anatomy.device import machine_info
from llm_anatomy.inference import inference_model, predict_logits
from llm_anatomy.costs import forward_macs
from llm_anatomy.pruning.timing import ratio_spread

PARTS = {"fused": (dict(fuse=False), fused.is_fused), "readout": (dict(last_token=False), readout.is_installed)}


def main():
    ap = parser(__doc__, reviews=1000, repeats=5)
    ap.add_argument("--without", choices=sorted(PARTS), required=True)
    ap.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    args = ap.parse_args()
    if args.without == "fused" and not fused.available():
        raise SystemExit("this torch build has no oneDNN fused linear (torch.ops.mkldnn._linear_pointwise)")

    model, tok, meta, test = load(args)
    labels = test["label"].to_numpy()
    encoded = encode_reviews(tok, meta, test["text"])
    side, pad = meta.get("padding_side", "right"), tok.pad_token_id
    switch_off, has_part = PARTS[args.without]
    runners = {"without": inference_model(model, args.precision, **switch_off),
               "with": inference_model(model, args.precision)}
    assert has_part(runners["with"]) and not has_part(runners["without"])

    times, logits = alternate({name: (lambda r=runner: predict_logits(r, encoded, pad, args.batch_size,
                                                                      args.precision, side))
                               for name, runner in runners.items()}, args.repeats)
    same = compare_predictions(logits["with"], logits["without"], labels)
    lengths = [len(e) for e in encoded]
    every_token = args.without == "readout"
    print(json.dumps(dict(
        machine=machine_info(torch.device("cpu")), part=args.without, reviews=len(encoded), precision=args.precision,
        repeats=args.repeats, seconds=times, median_s={n: float(np.median(t)) for n, t in times.items()},
        without_over_with=ratio_spread(times["without"], times["with"]),
        macs_ratio=forward_macs(model.adapter, lengths, readout=not every_token) / forward_macs(model.adapter, lengths),
        accuracy=dict(zip(("with", "without"), same["accuracy"])), with_minus_without=same["difference"],
        predictions_that_differ=same["predictions_that_differ"], max_abs_logit_diff=same["max_abs_logit_diff"]),
        indent=2))


if __name__ == "__main__":
    main()
