"""The fused FFN input map computes what the eager modules compute (bf16 tolerance)."""
import copy

import numpy as np
import pytest
import torch

from conftest import make_tiny
from llm_anatomy import fused
from llm_anatomy.batching import encode
from llm_anatomy.inference import inference_model, predict_logits

pytestmark = pytest.mark.skipif(not fused.available(), reason="needs oneDNN (torch.ops.mkldnn._linear_pointwise)")


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("arch", ["bert", "gpt2", "llama"])
def test_fused_ffn_inputs_match_the_eager_model(arch, precision, tokenizer):
    eager = make_tiny(arch, tokenizer).eval()
    if precision == "bf16":
        for param in eager.backbone.parameters():
            param.data = param.data.bfloat16()
    swapped = copy.deepcopy(eager)
    assert fused.fuse_ffn_inputs(swapped) == eager.adapter.num_layers
    encoded = encode(tokenizer, ["a fine film", "dull and far too long, i left early", "ok", "good " * 20], 32)
    side = "right" if arch == "bert" else "left"
    plain = []
    with torch.inference_mode():  # the eager modules, called directly (predict_logits would fuse them)
        for ids in encoded:
            x = torch.tensor([ids])
            plain.append(eager(x, torch.ones_like(x)).float().numpy()[0])
    got = predict_logits(swapped, encoded, tokenizer.pad_token_id, precision=precision, padding_side=side)
    tol = 0.05 if precision == "bf16" else 1e-4
    assert np.abs(got - np.array(plain)).max() < tol * max(1.0, float(np.abs(np.array(plain)).max()))


def test_fused_module_against_a_hand_computation():
    torch.manual_seed(0)
    w, b, x = torch.randn(24, 16).bfloat16(), torch.randn(24).bfloat16(), torch.randn(2, 5, 16).bfloat16()
    ref = torch.nn.functional.gelu((x.float() @ w.float().T + b.float()))  # exact erf GELU in float32
    out = fused.FusedLinearAct(w, b, "gelu")(x)
    assert out.shape == (2, 5, 24)
    torch.testing.assert_close(out.float(), ref, atol=0.05, rtol=0.02)


def test_fused_product_against_a_hand_computation():
    torch.manual_seed(0)
    w, b = torch.randn(24, 16).bfloat16(), torch.randn(24).bfloat16()
    x, gate = torch.randn(2, 5, 16).bfloat16(), torch.randn(2, 5, 24).bfloat16()
    ref = (x.float() @ w.float().T + b.float()) * gate.float()
    out = fused.FusedLinearMul(w, b)(x, gate)
    assert out.shape == (2, 5, 24)
    torch.testing.assert_close(out.float(), ref, atol=0.1, rtol=0.02)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("arch", ["bert", "gpt2", "llama"])
def test_inference_model_fuses_a_copy_once(arch, precision, tokenizer):
    from llm_anatomy.roofline import linear_shapes

    model = make_tiny(arch, tokenizer).eval()
    shapes = linear_shapes(model.adapter)
    runner = inference_model(model, precision)
    assert runner is not model and fused.is_fused(runner) and not fused.is_fused(model)
    assert inference_model(runner, precision) is runner  # already in its inference form
    eager = inference_model(model, precision, fuse=False)  # kept unfused by whoever calls it later
    assert not fused.is_fused(eager) and inference_model(eager, precision) is eager
    # the fused maps still count as the linear maps they replace (the roofline's multiply-adds), and
    # the adapter finds every FFN where it was
    assert linear_shapes(runner.adapter) == shapes
    assert runner.adapter.ffn_widths() == model.adapter.ffn_widths()
