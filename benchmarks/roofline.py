"""This machine's attainable matrix-multiply rate at the shapes the models use: the roofline that
evaluation times are measured against.

    .venv/bin/python benchmarks/roofline.py --threads 2 --hidden 384 --ffn 1536 --tokens 8192

For each shape (tokens x hidden -> ffn, tokens x ffn -> hidden, tokens x hidden -> hidden) and each
precision (float32, and bfloat16 tensors: the weights stored in bf16, no autocast), times
`--repeats` multiplications after a warm-up and prints the best rate in GFLOP/s (2 m n k / seconds)
with the CPU model and its AMX / AVX-512 BF16 flags. Prints one JSON object; `--out` writes it too.
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from llm_anatomy.device import machine_info


def rate(m: int, k: int, n: int, dtype: torch.dtype, repeats: int) -> float:
    """Best GFLOP/s of x [m, k] @ w [k, n] over `repeats` runs (the weight transposed, as nn.Linear holds it)."""
    x = torch.randn(m, k).to(dtype)
    w = torch.randn(n, k).to(dtype)
    torch.nn.functional.linear(x, w)  # warm-up: kernel selection, allocator
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.nn.functional.linear(x, w)
        best = min(best, time.perf_counter() - start)
    return 2.0 * m * k * n / best / 1e9


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=384)
    ap.add_argument("--ffn", type=int, default=1536)
    ap.add_argument("--tokens", type=int, default=8192, help="rows per multiplication (batch x sequence length)")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    shapes = {"ffn_in": (args.tokens, args.hidden, args.ffn), "ffn_out": (args.tokens, args.ffn, args.hidden),
              "attention_proj": (args.tokens, args.hidden, args.hidden)}
    result = dict(machine=machine_info(torch.device("cpu")), threads=args.threads, shapes={}, gflops={})
    for name, (m, k, n) in shapes.items():
        result["shapes"][name] = dict(m=m, k=k, n=n)
        result["gflops"][name] = {p: round(rate(m, k, n, dt, args.repeats), 1)
                                  for p, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16))}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
