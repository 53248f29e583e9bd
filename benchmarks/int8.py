"""Dynamic int8 quantisation (`torch.ao.quantization.quantize_dynamic`) of a pruned model's linear maps,
against the same pruned model as the loop runs it (bf16 weights, fused FFN input maps, read-token-only
last block): speed side by side and accuracy paired on the same reviews.

    .venv/bin/python benchmarks/int8.py results/offline/minilm/finetuned \\
        --plan results/offline/minilm/prune/flap-50/plan.parquet --reviews 1000 --repeats 5

The plan is applied as the pipeline's materialise step applies it (`materialise.pruned_copy`; a fitted
compensation is fitted on `--calibration-reviews` train reviews). Without `--plan` the dense model is
compared. The int8 side quantises every `nn.Linear` of the backbone (weights per tensor, activations per
batch, fbgemm/oneDNN kernels in float32 around them) and keeps the read-token-only last block; it has no
fused maps (oneDNN's fused kernel takes float weights). GPT-2's Conv1D maps are not `nn.Linear` and stay
float32. Prints the median seconds, the bf16 / int8 ratio per repeat, both accuracies, the paired
difference (int8 minus bf16) with its 95% interval and McNemar p, and the CPU.
"""
from __future__ import annotations

import copy
import json
import warnings

import numpy as np
import torch
from torch import nn

from common import alternate, compare_predictions, load, parser
from llm_anatomy.batching import encode_reviews
from llm_anatomy.data import read_split
from llm_anatomy.device import machine_info
from llm_anatomy.inference import inference_model, predict_logits
from llm_anatomy.pruning.materialise import pruned_copy
from llm_anatomy.pruning.plan import read_plan
from llm_anatomy.layout import Layout
from llm_anatomy.models import Checkpoint
from llm_anatomy.pruning.refit import CalibrationSet
from llm_anatomy.pruning.timing import ratio_spread


def main():
    ap = parser(__doc__, reviews=1000, repeats=5)
    ap.add_argument("--plan", default=None, help="a pipeline plan.parquet; default: the dense model")
    ap.add_argument("--train", default=Layout("offline").split("train"))
    ap.add_argument("--calibration-reviews", type=int, default=128)
    ap.add_argument("--calibration-batch-size", type=int, default=16)
    args = ap.parse_args()

    model, tok, meta, test = load(args)
    model = model.float()
    if args.plan:
        plan = read_plan(args.plan)
        calibration = (CalibrationSet.from_split(read_split(args.train), Checkpoint(model, tok, meta),
                                                 args.calibration_reviews, args.calibration_batch_size)
                       if plan.fitted else None)
        model = pruned_copy(model, plan, "removed", calibration)
    labels = test["label"].to_numpy()
    encoded = encode_reviews(tok, meta, test["text"])
    side, pad = meta.get("padding_side", "right"), tok.pad_token_id

    quantised = copy.deepcopy(model)
    with warnings.catch_warnings():  # torch marks its quantised tensor types deprecated; they still run
        warnings.simplefilter("ignore")
        torch.ao.quantization.quantize_dynamic(quantised.backbone, {nn.Linear}, dtype=torch.qint8, inplace=True)
    runners = {"bf16": (inference_model(model, "bf16"), "bf16"),
               "int8": (inference_model(quantised, "fp32", fuse=False), "fp32")}
    times, logits = alternate({name: (lambda r=runner, p=precision: predict_logits(r, encoded, pad, args.batch_size,
                                                                                   p, side))
                               for name, (runner, precision) in runners.items()}, args.repeats)
    same = compare_predictions(logits["int8"], logits["bf16"], labels)
    print(json.dumps(dict(
        machine=machine_info(torch.device("cpu")), checkpoint=args.checkpoint, plan=args.plan,
        ffn_widths=model.adapter.ffn_widths(), reviews=len(encoded), repeats=args.repeats, seconds=times,
        median_s={n: float(np.median(t)) for n, t in times.items()},
        bf16_over_int8=ratio_spread(times["bf16"], times["int8"]),
        accuracy=dict(zip(("int8", "bf16"), same["accuracy"])), int8_minus_bf16=same["difference"],
        predictions_that_differ=same["predictions_that_differ"], max_abs_logit_diff=same["max_abs_logit_diff"]),
        indent=2))


if __name__ == "__main__":
    main()
