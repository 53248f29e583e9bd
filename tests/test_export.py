"""`llm-anatomy export`: the folder loads with transformers alone (a fresh process that cannot import
llm_anatomy) and gives load_classifier's logits, dense and pruned (FFN neurons and heads), for BERT, GPT-2
and Llama; the ONNX file gives the torch model's logits on batches of other shapes than its example."""
import copy
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import ARCHS, make_tiny
from llm_anatomy.cli import main
from llm_anatomy.export import EXPORT_FILE, ORT_TOL, export_classifier
from llm_anatomy.heads import remove_heads
from llm_anatomy.models import load_classifier, save_classifier
from llm_anatomy.pruning.head_compensation import fold_head_bias
from llm_anatomy.pruning.materialise import compensate_bias
from llm_anatomy.surgery import remove_masked
from test_heads import PLANS

TEXTS = ["a fine film", "dull and far too long, i left early", "ok", "good " * 30, "the cast is superb but the plot"]

# The fresh process: llm_anatomy cannot be imported, only transformers and the folder's own file.
FRESH = """
import importlib.abc, json, sys

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "llm_anatomy":
            raise ImportError(name + " is blocked: an exported folder must load without it")

sys.meta_path.insert(0, Block())
import numpy as np, torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer
torch.set_num_threads(1)
texts, labels = json.loads(sys.argv[1]), torch.tensor(json.loads(sys.argv[2]))
for folder in sys.argv[3:]:
    model = AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True).eval()
    tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    enc = tok(texts, padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        out = model(**enc, labels=labels)
    np.savez(folder + "/fresh.npz", input_ids=enc["input_ids"].numpy(), attention_mask=enc["attention_mask"].numpy(),
             logits=out.logits.numpy(), loss=out.loss.numpy())
"""


def _folders(arch, tokenizer, tmp_path) -> dict:
    """A dense and a pruned classifier folder (heads and FFN neurons removed, both compensated by a bias
    fold, so Llama saves attention and FFN biases)."""
    meta = dict(max_length=24, padding_side="right" if arch == "bert" else "left", truncation_side="right")
    dense = make_tiny(arch, tokenizer)
    pruned = copy.deepcopy(dense)
    rng = np.random.default_rng(0)
    heads = pruned.adapter.attention(0)
    fold_head_bias(pruned.adapter, PLANS[arch], [rng.normal(size=(heads.heads, heads.head_dim))] * 4)
    remove_heads(pruned.adapter, PLANS[arch])
    drop = [rng.choice(w, w // 4 + 9 * l, replace=False) for l, w in enumerate(pruned.adapter.ffn_widths())]
    compensate_bias(pruned.adapter, drop, [rng.normal(size=len(d)) for d in drop])
    remove_masked(pruned.adapter, drop)
    folders = {}
    for name, model in (("dense", dense), ("pruned", pruned)):
        folders[name] = tmp_path / f"{arch}-{name}"
        save_classifier(model, tokenizer, folders[name], meta)
    return folders


def _fresh_env(tmp_path) -> dict:
    return dict(os.environ, HF_MODULES_CACHE=str(tmp_path / "modules"), HF_HUB_OFFLINE="1")


@pytest.mark.parametrize("arch", ARCHS)
def test_exported_folder_loads_with_from_pretrained_in_a_fresh_process(arch, tokenizer, tmp_path):
    folders = _folders(arch, tokenizer, tmp_path)
    exported = {}
    for name, folder in folders.items():
        exported[name] = tmp_path / f"{arch}-{name}-hf"
        info = export_classifier(folder, exported[name])
        assert info["checks"]["from_pretrained"]["max_abs_logit_diff"] <= 1e-5
    labels = [1, 0, 1, 1, 0]
    subprocess.run([sys.executable, "-c", FRESH, json.dumps(TEXTS), json.dumps(labels),
                    *map(str, exported.values())], check=True, env=_fresh_env(tmp_path), cwd=tmp_path)
    for name, folder in folders.items():
        model, _, meta = load_classifier(folder)
        config = json.loads((exported[name] / "config.json").read_text())
        assert config["ffn_widths"] == meta["ffn_widths"] and config["attention_heads"] == meta["attention_heads"]
        assert config["kv_heads"] == meta["kv_heads"] and config["model_type"] == f"llm_anatomy_{arch}"
        fresh = np.load(exported[name] / "fresh.npz")
        assert fresh["logits"].shape == (len(TEXTS), 1)
        ids, mask = torch.from_numpy(fresh["input_ids"]), torch.from_numpy(fresh["attention_mask"])
        # the folder's tokenizer pads on the checkpoint's side and truncates at its max_length
        side_pads = mask[:, 0] if meta["padding_side"] == "left" else mask[:, -1]
        assert ids.shape[1] == 24 and (side_pads == 0).any()
        with torch.no_grad():
            expect = model(ids, mask).numpy()
        np.testing.assert_allclose(fresh["logits"][:, 0], expect, rtol=0, atol=1e-5)
        # the loss is the binary cross-entropy of the head's training, computed here in float64
        z, y = expect.astype(np.float64), np.array(labels, dtype=np.float64)
        bce = np.mean(np.logaddexp(0, -z) * y + np.logaddexp(0, z) * (1 - y))
        assert abs(float(fresh["loss"]) - bce) < 1e-5
    dense_heads = json.loads((exported["dense"] / "config.json").read_text())["attention_heads"]
    assert dense_heads == [4] * 4 != json.loads((exported["pruned"] / "config.json").read_text())["attention_heads"]


@pytest.mark.parametrize("arch", ARCHS)
def test_onnx_export_gives_the_torch_logits_at_other_shapes(arch, tokenizer, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    folder = _folders(arch, tokenizer, tmp_path)["pruned"]
    out = tmp_path / "onnx-export"
    assert main(["export", str(folder), "--onnx", "--out", str(out)]) == 0
    info = json.loads((out / EXPORT_FILE).read_text())
    assert info["checks"]["onnx"]["max_abs_logit_diff"] <= ORT_TOL
    model, tok, meta = load_classifier(folder)
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask"]
    example = info["checks"]["onnx"]["example_shape"]
    tok.padding_side = meta["padding_side"]
    for texts in (TEXTS, TEXTS[1:2], TEXTS[2:5]):
        enc = tok(texts, padding=True, return_tensors="pt")
        ids, mask = enc["input_ids"], enc["attention_mask"]
        assert list(ids.shape) != example
        with torch.no_grad():
            expect = model(ids, mask).numpy()
        got = session.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
        assert got.shape == (len(texts), 1)
        # float32 in another runtime: the kernels sum in another order (a few ulps per operation)
        np.testing.assert_allclose(got[:, 0], expect, rtol=0, atol=ORT_TOL)


def test_export_refuses_to_replace_what_it_did_not_write(tokenizer, tmp_path, capsys):
    folder = tmp_path / "ckpt"
    save_classifier(make_tiny("bert", tokenizer), tokenizer, folder, dict(max_length=16))
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    assert main(["export", str(folder), "--out", str(mine)]) == 2
    assert "is not a folder `llm-anatomy export` wrote" in capsys.readouterr().err
    assert (mine / "notes.txt").read_text() == "keep me"
    assert main(["export", str(folder), "--out", str(folder)]) == 2
    assert "is the classifier folder itself" in capsys.readouterr().err
    assert main(["export", str(folder)]) == 0  # the default: beside it, then replaced by a second export
    assert main(["export", str(folder)]) == 0
    assert json.loads((tmp_path / "ckpt-hf" / EXPORT_FILE).read_text())["source"] == str(folder)
