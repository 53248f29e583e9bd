"""Fine-tuning on a tiny model: an interrupted run resumes from its checkpoint and ends where
an uninterrupted run ends; the saved checkpoint reloads to the same predictions."""
import json

import pytest
import torch

import llm_anatomy.finetune as ft
from llm_anatomy.batching import encode
from llm_anatomy.config import schema_properties
from llm_anatomy.inference import predict_logits
from llm_anatomy.models import load_classifier

DEFAULTS = {k: v["default"] for k, v in schema_properties("$defs", "finetune").items() if "default" in v}
PARAMS = dict(DEFAULTS, epochs=2, batch_size=8, lr=1e-3, head_lr=1e-3, max_length=32, precision="fp32",
              checkpoint_every=3, eval_batch_size=8, seed=5, threads=1)


def run(tmp, splits, name="m", device="cpu", **over):
    p = ft.FinetuneParams(**dict(PARAMS, **over))
    return ft.train_classifier("tiny:gpt2", "embedded:minilm", splits["train"], splits["val"], tmp / name, tmp / f"{name}.json",
                       tmp / f"{name}.ckpt", p, model_name=name, device=device)


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


def _kill_after_first_checkpoint(tmp_path, splits, monkeypatch, name, **over):
    real_save = ft.save_checkpoint

    def save_then_die(path, state):
        real_save(path, state)
        raise Interrupt
    monkeypatch.setattr(ft, "save_checkpoint", save_then_die)
    with pytest.raises(Interrupt):
        run(tmp_path, splits, name, **over)
    monkeypatch.setattr(ft, "save_checkpoint", real_save)


def test_checkpoint_for_other_params_is_ignored(tmp_path, splits, tokenizer, monkeypatch, caplog):
    _kill_after_first_checkpoint(tmp_path, splits, monkeypatch, "b", epochs=1)
    with caplog.at_level("WARNING"):
        metrics = run(tmp_path, splits, "b", lr=5e-4, epochs=1)
    assert metrics["resumed_from_step"] is None
    assert ": fine-tune params changed" in caplog.text  # the one part that changed, named alone


def test_a_changed_split_restarts_from_step_0_with_a_warning(tmp_path, splits, tokenizer, monkeypatch, caplog):
    """A kill, then a rerun on another train split (what a new split.seed gives): training on the new
    data must not continue from weights trained on the old one."""
    _kill_after_first_checkpoint(tmp_path, splits, monkeypatch, "m")
    other = dict(splits, train=splits["train"].sample(frac=1.0, random_state=1).reset_index(drop=True))
    assert not other["train"].equals(splits["train"])
    with caplog.at_level("WARNING"):
        metrics = run(tmp_path, other, "m")
    assert metrics["resumed_from_step"] is None
    assert "train split changed" in caplog.text and str(tmp_path / "m.ckpt") in caplog.text
    assert "validation split" not in caplog.text
    # the same data resumes: only a change of what determines training restarts
    _kill_after_first_checkpoint(tmp_path, splits, monkeypatch, "n")
    assert run(tmp_path, splits, "n")["resumed_from_step"] == 3


def test_an_unreadable_checkpoint_is_moved_aside_and_training_restarts(tmp_path, splits, tokenizer, monkeypatch,
                                                                        caplog):
    _kill_after_first_checkpoint(tmp_path, splits, monkeypatch, "m")
    ckpt = tmp_path / "m.ckpt"
    ckpt.write_bytes(ckpt.read_bytes()[:100])  # truncated, as a kill mid-copy leaves it
    with caplog.at_level("WARNING"):
        metrics = run(tmp_path, splits, "m")
    assert metrics["resumed_from_step"] is None
    aside = list(tmp_path.glob("m.ckpt.unreadable-*"))
    assert len(aside) == 1 and aside[0].stat().st_size == 100  # kept for inspection, not deleted
    assert "cannot be read" in caplog.text and str(ckpt) in caplog.text and str(aside[0]) in caplog.text


def test_fingerprint_parts_follow_their_inputs(splits, tokenizer):
    p = ft.FinetuneParams(**PARAMS)
    base = ft.fingerprint("tiny:gpt2", tokenizer, p, splits["train"], splits["val"])
    relabelled = splits["train"].assign(label=1 - splits["train"]["label"])
    assert ft.fingerprint("tiny:gpt2", tokenizer, p, relabelled, splits["val"])["train split"] != base["train split"]
    more_threads = ft.FinetuneParams(**dict(PARAMS, threads=2))
    assert ft.fingerprint("tiny:gpt2", tokenizer, more_threads, splits["train"], splits["val"]) == base
    reseeded = ft.fingerprint("tiny:gpt2", tokenizer, ft.FinetuneParams(**dict(PARAMS, seed=6)), splits["train"],
                              splits["val"])
    assert [k for k in base if base[k] != reseeded[k]] == ["seed"]


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
