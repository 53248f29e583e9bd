"""This machine's attainable matrix-multiply rate at a model's own shapes: the limit that evaluation
and timing are measured against.

The ceiling: every distinct linear map of the backbone (in x out features) is multiplied alone, at
the inference precision, with `tokens` rows (a batch of the timed reviews), after a warm-up; the best
of `repeats` runs gives its rate. The model's attainable rate weights those by how much work each map
does (total flops / sum over maps of flops / rate): the rate the backbone would run at if it spent
all its time in its linear maps, each at its best measured speed. A forward pass's fraction of the
roofline is then 2 x multiply-adds (`costs.forward_macs`: linear maps and attention products)
/ seconds / attainable rate. What keeps it below 1 is everything that is not one of those matmuls at
its best: softmax, GELU, norms, residual adds, bias copies, padding, tokenisation and Python.
"""
from __future__ import annotations

import functools
import time
from collections import Counter
from collections.abc import Sequence

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from .costs import forward_macs
from .device import machine_info
from .fused import FusedLinear

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def linear_shapes(adapter) -> Counter:
    """(in_features, out_features) -> how many of the backbone's layers' linear maps have that shape."""
    shapes = Counter()
    for layer in adapter.layers():
        for m in layer.modules():
            if isinstance(m, (nn.Linear, FusedLinear)):  # weight [out, in]
                shapes[tuple(m.weight.shape[::-1])] += 1
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
    """The roofline of this backbone's linear maps on this machine (see the module doc); measured once
    per process for the same shapes, precision, rows and repeats."""
    if precision not in DTYPES:
        raise ValueError(f"precision {precision!r} is not one of {sorted(DTYPES)}")
    return dict(_measure_shapes(tuple(sorted(linear_shapes(adapter).items())), precision, tokens, repeats))


@functools.lru_cache(maxsize=8)
def _measure_shapes(shapes: tuple, precision: str, tokens: int, repeats: int) -> dict:
    rates = [gemm_gflops(tokens, k, n, DTYPES[precision], repeats) for (k, n), _ in shapes]
    return dict(machine=machine_info(torch.device("cpu")), precision=precision, tokens=tokens, repeats=repeats,
                shapes=[dict(in_features=k, out_features=n, maps=count, gflops=round(rate, 1))
                        for ((k, n), count), rate in zip(shapes, rates)],
                attainable_gflops=attainable(shapes, rates))  # unrounded: `fraction` divides by it


def batch_rows(batch_size: int, lengths: Sequence[int]) -> int:
    """Rows of a typical batch: batch size x the reviews' mean length (the shape the roofline is measured at)."""
    return batch_size * max(1, round(sum(lengths) / max(1, len(lengths))))


def attainable(shapes: Sequence, rates: Sequence[float]) -> float:
    """Total flops / the time each shape's share takes at its own rate (((k, n), maps), GFLOP/s)."""
    work = [k * n * count for (k, n), count in shapes]
    return sum(work) / sum(w / r for w, r in zip(work, rates))


def fraction(macs: int, seconds: float, attainable_gflops: float) -> float:
    """The share of the roofline a pass of `macs` multiply-adds reached in `seconds`; NaN (written as null)
    where the rate or the time is not positive (a tiny model's GEMMs on a loaded machine can measure as
    nothing), instead of a division by zero."""
    if not (attainable_gflops > 0 and seconds > 0):
        return float("nan")
    return 2.0 * macs / seconds / 1e9 / attainable_gflops


def pass_speed(adapter, lengths: Sequence[int], batch_size: int, precision: str, seconds: float) -> dict:
    """An inference pass's multiply-adds and its fraction of the roofline, for an evaluation's record."""
    macs = forward_macs(adapter, lengths)
    tokens = batch_rows(batch_size, lengths)
    rate = measure(adapter, precision, tokens)["attainable_gflops"]
    return dict(macs=macs, roofline_gflops=rate, roofline_tokens=tokens,
                roofline_fraction=fraction(macs, seconds, rate))
