"""This machine's attainable matrix-multiply rate at a model's own shapes: the limit that evaluation
and timing are measured against.

The ceiling: every distinct linear map of the backbone (in x out features) is multiplied alone, at
the inference precision, with `tokens` rows (a batch of the timed reviews), after a warm-up; the best
of `repeats` runs gives its rate. The model's attainable rate weights those by how much work each map
does (total flops / sum over maps of flops / rate): the rate the backbone would run at if it spent
all its time in its linear maps, each at its best measured speed. A forward pass's fraction of the
roofline is then 2 x multiply-adds (`pruning.costs.forward_macs`: linear maps and attention products)
/ seconds / attainable rate. What keeps it below 1 is everything that is not one of those matmuls at
its best: softmax, GELU, norms, residual adds, bias copies, padding, tokenisation and Python.
"""
from __future__ import annotations

import time
from collections import Counter

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from .device import machine_info

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def linear_shapes(adapter) -> Counter:
    """(in_features, out_features) -> how many of the backbone's layers' linear maps have that shape."""
    shapes = Counter()
    for layer in adapter.layers():
        for m in layer.modules():
            if isinstance(m, nn.Linear):
                shapes[(m.in_features, m.out_features)] += 1
            elif isinstance(m, Conv1D):  # GPT-2 stores [in, out]
                shapes[tuple(m.weight.shape)] += 1
    return shapes


def gemm_gflops(rows: int, k: int, n: int, dtype: torch.dtype, repeats: int = 5) -> float:
    """Best GFLOP/s of x [rows, k] times a weight [n, k] held as nn.Linear holds it (no bias)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(rows, k, generator=gen).to(dtype)
    w = torch.randn(n, k, generator=gen).to(dtype)
    with torch.inference_mode():
        torch.nn.functional.linear(x, w)  # warm-up: kernel choice, allocator
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            torch.nn.functional.linear(x, w)
            best = min(best, time.perf_counter() - start)
    return 2.0 * rows * k * n / best / 1e9


def measure(adapter, precision: str, tokens: int, repeats: int = 5) -> dict:
    """The roofline of this backbone's linear maps on this machine (see the module doc)."""
    if precision not in DTYPES:
        raise ValueError(f"precision {precision!r} is not one of {sorted(DTYPES)}")
    dtype = DTYPES[precision]
    shapes, flops, seconds = [], 0.0, 0.0
    for (k, n), count in sorted(linear_shapes(adapter).items()):
        rate = gemm_gflops(tokens, k, n, dtype, repeats)
        work = 2.0 * tokens * k * n * count / 1e9
        flops, seconds = flops + work, seconds + work / rate
        shapes.append(dict(in_features=k, out_features=n, maps=count, gflops=round(rate, 1)))
    return dict(machine=machine_info(torch.device("cpu")), precision=precision, tokens=tokens,
                repeats=repeats, shapes=shapes, attainable_gflops=round(flops / seconds, 1))


def fraction(macs: int, seconds: float, attainable_gflops: float) -> float:
    """The share of the roofline a pass of `macs` multiply-adds reached in `seconds`."""
    return 2.0 * macs / seconds / 1e9 / attainable_gflops
