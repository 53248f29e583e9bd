"""Fine-tuning on a tiny model: an interrupted run resumes from its checkpoint and ends where
an uninterrupted run ends; the saved checkpoint reloads to the same predictions."""
import json

import pytest
import torch

import llm_anatomy.finetune as ft
from llm_anatomy.batching import encode
from llm_anatomy.evaluate import predict_logits
from llm_anatomy.models import load_classifier



PARAMS = dict(epochs=2, batch_size=8, lr=1e-3, head_lr=1e-3, max_length=32, precision="fp32",
              checkpoint_every=3, eval_batch_size=8, seed=5, threads=1)


def run(tmp, splits, name="m", device="cpu", **over):
    p = ft.FinetuneParams(**dict(PARAMS, **over))
    return ft.finetune("tiny:gpt2", "embedded:minilm", splits["train"], splits["val"], tmp / name, tmp / f"{name}.json", tmp / f"{name}.ckpt", p, model_name=name, device=device)


class Interrupt(Exception):
    pass


def test_resume_after_kill_matches_uninterrupted(tmp_path, splits, monkeypatch, tokenizer):
    reference = run(tmp_path, splits, "ref")
    assert reference["resumed_from_step"] is None and reference["steps"] == 10

    real_save, saves = ft.save_checkpoint, []
    def save_then_die(path, state):
        real_save(path, state)
        saves.append(state["step"])
        if len(saves) == 1:  # killed right after the checkpoint at step 3, mid-epoch
            raise Interrupt
    monkeypatch.setattr(ft, "save_checkpoint", save_then_die)
    with pytest.raises(Interrupt):
        run(tmp_path, splits, "cut")
    assert saves == [3] and not (tmp_path / "cut").exists()  # nothing half-written
    monkeypatch.setattr(ft, "save_checkpoint", real_save)

    resumed = run(tmp_path, splits, "cut")
    assert resumed["resumed_from_step"] == 3
    assert resumed["val_accuracy"] == reference["val_accuracy"]
    assert resumed["history"] == reference["history"]
    ref_model, tok, _ = load_classifier(tmp_path / "ref")
    cut_model, _, _ = load_classifier(tmp_path / "cut")
    for (name, a), (_, b) in zip(ref_model.state_dict().items(), cut_model.state_dict().items()):
        assert torch.allclose(a, b, atol=1e-6), name


def test_checkpoint_for_other_params_is_ignored(tmp_path, splits, tokenizer):
    run(tmp_path, splits, "a", epochs=1)
    (tmp_path / "a.ckpt").rename(tmp_path / "b.ckpt")
    metrics = run(tmp_path, splits, "b", lr=5e-4, epochs=1)
    assert metrics["resumed_from_step"] is None


def test_saved_classifier_reproduces_its_metrics(tmp_path, splits, tokenizer):
    metrics = run(tmp_path, splits, "m", epochs=1)
    model, tok, meta = load_classifier(tmp_path / "m")
    assert meta["arch"] == "gpt2" and meta["max_length"] == 32
    enc = encode(tok, splits["val"]["text"], meta["max_length"], meta["truncation_side"])
    logits = predict_logits(model, enc, tok.pad_token_id, batch_size=5)
    acc = float(((logits > 0) == splits["val"]["label"].to_numpy()).mean())
    assert acc == metrics["val_accuracy"]
    saved = json.loads((tmp_path / "m.json").read_text())
    assert saved["val_accuracy"] == acc and saved["val_accuracy_lo"] <= acc <= saved["val_accuracy_hi"]
    assert "test_accuracy" not in saved  # the test split is the final evaluation's alone
