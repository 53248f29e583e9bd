"""ONNX Runtime against the project's evaluation loop, and ONNX Runtime's own pruned-vs-dense speedup.

    .venv/bin/python benchmarks/onnx_runtime.py results/offline/minilm/finetuned --reviews 1000 --repeats 5
    .venv/bin/python benchmarks/onnx_runtime.py results/offline/minilm/finetuned \
        --pruned results/offline/pruned/minilm/flap-50 --reviews 1000 --repeats 5 --out onnx_runtime.json

Exports the dense checkpoint and a pruned one (`--pruned FOLDER`, else `--fraction` of every layer's
FFN neurons removed at random, seeded) with `llm-anatomy export --onnx` (a plain export: float32, no
ONNX Runtime graph rewrites beyond its default session optimisations), then times, in alternating,
rotating order after a warm-up of each (`--repeats` rounds, one process, `--threads` threads for
both runtimes):
  loop-fp32, loop-bf16      the dense model as `evaluate.inference_model` runs it (fused FFN input
                            maps, last block for the read token only; bf16: weights stored in bf16)
  ort-fp32, ort-fp32-pruned the exported dense and pruned ONNX files in an ONNX Runtime CPU session
  (--loop-pruned adds loop-fp32-pruned and loop-bf16-pruned)
Every variant runs the same length-sorted batches of `--batch-size` with dynamic padding, padded inside
the timed call. Prints (and with --out writes) the CPU, versions, seconds per repeat, medians, the
ratios with their per-repeat spread (ort-fp32 / loop-fp32, ort-fp32 / loop-bf16, ort-fp32 /
ort-fp32-pruned) and how far each runtime's predictions agree with the loop's in float32.
"""
from __future__ import annotations

import copy
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from common import alternate, compare_predictions, load, parser
from llm_anatomy.batching import encode_reviews, iter_padded, sorted_batches
from llm_anatomy.device import machine_info
from llm_anatomy.inference import inference_model, loop_parts, predict_logits
from llm_anatomy.export import ONNX_FILE, export_classifier
from llm_anatomy.io import write_json
from llm_anatomy.models import save_classifier
from llm_anatomy.pruning.timing import ratio_spread
from llm_anatomy.surgery import remove_masked


def ort_session(path: Path, threads: int):
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def ort_logits(session, encoded, pad_id: int, batch_size: int, side: str) -> np.ndarray:
    """Logits in the order of `encoded`, from the loop's length-sorted, dynamically padded batches."""
    out = np.empty(len(encoded), dtype=np.float32)
    for idx, ids, mask in iter_padded(encoded, sorted_batches([len(e) for e in encoded], batch_size), pad_id, side):
        out[idx] = session.run(["logits"], {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0][:, 0]
    return out


def main():
    ap = parser(__doc__, reviews=1000, repeats=5)
    ap.add_argument("--pruned", default=None, help="a pruned classifier folder of this checkpoint")
    ap.add_argument("--fraction", type=float, default=0.5,
                    help="without --pruned: the share of every layer's FFN neurons removed at random")
    ap.add_argument("--loop-pruned", action="store_true", help="also time the loop on the pruned model")
    ap.add_argument("--out", default=None, help="JSON file to write the result to")
    args = ap.parse_args()
    import onnxruntime

    model, tok, meta, reviews = load(args)
    encoded = encode_reviews(tok, meta, reviews["text"])
    pad_id, side = tok.pad_token_id, meta.get("padding_side", "right")
    labels = reviews["label"].to_numpy()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.pruned:
            pruned_dir = Path(args.pruned)
            from llm_anatomy.models import load_classifier
            pruned, _, _ = load_classifier(pruned_dir)
        else:
            pruned = copy.deepcopy(model)
            rng = np.random.default_rng(0)
            remove_masked(pruned.adapter, [rng.choice(w, int(round(args.fraction * w)), replace=False)
                                           for w in pruned.adapter.ffn_widths()])
            pruned_dir = tmp / "pruned"
            save_classifier(pruned, tok, pruned_dir, meta)
        exports = {name: export_classifier(folder, tmp / f"{name}-onnx", onnx=True)
                   for name, folder in (("dense", args.checkpoint), ("pruned", pruned_dir))}
        sessions = {name: ort_session(tmp / f"{name}-onnx" / ONNX_FILE, args.threads) for name in exports}
        batch = dict(batch_size=args.batch_size, padding_side=side)
        runners = {"loop-fp32": (inference_model(model, "fp32"), "fp32"),
                   "loop-bf16": (inference_model(model, "bf16"), "bf16")}
        if args.loop_pruned:
            runners.update({"loop-fp32-pruned": (inference_model(pruned, "fp32"), "fp32"),
                            "loop-bf16-pruned": (inference_model(pruned, "bf16"), "bf16")})
        runs = {name: (lambda r=r, p=p: predict_logits(r, encoded, pad_id, precision=p, **batch))
                for name, (r, p) in runners.items()}
        runs["ort-fp32"] = lambda: ort_logits(sessions["dense"], encoded, pad_id, args.batch_size, side)
        runs["ort-fp32-pruned"] = lambda: ort_logits(sessions["pruned"], encoded, pad_id, args.batch_size, side)
        times, logits = alternate(runs, args.repeats)

    median = {name: float(np.median(t)) for name, t in times.items()}
    result = dict(
        machine=machine_info(torch.device("cpu")), onnxruntime=onnxruntime.__version__,
        checkpoint=args.checkpoint, pruned=args.pruned or f"random {args.fraction:g} of every layer's FFN neurons",
        ffn_widths=dict(dense=model.adapter.ffn_widths(), pruned=pruned.adapter.ffn_widths()),
        reviews=len(encoded), batch_size=args.batch_size, repeats=args.repeats, padding_side=side,
        loop=loop_parts(runners["loop-bf16"][0]), export_checks={k: v["checks"] for k, v in exports.items()},
        seconds=times, median_s=median,
        ratios={"ort-fp32 / loop-fp32": ratio_spread(times["ort-fp32"], times["loop-fp32"]),
                "ort-fp32 / loop-bf16": ratio_spread(times["ort-fp32"], times["loop-bf16"]),
                "ort-fp32 / ort-fp32-pruned": ratio_spread(times["ort-fp32"], times["ort-fp32-pruned"])},
        agreement={"ort-fp32 vs loop-fp32": compare_predictions(logits["ort-fp32"], logits["loop-fp32"], labels),
                   "loop-bf16 vs loop-fp32": compare_predictions(logits["loop-bf16"], logits["loop-fp32"], labels)})
    if args.loop_pruned:
        result["ratios"]["loop-bf16 / loop-bf16-pruned"] = ratio_spread(times["loop-bf16"], times["loop-bf16-pruned"])
    print(json.dumps(result, indent=2))
    if args.out:
        write_json(args.out, result)


if __name__ == "__main__":
    main()
