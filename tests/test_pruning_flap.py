"""FLAP's parts: activation statistics against a direct computation, the uniform and global allocations on
hand-made fluctuation scores, bias compensation against mean-activation substitution."""
import copy

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import forward_tolerance

from llm_anatomy.batching import pad
from llm_anatomy.pruning.calibration import ffn_activation_stats
from llm_anatomy.pruning.allocation import allocate, cut_values
from llm_anatomy.pruning.criteria import NeuronStats, importance
from llm_anatomy.pruning.materialise import compensate_bias
from llm_anatomy.surgery import remove_masked, zero_masked


@torch.no_grad()
def _token_activations(model, encoded):
    """Every real token's FFN activation, one unpadded review at a time: [tokens, neurons] per layer."""
    adapter = model.adapter
    got = {l: [] for l in range(adapter.num_layers)}
    hooks = [adapter.ffn(l).output.register_forward_pre_hook(
        lambda _m, args, l=l: got[l].append(args[0][0].double().clone())) for l in range(adapter.num_layers)]
    try:
        for seq in encoded:
            ids = torch.tensor([seq])
            model(ids, torch.ones_like(ids))
    finally:
        for h in hooks:
            h.remove()
    return [torch.cat(got[l]).numpy() for l in range(adapter.num_layers)]


@pytest.mark.parametrize("side", ["right", "left"])
def test_stats_match_direct_computation(tiny_model, tokenizer, reviews, side):
    if side == "left" and not tiny_model.adapter.is_decoder:
        pytest.skip("BERT's absolute positions shift under left padding; encoders are padded on the right")
    encoded = tokenizer(reviews)["input_ids"]
    stats = ffn_activation_stats(tiny_model, encoded, tokenizer.pad_token_id, padding_side=side, batch_size=3)
    acts = _token_activations(tiny_model, encoded)
    assert (stats["tokens"] == sum(len(s) for s in encoded)).all()  # pad tokens are not counted
    for l, a in enumerate(acts):
        rows = stats[stats["layer"] == l].sort_values("neuron")
        np.testing.assert_allclose(rows["mean"], a.mean(0), atol=1e-6)
        np.testing.assert_allclose(rows["var"], a.var(0), atol=1e-6)
        v = tiny_model.adapter.value_vectors(l).double().numpy()
        np.testing.assert_allclose(rows["value_norm_sq"], (v ** 2).sum(1), rtol=1e-12)


def test_stats_round_trip(tiny_model, tokenizer, reviews, tmp_path):
    stats = ffn_activation_stats(tiny_model, tokenizer(reviews)["input_ids"], tokenizer.pad_token_id, "right", 16)
    stats.sample(frac=1.0, random_state=0).to_parquet(tmp_path / "s.parquet")  # row order must not matter
    read = NeuronStats.from_files(tmp_path / "s.parquet")
    means, var = read["mean"], read["var"]
    assert [len(m) for m in means] == tiny_model.adapter.ffn_widths()
    np.testing.assert_array_equal(var[1], stats[stats["layer"] == 1].sort_values("neuron")["var"].to_numpy())


def test_uniform_allocation_by_hand():
    var = [np.array([4.0, 1.0, 9.0, 0.5]), np.array([1.0, 1.0, 2.0, 3.0])]
    vnorm = [np.array([1.0, 2.0, 0.1, 1.0]), np.array([3.0, 1.0, 1.0, 1.0])]
    f = importance("fluctuation", NeuronStats(dict(var=var, value_norm_sq=vnorm)))  # [4, 2, 0.9, 0.5], [3, 1, 2, 3]
    np.testing.assert_allclose(f[0], [4.0, 2.0, 0.9, 0.5])
    pruned = allocate(f, 0.5, "uniform")
    assert [p.tolist() for p in pruned] == [[2, 3], [1, 2]]
    assert cut_values(f, pruned) == [0.9, 2.0]
    assert [p.tolist() for p in allocate(f, 0.25, "uniform")] == [[3], [1]]


def test_global_allocation_by_hand():
    # Layer 0 z-scores: (x - 2.5) / sqrt(1.25) for 1..4 -> -1.342, -0.447, 0.447, 1.342.
    # Layer 1 z-scores: 10, 10, 10, 50 -> mean 20, sd 17.32 -> -0.577 x3, 1.732.
    f = [np.array([1.0, 2.0, 3.0, 4.0]), np.array([10.0, 10.0, 10.0, 50.0])]
    # 3 of 8: -1.342 (0:0), then the three tied -0.577 of layer 1, taken in index order: 1:0, 1:1
    assert [p.tolist() for p in allocate(f, 3 / 8, "global")] == [[0], [0, 1]]
    assert [p.tolist() for p in allocate(f, 5 / 8, "global")] == [[0, 1], [0, 1, 2]]
    assert sum(len(p) for p in allocate(f, 1.0, "global")) == 8
    # at most half of any layer: 4 of 8 would take layer 1's three ties; capped at 2, the cut goes on in layer 0
    assert [p.tolist() for p in allocate(f, 1 / 2, "global")] == [[0], [0, 1, 2]]
    assert [p.tolist() for p in allocate(f, 1 / 2, "global", max_layer_fraction=0.5)] == [[0, 1], [0, 1]]
    assert [p.tolist() for p in allocate(f, 1 / 2, "global", max_layer_fraction=1.0)] == [[0], [0, 1, 2]]
    with pytest.raises(ValueError, match="max_layer_fraction 0.5 allows 4"):
        allocate(f, 5 / 8, "global", max_layer_fraction=0.5)
    with pytest.raises(ValueError, match="allocation"):
        allocate(f, 0.5, "per-head")
    with pytest.raises(ValueError, match="outside"):
        allocate(f, 1.5, "uniform")


@torch.no_grad()
def test_bias_compensation_equals_mean_substitution(tiny_model, tokenizer, reviews):
    """Removing neurons and compensating the bias = keeping them with their activation pinned to the mean."""
    encoded = tokenizer(reviews)["input_ids"]
    ids, mask = pad(encoded, tokenizer.pad_token_id, "right")
    stats = ffn_activation_stats(tiny_model, encoded, tokenizer.pad_token_id, "right", 16)
    means = [stats[stats["layer"] == l].sort_values("neuron")["mean"].to_numpy()
             for l in range(tiny_model.adapter.num_layers)]
    rng = np.random.default_rng(3)
    pruned = [np.sort(rng.choice(w, w // 2, replace=False)) for w in tiny_model.adapter.ffn_widths()]

    pinned = copy.deepcopy(tiny_model)
    hooks = []
    for l, p in enumerate(pruned):
        idx, mu = torch.as_tensor(p), torch.as_tensor(means[l][p], dtype=torch.float32)

        def pin(_m, args, idx=idx, mu=mu):
            x = args[0].clone()
            x[..., idx] = mu
            return (x,)
        hooks.append(pinned.adapter.ffn(l).output.register_forward_pre_hook(pin))
    expect = pinned(ids, mask)

    removed, zeroed = copy.deepcopy(tiny_model), copy.deepcopy(tiny_model)
    for m, edit in ((removed, remove_masked), (zeroed, zero_masked)):
        compensate_bias(m.adapter, pruned, [mu[p] for mu, p in zip(means, pruned)])
        edit(m.adapter, pruned)
    tolerance = forward_tolerance(tiny_model, expect)
    torch.testing.assert_close(removed(ids, mask), expect, atol=tolerance, rtol=0)
    torch.testing.assert_close(zeroed(ids, mask), expect, atol=tolerance, rtol=0)
    plain = copy.deepcopy(tiny_model)
    remove_masked(plain.adapter, pruned)
    assert not torch.allclose(plain(ids, mask), expect, atol=1e-4)  # the compensation is not a no-op


def test_stats_file_with_a_missing_layer_is_rejected(tmp_path):
    rows = pd.DataFrame({"layer": np.int16([0, 0, 2, 2]), "neuron": np.int32([0, 1, 0, 1]),
                         "mean": 0.0, "var": 1.0, "value_norm_sq": 1.0, "tokens": np.int64(4)})
    rows.to_parquet(tmp_path / "s.parquet")
    with pytest.raises(ValueError, match=r"s\.parquet: layers \[0, 2\] are not 0..L-1"):
        NeuronStats.from_files(tmp_path / "s.parquet")
    rows.assign(layer=np.int16([0, 0, 1, 1]), neuron=np.int32([0, 1, 0, 2])).to_parquet(tmp_path / "s.parquet")
    with pytest.raises(ValueError, match="layer 1 neurons are not 0..F-1"):
        NeuronStats.from_files(tmp_path / "s.parquet")
