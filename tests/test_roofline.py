"""The roofline: which linear maps a backbone has, and the arithmetic of its attainable rate."""
import math

import pytest
import torch

from conftest import make_tiny
from llm_anatomy import roofline
from llm_anatomy.models import TINY_DIMS


@pytest.mark.parametrize("arch", ["bert", "gpt2", "llama"])
def test_linear_shapes_follow_the_config(arch, tokenizer):
    h, f, L, heads = TINY_DIMS["hidden"], TINY_DIMS["ffn"], TINY_DIMS["layers"], TINY_DIMS["heads"]
    kv = h // heads * (heads // 2)  # the tiny Llama has half as many key/value heads
    # independent: each architecture's maps per layer, written out from its paper / modelling code
    expected = {
        "bert": {(h, h): 4, (h, f): 1, (f, h): 1},           # q, k, v, attention output; FFN in, out
        "gpt2": {(h, 3 * h): 1, (h, h): 1, (h, f): 1, (f, h): 1},  # fused qkv, attention proj; fc, proj
        "llama": {(h, h): 2, (h, kv): 2, (h, f): 2, (f, h): 1},    # q, o; k, v; gate, up; down
    }[arch]
    model = make_tiny(arch, tokenizer)
    assert dict(roofline.linear_shapes(model.adapter)) == {s: n * L for s, n in expected.items()}


@pytest.fixture
def fresh_cache():
    """Measurements are cached per process: neither a real one nor the fake below may answer for the other."""
    roofline._measure_shapes.cache_clear()
    yield
    roofline._measure_shapes.cache_clear()


def test_attainable_rate_weights_each_shape_by_its_work(monkeypatch, tokenizer, fresh_cache):
    model = make_tiny("bert", tokenizer)
    h, f = TINY_DIMS["hidden"], TINY_DIMS["ffn"]
    rates = {(h, h): 100.0, (h, f): 400.0, (f, h): 200.0}
    monkeypatch.setattr(roofline, "gemm_gflops", lambda rows, k, n, dtype, repeats: rates[(k, n)])
    out = roofline.measure(model.adapter, "bf16", tokens=64)
    # per layer: 4 maps of h*h at 100, one h*f at 400, one f*h at 200 -> time-weighted mean rate
    work = {(h, h): 4 * h * h, (h, f): h * f, (f, h): f * h}
    expected = sum(work.values()) / sum(w / rates[s] for s, w in work.items())
    assert out["attainable_gflops"] == pytest.approx(expected, rel=1e-12)  # unrounded
    assert roofline.fraction(macs=10**9, seconds=2.0, attainable_gflops=4.0) == pytest.approx(0.25)
    # a rate too small to show at 0.1 GFLOP/s is divided by as measured, and no rate at all gives NaN
    assert roofline.fraction(macs=10**6, seconds=1.0, attainable_gflops=0.04) == pytest.approx(0.05)
    assert math.isnan(roofline.fraction(macs=10**6, seconds=1.0, attainable_gflops=0.0))
    with pytest.raises(ValueError, match="precision 'fp16'"):
        roofline.measure(model.adapter, "fp16", tokens=64)


def test_gemm_rate_is_a_real_measurement():
    assert roofline.gemm_gflops(64, 32, 48, torch.float32, repeats=2) > 0
