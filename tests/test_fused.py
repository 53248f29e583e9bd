"""The fused FFN input map computes what the eager modules compute (bf16 tolerance)."""
import copy

import numpy as np
import pytest
import torch

from conftest import make_tiny
from llm_anatomy import fused
from llm_anatomy.batching import encode
from llm_anatomy.evaluate import inference_model, predict_logits

pytestmark = pytest.mark.skipif(not fused.available(), reason="needs oneDNN (torch.ops.mkldnn._linear_pointwise)")


@pytest.mark.parametrize("arch", ["bert", "gpt2", "llama"])
def test_fused_ffn_inputs_match_the_eager_model(arch, tokenizer):
    model = inference_model(make_tiny(arch, tokenizer).eval(), "bf16")
    swapped = copy.deepcopy(model)
    assert fused.fuse_ffn_inputs(swapped) == model.adapter.num_layers
    encoded = encode(tokenizer, ["a fine film", "dull and far too long, i left early", "ok", "good " * 20], 32)
    side = "right" if arch == "bert" else "left"
    eager = predict_logits(model, encoded, tokenizer.pad_token_id, precision="bf16", padding_side=side)
    got = predict_logits(swapped, encoded, tokenizer.pad_token_id, precision="bf16", padding_side=side)
    assert np.abs(got - eager).max() < 0.05 * max(1.0, float(np.abs(eager).max()))


def test_fused_module_against_a_hand_computation():
    torch.manual_seed(0)
    w, b, x = torch.randn(24, 16).bfloat16(), torch.randn(24).bfloat16(), torch.randn(2, 5, 16).bfloat16()
    ref = torch.nn.functional.gelu((x.float() @ w.float().T + b.float()))  # exact erf GELU in float32
    out = fused.FusedLinearAct(w, b, "gelu")(x)
    assert out.shape == (2, 5, 24)
    torch.testing.assert_close(out.float(), ref, atol=0.05, rtol=0.02)
