"""The project's evaluation loop against `transformers.pipeline("text-classification")`: the same
fine-tuned model, reviews, threads, batch size and precision, tokenisation included, timed
alternately in one process after a warm-up of each.

    .venv/bin/python benchmarks/loop_vs_pipeline.py results/offline/minilm/finetuned --reviews 1000 --precision bf16

The pipeline gets the standard `*ForSequenceClassification` model of the architecture holding the
fine-tuned backbone's weights and the project's head as its one-label classifier (BERT's extra
pooler, 384x384, is left as built: its cost is negligible and this compares speed, not accuracy).
Precision: fp32 on both sides, or bf16 weights on both sides (the loop: `inference_model`, the
backbone cast once; the pipeline: the whole model cast to bfloat16). Prints the median seconds of each, the ratio
pipeline / loop per repeat (min, median, max) and the machine.
"""
from __future__ import annotations

import json

import numpy as np
import torch
from transformers import AutoModelForSequenceClassification, pipeline

from common import alternate, load, parser
from llm_anatomy.batching import encode_reviews
from llm_anatomy.device import machine_info
from llm_anatomy.inference import inference_model, predict_logits
from llm_anatomy.pruning.timing import ratio_spread


def hf_classifier(model, dtype: torch.dtype):
    """The architecture's *ForSequenceClassification with the fine-tuned backbone and head."""
    config = model.backbone.config
    config.num_labels = 1
    hf = AutoModelForSequenceClassification.from_config(config)
    missing = hf.base_model.load_state_dict(model.backbone.state_dict(), strict=False)
    unexpected = [k for k in missing.unexpected_keys]
    if unexpected:
        raise RuntimeError(f"backbone weights the classifier model does not know: {unexpected[:5]}")
    head = getattr(hf, "classifier", None) or getattr(hf, "score")
    with torch.no_grad():
        head.weight.copy_(model.head.weight)
        if getattr(head, "bias", None) is not None:
            head.bias.copy_(model.head.bias)
    return hf.to(dtype).eval()


def main():
    ap = parser(__doc__, reviews=1000, repeats=5)
    ap.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    args = ap.parse_args()

    model, tok, meta, reviews = load(args)
    texts = reviews["text"].tolist()
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    if tok.pad_token_id is not None:
        model.backbone.config.pad_token_id = tok.pad_token_id
    pipe = pipeline("text-classification", model=hf_classifier(model, dtype), tokenizer=tok, device="cpu")
    tok_kwargs = dict(truncation=True, max_length=meta["max_length"])
    side = meta.get("padding_side", "right")

    runner = inference_model(model, args.precision)  # cast once, as the pipeline's model is

    def loop():
        encoded = encode_reviews(tok, meta, texts)  # tokenisation is part of the timed work on both sides
        return predict_logits(runner, encoded, tok.pad_token_id, args.batch_size, args.precision, side)

    def pipe_run():
        return pipe(texts, batch_size=args.batch_size, function_to_apply="none", **tok_kwargs)

    times, outputs = alternate({"loop": loop, "pipeline": pipe_run}, args.repeats)
    agree = float(np.mean((outputs["loop"] > 0) == (np.array([o["score"] for o in outputs["pipeline"]]) > 0)))
    print(json.dumps(dict(machine=machine_info(torch.device("cpu")), reviews=len(texts), precision=args.precision,
                          batch_size=args.batch_size, repeats=args.repeats, seconds=times,
                          same_predictions=agree,
                          median_s={n: float(np.median(t)) for n, t in times.items()},
                          pipeline_over_loop=ratio_spread(times["pipeline"], times["loop"])), indent=2))


if __name__ == "__main__":
    main()
