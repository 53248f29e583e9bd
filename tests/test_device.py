"""The `device` setting: resolution on a CPU-only machine (auto falls back to CPU, cuda is refused with
the fix), autocast dtypes per device, the fp16 loss scaler, and fine-tuning with device cpu and auto."""
import numpy as np
import pytest
import torch

import llm_anatomy.device as dev
from llm_anatomy.models import load_classifier

from test_finetune import run


def test_resolve_on_a_cpu_only_machine(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert dev.resolve_device("auto") == torch.device("cpu")
    assert dev.resolve_device(None) == torch.device("cpu")
    assert dev.resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(RuntimeError, match="device 'cuda:1' asked for, but torch sees no CUDA device.*use device: auto"):
        dev.resolve_device("cuda:1")
    with pytest.raises(ValueError, match="device 'gpu' is not one of auto, cpu, cuda, cuda:<index>"):
        dev.resolve_device("gpu")


def test_auto_picks_cuda_when_available(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert dev.resolve_device("auto") == torch.device("cuda")
    assert dev.resolve_device("cuda:1") == torch.device("cuda", 1)


def test_autocast_dtype_per_device(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert dev.amp_dtype("fp32", cpu) is None and dev.amp_dtype("fp32", cuda) is None
    assert dev.amp_dtype("bf16", cpu) == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert dev.amp_dtype("bf16", cuda) == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)  # e.g. a V100: fp16 instead
    assert dev.amp_dtype("bf16", cuda) == torch.float16
    with pytest.raises(ValueError, match="precision 'fp8'"):
        dev.amp_dtype("fp8", cpu)
    with dev.autocast("bf16", "cpu"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    with dev.autocast("fp32", "cpu"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


def test_loss_scaler_only_for_fp16(monkeypatch):
    assert not dev.grad_scaler("bf16", torch.device("cpu")).is_enabled()
    assert not dev.grad_scaler("fp32", torch.device("cpu")).is_enabled()


def test_machine_info_names_the_cpu():
    info = dev.machine_info(torch.device("cpu"))
    assert info["cpu"] and info["device"] == "cpu" and info["threads"] == torch.get_num_threads()


def test_finetune_with_device_cpu_and_auto_on_a_cpu_machine(tmp_path, splits, tokenizer, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    a = run(tmp_path, splits, "cpu", epochs=1, device="cpu")
    b = run(tmp_path, splits, "auto", epochs=1, device="auto")
    assert a["device"] == b["device"] == "cpu" and a["val_accuracy"] == b["val_accuracy"]
    ma, _, _ = load_classifier(tmp_path / "cpu")
    mb, _, _ = load_classifier(tmp_path / "auto", device="auto")
    for (name, x), (_, y) in zip(ma.state_dict().items(), mb.state_dict().items()):
        assert torch.equal(x, y), name


@pytest.mark.parametrize("arch", ["bert", "gpt2", "llama"])
def test_bf16_inference_stores_backbone_weights_once(arch, tokenizer):
    from conftest import make_tiny
    from llm_anatomy.batching import encode
    from llm_anatomy.inference import inference_model, predict_logits

    model = make_tiny(arch, tokenizer).eval()
    cast = inference_model(model, "bf16")
    assert cast is not model and inference_model(cast, "bf16") is cast
    assert {p.dtype for p in cast.backbone.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in model.backbone.parameters()} == {torch.float32}  # the original is untouched
    assert cast.head.weight.dtype == torch.float32
    assert all(b.dtype == model.backbone.get_buffer(n).dtype for n, b in cast.backbone.named_buffers())
    texts = ["a fine film", "dull and far too long, i left early", "ok"]
    encoded = encode(tokenizer, texts, 32)
    side = "left" if arch != "bert" else "right"
    f32 = predict_logits(model, encoded, tokenizer.pad_token_id, precision="fp32", padding_side=side)
    # independent: the weights rounded to bf16 by hand, everything computed in float32
    rounded = make_tiny(arch, tokenizer).eval()
    with torch.no_grad():
        for p in rounded.backbone.parameters():
            p.copy_(p.to(torch.bfloat16).float())
    ref = predict_logits(rounded, encoded, tokenizer.pad_token_id, precision="fp32", padding_side=side)
    got = predict_logits(model, encoded, tokenizer.pad_token_id, precision="bf16", padding_side=side)
    assert got.dtype == np.float32
    assert np.abs(got - ref).max() < 0.05 * max(1.0, np.abs(f32).max())
