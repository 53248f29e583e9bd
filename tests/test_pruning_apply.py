"""Zeroing and physical removal compute the same function; removed models save, reload and run;
the prune-and-evaluate driver works end to end on tiny models."""
import copy
import json

import numpy as np
import pandas as pd
import pytest
import torch

from llm_anatomy.batching import pad
from llm_anatomy.models import load_classifier, save_classifier
from llm_anatomy.pruning.costs import count_parameters, ffn_macs, forward_macs
from llm_anatomy.pruning.evaluate import EvalSettings, prune_and_evaluate
from llm_anatomy.surgery import remove_masked, zero_masked
from pruning_helpers import quick_scores


def _batch(tokenizer, reviews):
    return pad(tokenizer(reviews)["input_ids"], tokenizer.pad_token_id, "right")


def _random_pruned(model, frac=0.5, seed=0):
    rng = np.random.default_rng(seed)
    return [np.sort(rng.choice(w, int(frac * w), replace=False)) for w in model.adapter.ffn_widths()]


@torch.no_grad()
def test_zeroed_equals_removed(tiny_model, tokenizer, reviews):
    ids, mask = _batch(tokenizer, reviews)
    pruned = _random_pruned(tiny_model)
    pruned[1] = np.arange(tiny_model.adapter.ffn_width(1))[:-1]  # keep a single neuron in one layer
    zeroed, removed = copy.deepcopy(tiny_model), copy.deepcopy(tiny_model)
    pruned[2] = np.arange(tiny_model.adapter.ffn_width(2))  # and every neuron of another
    zero_masked(zeroed.adapter, pruned)
    remove_masked(removed.adapter, pruned)
    expect = [max(w - len(p), 1) for w, p in zip(tiny_model.adapter.ffn_widths(), pruned)]
    assert removed.adapter.ffn_widths() == expect
    torch.testing.assert_close(zeroed(ids, mask), removed(ids, mask), atol=1e-5, rtol=0)
    assert not torch.allclose(zeroed(ids, mask), tiny_model(ids, mask), atol=1e-5)  # pruning changed something
    assert count_parameters(removed) < count_parameters(tiny_model)
    lengths = [int(m.sum()) for m in mask]
    n_proj = len(tiny_model.adapter.ffn(0).inputs) + 1
    kept = sum(removed.adapter.ffn_widths())
    assert ffn_macs(removed.adapter, lengths) == sum(lengths) * kept * tiny_model.adapter.hidden_size * n_proj
    assert forward_macs(removed.adapter, lengths) < forward_macs(tiny_model.adapter, lengths)


@torch.no_grad()
def test_removed_model_saves_and_reloads(tiny_model, tokenizer, reviews, tmp_path):
    ids, mask = _batch(tokenizer, reviews)
    removed = copy.deepcopy(tiny_model)
    remove_masked(removed.adapter, _random_pruned(tiny_model, 0.3, seed=1))
    save_classifier(removed, tokenizer, tmp_path / "ckpt", dict(max_length=64))
    again, _, meta = load_classifier(tmp_path / "ckpt")
    assert meta["ffn_widths"] == removed.adapter.ffn_widths() == again.adapter.ffn_widths()
    torch.testing.assert_close(again(ids, mask), removed(ids, mask), atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch,cfg", [
    ("bert", {"rule": "encoder", "alpha": 0.0, "beta": 0.001, "focusing": "even-from-third+last", "target": 0.5}),
    ("llama", {"rule": "decoder", "alpha": 0.2, "focusing": "last-2/12"}),
])
def test_prune_and_evaluate_end_to_end(arch, cfg, tokenizer, reviews, tmp_path):
    from conftest import make_tiny

    model = make_tiny(arch, tokenizer)
    save_classifier(model, tokenizer, tmp_path / "m", dict(max_length=64, truncation_side="right",
                                                           padding_side="right", precision="fp32"))
    layer, neuron = quick_scores(model, tokenizer, reviews)
    layer.to_parquet(tmp_path / "l.parquet")
    neuron.to_parquet(tmp_path / "n.parquet")
    test = pd.DataFrame({"text": reviews * 4, "label": [1, 0, 1, 1, 0] * 4})
    metrics, table = prune_and_evaluate(tmp_path / "m", tmp_path / "l.parquet", tmp_path / "n.parquet", test, cfg,
                                        EvalSettings(batch_size=4, repeats=3, random_seeds=3, threads=1,
                                                     time_limit=None if arch == "bert" else 8))
    json.dumps(metrics)
    assert table["masked"].tolist() == metrics["pruned_per_layer"]
    assert metrics["zeroed_vs_removed_max_abs_logit_diff_fp32"] < 1e-5
    if arch == "bert":
        assert metrics["accuracy"] == metrics["accuracy_zeroed"]
    else:  # timed on 8 reviews, accuracy still on all 20
        assert metrics["timed_reviews"] == 8 and metrics["test_reviews"] == 20 and metrics["accuracy_zeroed"] is None
    assert len(metrics["accuracy_random"]) == 3 and len(metrics["times_s"]["removed"]) == 3
    assert metrics["params_removed"] < metrics["params_dense"]
    if "target" in cfg:
        assert abs(metrics["neurons_pruned"] - 0.5 * metrics["neurons_total"]) <= len(table)
    assert (table["random_masked"] == table["masked"]).all()
