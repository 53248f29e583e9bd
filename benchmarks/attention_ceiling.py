"""The highest fraction of the roofline an evaluation can reach on this machine while softmax stays exact:
attention's exponentials against the linear maps' multiply-adds (docs/SPEED.md, "Why 70% ...").

    .venv/bin/python benchmarks/attention_ceiling.py results/offline/minilm/finetuned --reviews 1000

Counts the exponentials the evaluation loop computes over the first `--reviews` test reviews (length-sorted
batches with dynamic padding; every head of every layer, the last block for its read token only), measures
two rates for them in bf16 on this CPU: the fused SDPA kernel at the evaluation's attention shape (batch x
heads x mean length x head size, with a key mask) and `torch.exp` alone, and the roofline of the linear maps
(`llm_anatomy.roofline`). The ceiling is t_matmul / (t_matmul + t_exp): the fraction reached if everything
but the multiply-adds and the exponentials took no time. The SDPA rate charges the kernel's two products
to its exponentials as well (about a tenth of the multiply-adds, counted again in t_matmul), so its ceiling
is slightly low; the `torch.exp` one is the generous bound. One JSON object.
"""
from __future__ import annotations

import json

import torch

from common import best_seconds, load, parser
from llm_anatomy import roofline
from llm_anatomy.batching import encode_reviews, sorted_batches
from llm_anatomy.costs import forward_macs


def exponentials(lengths: list[int], batch_size: int, heads: int, layers: int) -> int:
    """Softmax exponentials of the loop: per padded batch, heads x (layers - 1) x T^2 plus heads x T in the
    read-token-only last block."""
    total = 0
    for idx in sorted_batches(lengths, batch_size):
        t = max(lengths[i] for i in idx)
        total += len(idx) * heads * ((layers - 1) * t * t + t)
    return total


def main():
    ap = parser(__doc__, reviews=1000, repeats=5)
    args = ap.parse_args()
    model, tok, meta, reviews = load(args)
    lengths = [len(e) for e in encode_reviews(tok, meta, reviews["text"])]
    adapter = model.adapter
    config = model.backbone.config
    heads = config.num_attention_heads
    head_dim = adapter.hidden_size // heads
    exps = exponentials(lengths, args.batch_size, heads, adapter.num_layers)

    t = round(sum(lengths) / len(lengths))
    q, k, v = (torch.randn(args.batch_size, heads, t, head_dim, dtype=torch.bfloat16) for _ in range(3))
    mask = torch.ones(args.batch_size, 1, 1, t, dtype=torch.bool)
    mask[: args.batch_size // 2, ..., t - t // 8:] = False  # half the batch padded, as sorted batches are
    sdpa_s = best_seconds(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask),
                          args.repeats)
    scores = torch.randn(args.batch_size * heads * t * t, dtype=torch.bfloat16)
    exp_s = best_seconds(lambda: torch.exp(scores), args.repeats)
    rates = dict(sdpa=scores.numel() / sdpa_s, exp_alone=scores.numel() / exp_s)

    macs = forward_macs(adapter, lengths)
    limit = roofline.measure(adapter, "bf16", roofline.batch_rows(args.batch_size, lengths))
    matmul_s = 2 * macs / (limit["attainable_gflops"] * 1e9)
    ceiling = {name: dict(exp_per_s=round(rate / 1e9, 3), exp_seconds=round(exps / rate, 3),
                          ceiling=round(matmul_s / (matmul_s + exps / rate), 3))
               for name, rate in rates.items()}
    print(json.dumps(dict(reviews=len(lengths), mean_tokens=round(sum(lengths) / len(lengths), 1),
                          exponentials=exps, macs=macs, attainable_gflops=limit["attainable_gflops"],
                          matmul_seconds_at_roofline=round(matmul_s, 3),
                          sdpa_shape=[args.batch_size, heads, t, head_dim], ceiling=ceiling,
                          machine=limit["machine"]), indent=2))


if __name__ == "__main__":
    main()
