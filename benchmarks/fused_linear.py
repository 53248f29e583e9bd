"""oneDNN's fused linear (+ bias + activation) against the eager path, at MiniLM's shapes.

    .venv/bin/python benchmarks/fused_linear.py --rows 8192 --threads 2

For each of MiniLM's linear maps (FFN in with GELU, FFN out, an attention projection), in bf16:
eager `F.linear` (+ `F.gelu`), `torch.ops.mkldnn._linear_pointwise` with the weight packed for
oneDNN, and the same with the weight as is; best of `--repeats` after a warm-up, in ms, and the
largest difference from the eager result. This is the kernel inductor emits under freezing, and the
one the evaluation loop's fused FFN input maps call (`llm_anatomy.fused`, docs/SPEED.md).
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from common import best_seconds
from llm_anatomy.device import machine_info


def best_ms(fn, repeats: int) -> float:
    return 1e3 * best_seconds(fn, repeats)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=8192)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    mk = torch.ops.mkldnn
    gen = torch.Generator().manual_seed(0)
    m = machine_info(torch.device("cpu"))
    print(f"{m['cpu']} ({' '.join(m['cpu_features'])}), {args.threads} threads, bf16, {args.rows} rows")
    with torch.inference_mode():
        for k, n, act in ((384, 1536, "gelu"), (1536, 384, "none"), (384, 384, "none")):
            x = torch.randn(args.rows, k, generator=gen).bfloat16()
            w = (0.05 * torch.randn(n, k, generator=gen)).bfloat16()
            b = torch.randn(n, generator=gen).bfloat16()
            algorithm = "none" if act == "gelu" else ""  # "none": exact erf GELU, as BERT uses

            def eager():
                y = F.linear(x, w, b)
                return F.gelu(y) if act == "gelu" else y

            packed = mk._reorder_linear_weight(w, args.rows)
            diff = (mk._linear_pointwise(x, packed, b, act, [], algorithm).float() - eager().float()).abs().max()
            print(f"{k:>5} -> {n:<5} {act:5s} eager {best_ms(eager, args.repeats):6.2f} ms  "
                  f"fused packed {best_ms(lambda: mk._linear_pointwise(x, packed, b, act, [], algorithm), args.repeats):6.2f} ms  "  # noqa: E501
                  f"fused as is {best_ms(lambda: mk._linear_pointwise(x, w, b, act, [], algorithm), args.repeats):6.2f} ms  "
                  f"max diff {float(diff):.3g}")


if __name__ == "__main__":
    main()
