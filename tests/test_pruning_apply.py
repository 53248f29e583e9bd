"""Zeroing and physical removal compute the same function; removed models save, reload and run."""
import copy

import numpy as np
import torch

from conftest import forward_tolerance

from llm_anatomy.batching import pad
from llm_anatomy.models import load_classifier, save_classifier
from llm_anatomy.costs import count_parameters, ffn_macs, forward_macs
from llm_anatomy.surgery import remove_masked, zero_masked


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
    out = zeroed(ids, mask)
    torch.testing.assert_close(out, removed(ids, mask), atol=forward_tolerance(tiny_model, out), rtol=0)
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
    out = removed(ids, mask)
    torch.testing.assert_close(again(ids, mask), out, atol=forward_tolerance(removed, out), rtol=0)
