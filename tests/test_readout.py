"""The last block run for the classifier's token only (`llm_anatomy.readout`) gives the logits of the
whole block, and `forward_macs` counts the multiply-adds it does."""
import copy

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from conftest import ARCHS, make_tiny
from llm_anatomy import readout
from llm_anatomy.batching import encode
from llm_anatomy.inference import inference_model, predict_logits
from llm_anatomy.costs import forward_macs
from llm_anatomy.surgery import remove_masked

TEXTS = ["a fine film", "dull and far too long, i left early", "ok", "good " * 20, "the cast is superb but the plot"]


def unpadded_logits(model, encoded) -> np.ndarray:
    """One review at a time, no padding, the whole backbone as transformers runs it."""
    out = []
    with torch.inference_mode():
        for ids in encoded:
            x = torch.tensor([ids])
            out.append(model(x, torch.ones_like(x)).float().numpy()[0])
    return np.array(out)


def pruned(model, seed: int = 1):
    """A copy with a different random share of every layer's FFN neurons physically removed."""
    model = copy.deepcopy(model)
    rng = np.random.default_rng(seed)
    widths = model.adapter.ffn_widths()
    remove_masked(model.adapter, [rng.choice(w, size=int(w * f), replace=False).tolist()
                                  for w, f in zip(widths, np.linspace(0.2, 0.7, len(widths)))])
    return model


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("arch", ARCHS)
def test_readout_logits_equal_the_whole_block(arch, side, precision, tokenizer):
    if arch == "bert" and side == "left":
        pytest.skip("BERT's absolute positions count from the first token, pads included: right padding only")
    for model in (make_tiny(arch, tokenizer), pruned(make_tiny(arch, tokenizer))):
        encoded = encode(tokenizer, TEXTS, 32)
        expected = unpadded_logits(model, encoded)
        runner = inference_model(model, precision)
        assert readout.is_installed(runner) and not readout.is_installed(model)
        got = predict_logits(runner, encoded, tokenizer.pad_token_id, batch_size=3, precision=precision,
                             padding_side=side)
        tol = 0.05 if precision == "bf16" else 1e-5
        assert np.abs(got - expected).max() < tol * max(1.0, float(np.abs(expected).max()))
        every = predict_logits(inference_model(model, precision, last_token=False), encoded,
                               tokenizer.pad_token_id, batch_size=3, precision=precision, padding_side=side)
        assert np.abs(every - expected).max() < tol * max(1.0, float(np.abs(expected).max()))


@pytest.mark.parametrize("arch", ARCHS)
def test_a_copied_runner_computes_with_its_own_weights(arch, tokenizer):
    runner = inference_model(make_tiny(arch, tokenizer), "fp32")
    twin = copy.deepcopy(runner)
    encoded = encode(tokenizer, TEXTS, 32)
    before = predict_logits(twin, encoded, tokenizer.pad_token_id)
    with torch.no_grad():  # the original's last block changes; the copy's must not
        for p in runner.adapter.layers()[-1].parameters():
            p.mul_(3.0)
    assert np.array_equal(predict_logits(twin, encoded, tokenizer.pad_token_id), before)
    assert not np.allclose(predict_logits(runner, encoded, tokenizer.pad_token_id), before)


def counted_linear_macs(model, length: int) -> int:
    """Multiply-adds of the matmuls torch's flop counter sees in one forward of one unpadded review,
    less those outside the layers (the head; BERT's pooler). The CPU attention kernel is not counted."""
    x = torch.ones(1, length, dtype=torch.long)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(x, torch.ones_like(x))
    hidden = model.adapter.hidden_size
    outside = hidden + (hidden * hidden if getattr(model.backbone, "pooler", None) is not None else 0)
    return counter.get_total_flops() // 2 - outside


@pytest.mark.parametrize("arch", ARCHS)
def test_forward_macs_count_the_matmuls_the_loop_runs(arch, tokenizer):
    for model in (make_tiny(arch, tokenizer), pruned(make_tiny(arch, tokenizer))):
        runner = inference_model(model, "fp32", fuse=False)
        layers, hidden = model.adapter.num_layers, model.adapter.hidden_size
        for T in (1, 7, 19):
            attention_every = 2 * layers * T * T * hidden  # scores and weighted sum, one query per token
            attention_readout = 2 * (layers - 1) * T * T * hidden + 2 * T * hidden
            assert forward_macs(model.adapter, [T], readout=False) == counted_linear_macs(model, T) + attention_every
            assert forward_macs(model.adapter, [T]) == counted_linear_macs(runner, T) + attention_readout
