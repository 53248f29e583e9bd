"""Speed plans that prune attention heads and FFN neurons together (`plan.plan_speed`), on tiny BERT, GPT-2 and
Llama: zeroed and removed compute the same function under every compensation (the joint refit included), the
materialised folder reloads with those logits, the plan file keeps its heads, the random baseline keeps the
plan's head configurations, and the joint refit of the attention output projection is numpy's least squares
on the tokens it was fitted on. (Ported from issue-27-joint 5772be7.)"""
import numpy as np
import pandas as pd
import pytest
import torch

from conftest import ARCHS, forward_tolerance, make_tiny
from llm_anatomy.batching import encode, pad
from llm_anatomy.data import read_split
from llm_anatomy.heads import check_heads
from llm_anatomy.models import load_classifier, open_checkpoint, save_classifier
from llm_anatomy.pruning.calibration import ffn_activation_stats
from llm_anatomy.pruning.criteria import NeuronStats
from llm_anatomy.pruning.head_compensation import kept_features
from llm_anatomy.pruning.joint import SpeedMethod, head_configurations, layer_choices
from llm_anatomy.pruning.latency import LatencyTable
from llm_anatomy.pruning.materialise import materialise, pruned_copy, zeroed_like
from llm_anatomy.pruning.plan import plan_speed, random_plan, read_plan, write_plan
from llm_anatomy.pruning.refit import CalibrationSet, fit_compensation
from test_pruning_refit import REVIEWS


def _tiny_table(model) -> LatencyTable:
    """A hand-made latency table for the tiny shapes: a layer costs 1 ms per kept head, 0.1 ms per key/value head
    and 0.05 ms per neuron."""
    a = model.adapter
    H, kv, F = a.attention(0).heads, a.attention(0).kv_heads, a.ffn_width(0)
    heads = head_configurations(H, kv)
    widths = [1, F // 2, F]
    body = np.array([[1e-3 * q + 1e-4 * k + 5e-5 * w for w in widths] for q, k in heads])
    sig = dict(shapes=dict(arch=a.arch, layers=a.num_layers, hidden=a.hidden_size, head_dim=a.attention(0).head_dim,
                           heads=H, kv_heads=kv, ffn_width=F))
    table = LatencyTable(sig, heads, widths, body, body / 4, base=1e-3, dense=0.0)
    table.dense = table.dense_predicted
    return table


def _speed_plan(model, structures="joint", compensation="refit", speedup=1.6, seed=0, tokenizer=None):
    rng = np.random.default_rng(seed)
    stats = None
    if compensation == "bias":  # the FFN's fold reads the calibration means
        means = ffn_activation_stats(model, encode(tokenizer, REVIEWS, 24), tokenizer.pad_token_id, "right", 3)
        stats = NeuronStats({"mean": [g["mean"].to_numpy() for _, g in means.groupby("layer")]})
    a = model.adapter
    choices = [layer_choices(structures, rng.random(a.ffn_width(l)), rng.random(a.attention(l).heads),
                             a.attention(l).kv_heads, width_steps=8) for l in range(a.num_layers)]
    # less kept, more loss: each structure's share falls linearly to 0 at the dense choice
    losses = [rng.random() * np.linspace(1, 0, len(c.heads))[:, None] + rng.random() * np.linspace(1, 0, len(c.widths))
              for c in choices]
    ridges = dict(ridge=1e-3, readout_ridge=1e-2) if compensation == "refit" else {}
    method = SpeedMethod("fluctuation" if structures != "heads" else "fisher", structures, compensation, speedup, **ridges)
    return plan_speed(method, choices, losses, _tiny_table(model), stats)


def _calibration(tokenizer):
    return CalibrationSet(encode(tokenizer, REVIEWS, 24), tokenizer.pad_token_id, "right", 3)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("compensation", ["none", "bias", "refit"])
@torch.no_grad()
def test_joint_plans_zeroed_equal_removed(arch, compensation, tokenizer, reviews):
    model = make_tiny(arch, tokenizer)
    plan = _speed_plan(model, "joint", compensation, tokenizer=tokenizer)
    assert sum(map(len, plan.pruned_heads)) > 0 and sum(plan.counts) > 0  # both structures pruned
    check_heads(model.adapter, plan.pruned_heads)  # grouped-query configurations only
    assert plan.info.search["predicted_speedup"] >= 1.6 - 1e-9
    # the predicted seconds, by hand from the table's formula (linear in the width, so interpolating it is exact; no
    # neurons or heads left cost one, as the layer keeps one, zeroed)
    t = plan.table
    last = t["layer"] == t["layer"].max()
    layer_ms = (t["heads_kept"].clip(lower=1) + 0.1 * t["kv_kept"].clip(lower=1)
                + 0.05 * (t["width"] - t["masked"]).clip(lower=1))
    by_hand = 1e-3 + 1e-3 * float(layer_ms[~last].sum() + layer_ms[last].sum() / 4)
    np.testing.assert_allclose(plan.info.search["predicted_seconds"], by_hand, rtol=1e-12)
    cal = _calibration(tokenizer)
    zeroed = pruned_copy(model, plan, "zeroed", cal)
    removed = pruned_copy(model, plan, "removed", cal)
    assert removed.adapter.head_counts() == t["heads_kept"].clip(lower=1).tolist()
    assert removed.adapter.kv_head_counts() == t["kv_kept"].clip(lower=1).tolist()
    assert removed.adapter.ffn_widths() == (t["width"] - t["masked"]).clip(lower=1).tolist()
    ids, mask = pad(tokenizer(reviews)["input_ids"], tokenizer.pad_token_id, "right")
    out = removed(ids, mask)
    # float32: the zeroed columns add exact zeros, the sums run in another order
    torch.testing.assert_close(zeroed(ids, mask), out, atol=forward_tolerance(model, out), rtol=0)
    assert (out - model(ids, mask)).abs().max() > 1e-4  # pruning changed something
    if plan.needs_calibration:  # the timing stage's zeroed model, rebuilt from the removed one
        torch.testing.assert_close(zeroed_like(model, removed, plan)(ids, mask), out, atol=forward_tolerance(model, out),
                                   rtol=0)


@pytest.mark.parametrize("arch", ARCHS)
def test_a_materialised_speed_plan_reloads(arch, tokenizer, reviews, tmp_path):
    model = make_tiny(arch, tokenizer)
    plan = _speed_plan(model, "joint", "refit")
    write_plan(plan, tmp_path / "plan.parquet")
    back = read_plan(tmp_path / "plan.parquet")
    assert [h.tolist() for h in back.pruned_heads] == [h.tolist() for h in plan.pruned_heads]
    assert back.info.search["target_speedup"] == 1.6 and back.fitted and back.spec == plan.spec
    save_classifier(model, tokenizer, tmp_path / "dense", dict(max_length=24, truncation_side="right",
                                                              padding_side="right", precision="fp32"))
    pd.DataFrame({"text": REVIEWS, "label": [1, 0] * 4}).to_parquet(tmp_path / "train.parquet")
    fit = dict(reviews=len(REVIEWS), batch_size=3)
    materialise(tmp_path / "dense", tmp_path / "plan.parquet", tmp_path / "pruned", "t", fit, tmp_path / "train.parquet")
    info = pd.read_json(tmp_path / "pruned" / "pruning.json", typ="series")
    assert info["heads_pruned"] == sum(map(len, plan.pruned_heads))
    assert info["attention_heads"] == plan.table["heads_kept"].clip(lower=1).tolist()
    loaded, _, _ = load_classifier(tmp_path / "pruned")
    ck = open_checkpoint(tmp_path / "dense")
    cal = CalibrationSet.from_split(read_split(tmp_path / "train.parquet"), ck, len(REVIEWS), 3)
    removed = pruned_copy(ck.model, back, "removed", cal)
    ids, mask = pad(tokenizer(reviews)["input_ids"], tokenizer.pad_token_id, "right")
    with torch.no_grad():
        out = removed(ids, mask)
        torch.testing.assert_close(loaded(ids, mask), out, atol=forward_tolerance(model, out), rtol=0)


@pytest.mark.parametrize("arch", ARCHS)
def test_random_baselines_keep_the_head_configurations(arch, tokenizer):
    model = make_tiny(arch, tokenizer)
    plan = _speed_plan(model, "heads", "bias", speedup=1.3, tokenizer=tokenizer)
    assert sum(plan.counts) == 0 and sum(map(len, plan.pruned_heads)) > 0
    scores = [np.zeros(w) for w in model.adapter.ffn_widths()]
    means = [np.zeros(w) for w in model.adapter.ffn_widths()]
    H, group = model.adapter.attention(0).heads, model.adapter.attention(0).group
    draws = set()
    for seed in range(5):
        rand = random_plan(plan, scores, seed, high=0.35, means=means)
        check_heads(model.adapter, rand.pruned_heads)
        assert rand.table["heads_pruned"].tolist() == [len(h) for h in plan.pruned_heads]
        for mine, theirs in zip(plan.pruned_heads, rand.pruned_heads):
            kept_m, kept_r = np.setdiff1d(np.arange(H), mine), np.setdiff1d(np.arange(H), theirs)
            assert len(kept_m) == len(kept_r) and len(np.unique(kept_m // group)) == len(np.unique(kept_r // group))
        draws.add(tuple(tuple(h.tolist()) for h in rand.pruned_heads))
    assert len(draws) > 1  # the seeds draw different heads


@pytest.mark.parametrize("arch", ARCHS)
def test_the_attention_refit_is_least_squares_on_its_tokens(arch, tokenizer):
    """One layer's heads pruned, nothing else: the fitted output projection (kept columns and bias) solves the
    ridge-free least squares of the dense attention output on the kept heads' outputs over the real tokens
    (the layer below is dense, so there is no drift to absorb). float64, so the fit and numpy's solve differ
    only by float64 rounding in another summation order."""
    model = make_tiny(arch, tokenizer).double()
    a = model.adapter
    L, layer = a.num_layers, 1
    assert layer < L - 1  # a token-level layer: fitted on every real token
    heads = [np.zeros(0, dtype=np.int64)] * L
    heads[layer] = np.array([0, 1]) if arch == "llama" else np.array([2])
    enc = encode(tokenizer, REVIEWS, 24)
    student, report = fit_compensation(model, [np.zeros(0, dtype=np.int64)] * L, enc, tokenizer.pad_token_id, "right",
                                       3, "refit", 0.0, heads=heads)
    row = [r for r in report if r["sublayer"] == "attention"]
    assert len(row) == 1 and row[0]["layer"] == layer and row[0]["tokens"] == sum(map(len, enc))
    block = a.attention(layer)
    kept = kept_features(block.heads, block.head_dim, heads[layer])
    seen = []
    with torch.no_grad():
        hook = block.output.register_forward_hook(lambda _m, args, out: seen.append((args[0][0], out[0])))
        for e in enc:  # one review at a time: no padding
            model(*pad([e], tokenizer.pad_token_id))
        hook.remove()
    x = torch.cat([s[0] for s in seen]).numpy()
    y = torch.cat([s[1] for s in seen]).numpy()
    design = np.concatenate([x[:, kept], np.ones((len(x), 1))], 1)
    solution = np.linalg.lstsq(design, y, rcond=None)[0]
    out = student.adapter.attention(layer).output
    w = (out.weight.detach().T if isinstance(out, torch.nn.Linear) else out.weight.detach()).numpy()
    scale = np.abs(solution).max()
    np.testing.assert_allclose(w[kept], solution[:-1], atol=1e-8 * scale)
    np.testing.assert_allclose(out.bias.detach().numpy(), solution[-1], atol=1e-8 * scale)
    assert row[0]["error_refit"] <= row[0]["error_bias"] <= row[0]["error_none"]
    assert student.adapter.head_counts() == model.adapter.head_counts()  # zeroed, not removed
    pruned_cols = np.setdiff1d(np.arange(block.heads * block.head_dim), kept)
    assert not w[pruned_cols].any()


@pytest.mark.parametrize("arch", ARCHS)
def test_a_bias_speed_plan_folds_the_pruned_heads_mean_output(arch, tokenizer):
    """The removed model's attention output bias is the dense one plus, over the pruned heads, their mean output
    on the calibration reviews' real tokens (measured here one review at a time) times their output columns."""
    model = make_tiny(arch, tokenizer).double()
    plan = _speed_plan(model, "heads", "bias", speedup=1.3, tokenizer=tokenizer)
    removed = pruned_copy(model, plan, "removed", _calibration(tokenizer))
    a, enc = model.adapter, encode(tokenizer, REVIEWS, 24)
    inputs = {l: [] for l in range(a.num_layers)}
    hooks = [a.attention(l).output.register_forward_pre_hook(lambda _m, args, l=l: inputs[l].append(args[0][0]))
             for l in range(a.num_layers)]
    with torch.no_grad():
        for e in enc:
            model(*pad([e], tokenizer.pad_token_id))
    for h in hooks:
        h.remove()
    for l, drop in enumerate(plan.pruned_heads):
        out = a.attention(l).output
        w = (out.weight.detach().T if isinstance(out, torch.nn.Linear) else out.weight.detach()).numpy()
        dense_bias = np.zeros(a.hidden_size) if out.bias is None else out.bias.detach().numpy()
        cols = np.setdiff1d(np.arange(w.shape[0]), kept_features(a.attention(l).heads, a.attention(l).head_dim, drop))
        expected = dense_bias + torch.cat(inputs[l]).numpy()[:, cols].mean(0) @ w[cols]
        got = removed.adapter.attention(l).output.bias
        if len(drop):
            assert np.abs(expected - dense_bias).max() > 1e-6  # the fold moved the bias
        np.testing.assert_allclose(got.detach().numpy() if got is not None else np.zeros(a.hidden_size), expected,
                                   atol=1e-12)
