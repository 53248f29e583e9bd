"""bf16 inference two ways on the same reviews: float32 weights under bf16 autocast (the loop before
`inference_model`) and the backbone's weights stored in bf16 (the loop now).

    .venv/bin/python benchmarks/bf16_storage.py results/offline/minilm/finetuned --reviews 1000

Tokenises once, warms both up, then times `--repeats` alternating passes of each. Prints the
median seconds, the ratio, both accuracies, the paired difference (stored minus autocast) with its
95% interval and McNemar p, how many predictions differ, the largest logit difference and the CPU.
"""
from __future__ import annotations

import json

import numpy as np
import torch

from common import alternate, compare_predictions, load, parser
from llm_anatomy.batching import encode_reviews, progress_batches
from llm_anatomy.device import autocast, machine_info
from llm_anatomy.inference import inference_model, predict_logits


@torch.inference_mode()
def autocast_logits(model, encoded, pad_id, batch_size, side) -> np.ndarray:
    out = np.empty(len(encoded), np.float32)
    with autocast("bf16"):
        for idx, ids, mask in progress_batches(encoded, batch_size, pad_id, side):
            out[idx] = model(ids, mask).float().numpy()
    return out


def main():
    ap = parser(__doc__, reviews=1000, repeats=3)
    args = ap.parse_args()

    model, tok, meta, test = load(args)
    labels = test["label"].to_numpy()
    encoded = encode_reviews(tok, meta, test["text"])
    side, pad = meta.get("padding_side", "right"), tok.pad_token_id
    stored = inference_model(model, "bf16", fuse=False)  # this compares storage alone
    runs = {"autocast": lambda: autocast_logits(model, encoded, pad, args.batch_size, side),
            "stored": lambda: predict_logits(stored, encoded, pad, args.batch_size, "bf16", side)}
    times, logits = alternate(runs, args.repeats)
    same = compare_predictions(logits["stored"], logits["autocast"], labels)
    median = {n: float(np.median(t)) for n, t in times.items()}
    print(json.dumps(dict(
        machine=machine_info(torch.device("cpu")), reviews=len(encoded), seconds=times, median_s=median,
        autocast_over_stored=median["autocast"] / median["stored"],
        accuracy=dict(zip(("stored", "autocast"), same["accuracy"])), stored_minus_autocast=same["difference"],
        predictions_that_differ=same["predictions_that_differ"], max_abs_logit_diff=same["max_abs_logit_diff"]),
        indent=2))


if __name__ == "__main__":
    main()
