"""Anatomy stage: extraction vs a direct forward pass, scores vs numpy, graph vs a hand-made case, lens."""
from __future__ import annotations

import copy

import networkx as nx
import numpy as np
import pandas as pd
import pytest
import torch

from conftest import ROOT, SHARED, forward_tolerance, make_tiny
from llm_anatomy.batching import encode
from llm_anatomy.extract import extract_targets, read_vectors, write_extraction
from llm_anatomy.graph import layer_counts, neuron_graph
from llm_anatomy.lens import head_direction, lens_logits, normed_states
from llm_anatomy.probes import ProbeError, anatomy_inputs, read_probes
from llm_anatomy.scores import (layer_cosines, layer_score_table, mean_layer_scores, mean_neuron_scores,
                                neuron_cosines, neuron_overlap, neuron_score_table)
from llm_anatomy.io import write_parquet


def _extract(model, tokenizer, texts, side="right"):
    enc = encode(tokenizer, texts, 48)
    return enc, extract_targets(model, enc, tokenizer.pad_token_id, side, batch_size=2)


@pytest.mark.parametrize("side", ["right", "left"])
def test_extraction_equals_direct_forward(tiny_model, tokenizer, reviews, side):
    adapter = tiny_model.adapter
    if side == "left" and not adapter.is_decoder:
        pytest.skip("BERT's absolute positions make left padding change the states; encoders pad right")
    enc, ex = _extract(tiny_model, tokenizer, reviews, side)
    for i, ids in enumerate(enc):  # each text alone, no padding: an independent pass
        x = torch.tensor([ids])
        mask = torch.ones_like(x)
        captured = {}
        hooks = [adapter.ffn(l).output.register_forward_hook(
            lambda m, a, o, l=l: captured.__setitem__(l, (a[0], o))) for l in range(adapter.num_layers)]
        with torch.no_grad():
            out = adapter.backbone(input_ids=x, attention_mask=mask, output_hidden_states=True)
            logit = tiny_model(x, mask)
        for h in hooks:
            h.remove()
        t = 0 if not adapter.is_decoder else len(ids) - 1
        direct = torch.stack([h[0, t] for h in out.hidden_states]).numpy()
        tol = forward_tolerance(tiny_model, direct)  # the extraction's batched pass against this unbatched one
        np.testing.assert_allclose(ex.hidden[i], direct, atol=tol, rtol=0)
        np.testing.assert_allclose(ex.logits[i], logit.item(), atol=tol, rtol=0)
        for l in range(adapter.num_layers):
            act, ffn_out = captured[l]
            np.testing.assert_allclose(ex.ffn[l][i], act[0, t].numpy(), atol=forward_tolerance(tiny_model, act), rtol=0)
            # activation @ value vectors + bias is the FFN output: the neuron axis is the right one
            v = adapter.value_vectors(l).numpy().astype(np.float64)
            b = adapter.ffn(l).output.bias
            bias = 0.0 if b is None else b.detach().numpy()  # Llama's down_proj has no bias
            np.testing.assert_allclose(ex.ffn[l][i] @ v + bias, ffn_out[0, t].numpy(), rtol=0,
                                       atol=forward_tolerance(tiny_model, ffn_out, act))


def test_parquet_roundtrip_and_layer_scores(tokenizer, reviews, tmp_path):
    model = make_tiny("gpt2", tokenizer)
    _, ex = _extract(model, tokenizer, reviews)
    inputs = anatomy_inputs(pd.DataFrame({"input_id": [7, 3], "subtask": ["a", "b"], "variant": ["x", "y"],
                                          "text": reviews[:2]}),
                            pd.DataFrame({"text": reviews[2:4], "label": [1, 0]}),
                            pd.DataFrame({"text": reviews[4:], "label": [1]}))
    write_extraction(ex, inputs, tmp_path / "h.parquet", tmp_path / "f.parquet", tmp_path / "i.parquet")
    keys, hidden = read_vectors(tmp_path / "h.parquet", "vector")
    assert keys["input_id"].tolist() == [7, 3, 0, 1, 0]
    np.testing.assert_array_equal(hidden, ex.hidden)
    _, acts = read_vectors(tmp_path / "f.parquet", "activation", input_set="calibration")
    np.testing.assert_array_equal(acts[:, 2], ex.ffn[2][2:4])

    cos = layer_cosines(hidden)
    h = hidden.astype(np.float64)
    expect = np.array([[np.dot(h[i, l], h[i, -1]) / np.linalg.norm(h[i, l]) / np.linalg.norm(h[i, -1])
                        for l in range(h.shape[1])] for i in range(len(h))])
    np.testing.assert_allclose(cos, expect, atol=1e-10)
    np.testing.assert_allclose(cos[:, -1], 1.0, atol=1e-12)
    write_parquet(layer_score_table(keys, cos), tmp_path / "ls.parquet")
    np.testing.assert_allclose(mean_layer_scores(tmp_path / "ls.parquet"), expect[:2].mean(0), atol=1e-6)


def test_neuron_scores_equal_numpy(tokenizer, reviews, tmp_path):
    model = make_tiny("bert", tokenizer)
    _, ex = _extract(model, tokenizer, reviews)
    values_t = [model.adapter.value_vectors(l) for l in range(model.adapter.num_layers)]
    final = ex.hidden[:, -1]
    s = neuron_cosines([v.numpy() for v in values_t], final)
    for l, v in enumerate(values_t):  # BERT: column j of output.dense.weight, cosine in torch
        w = model.adapter.ffn(l).output.weight.detach().double()  # [H, F]
        ref = torch.nn.functional.cosine_similarity(w.T[None, :, :], torch.from_numpy(final).double()[:, None, :], dim=-1)
        np.testing.assert_allclose(s[l], ref.numpy(), atol=1e-6)
    write_parquet(neuron_score_table(np.arange(len(reviews)), s), tmp_path / "ns.parquet")
    means = mean_neuron_scores(tmp_path / "ns.parquet")
    for l in range(len(s)):
        np.testing.assert_allclose(means[l], s[l].mean(0), atol=1e-6)


def test_overlap_hand_made():
    s = [np.array([[0.5, 0.4, 0.0, 0.0], [0.5, 0.0, 0.4, 0.0]])]  # sets {0,1} and {0,2}
    row = neuron_overlap(s, 0.35).iloc[0]
    assert row["mean_jaccard"] == pytest.approx(1 / 3)
    assert row["intersection_all"] == 1 and row["union_all"] == 3


def test_graph_matches_score_table(tmp_path):
    scores = [np.array([0.5, 0.1, 0.36, -0.4]), np.array([0.2, 0.9, 0.0]), np.array([0.35, -0.36, 0.8, 0.6])]
    g = neuron_graph(scores, 0.35)
    high = {"0:0", "0:2", "1:1", "2:2", "2:3"}
    assert {n for n, d in g.nodes(data=True) if d["kind"] == "high"} == high
    assert {n for n, d in g.nodes(data=True) if d["kind"] == "offset"} == {"0:3", "2:1"}
    assert set(g.edges()) == {("0:0", "1:1"), ("0:2", "1:1"), ("1:1", "2:2"), ("1:1", "2:3")}
    assert g.nodes["2:2"]["score"] == pytest.approx(0.8)
    counts = layer_counts(g)
    assert counts["n_high"].tolist() == [2, 1, 2] and counts["funnel_neck"].tolist() == [False, True, False]
    assert counts["edges_to_next"].tolist() == [2, 2, 0]
    nx.write_graphml(g, tmp_path / "g.graphml")
    back = nx.read_graphml(tmp_path / "g.graphml")
    assert set(back.edges()) == set(g.edges())


def test_lens_last_layer_is_the_model(tiny_model, tokenizer, reviews):
    _, ex = _extract(tiny_model, tokenizer, reviews)
    logits = lens_logits(tiny_model, ex.hidden)
    np.testing.assert_allclose(logits[:, -1], ex.logits, atol=1e-5)
    assert ((logits[:, -1] > 0) == (ex.logits > 0)).all()
    if tiny_model.adapter.is_decoder:  # intermediate layers go through the final norm first
        h = torch.from_numpy(ex.hidden[:, 1])
        normed = tiny_model.adapter.final_norm(h).detach()
        ref = tiny_model.head(normed).squeeze(-1).detach().numpy()
        np.testing.assert_allclose(logits[:, 1], ref, atol=1e-5)
        np.testing.assert_allclose(normed_states(tiny_model, ex.hidden)[:, 1], normed.numpy(), atol=1e-6)
    else:
        np.testing.assert_array_equal(normed_states(tiny_model, ex.hidden), ex.hidden)


def test_head_direction_gives_direct_effect(tokenizer):
    model = make_tiny("llama", tokenizer)
    with torch.no_grad():
        model.backbone.norm.weight.normal_(1, 0.3)
    x = torch.randn(3, model.adapter.hidden_size, dtype=torch.float64)
    rms = x.pow(2).mean(-1, keepdim=True).add(model.backbone.norm.variance_epsilon).sqrt()
    expect = (model.head.weight.double()[0] * model.backbone.norm.weight.double() * x / rms).sum(-1)
    got = (x.numpy() @ head_direction(model)) / rms[:, 0].numpy()
    np.testing.assert_allclose(got, expect.detach().numpy(), atol=1e-10)


def test_probe_files(tmp_path):
    ours = read_probes(ROOT / "resources" / "probes.tsv")
    assert len(ours) == 10 and ours["subtask"].nunique() == 5
    paper = SHARED / "data" / "probes" / "paper_table1.tsv"
    if paper.exists():
        assert read_probes(paper)["input_id"].tolist() == list(range(10))
    bad = tmp_path / "bad.tsv"
    bad.write_text("id\ttext\n0\thello\n")
    with pytest.raises(ProbeError, match="missing column"):
        read_probes(bad)
    empty = tmp_path / "empty.tsv"
    empty.write_text("")
    with pytest.raises(ProbeError, match=f"probe file {empty} is empty"):
        read_probes(empty)
    ids = tmp_path / "ids.tsv"
    ids.write_text("input_id\tsubtask\tvariant\ttext\nx1\ta\tb\thello\n")
    with pytest.raises(ProbeError, match=r"input_id must be an integer; found \['x1'\]"):
        read_probes(ids)


def test_share_lists_and_contributions_hand_made():
    from llm_anatomy.scores import contributions, high_neuron_lists, neuron_share

    s = [np.array([[0.5, -0.4, 0.36, 0.1], [0.2, 0.0, 0.9, -0.5]])]
    share = neuron_share([4, 9], s, 0.35)
    assert share["n_high"].tolist() == [2, 1] and share["n_negative"].tolist() == [1, 1]
    assert share["share_high"].tolist() == [0.5, 0.25]
    lists = high_neuron_lists([4, 9], s, 0.35)
    assert lists["neurons"].tolist() == ["0 2", "2"]  # highest score first

    rng = np.random.default_rng(0)
    a, v, w = rng.normal(size=(5, 4)), rng.normal(size=(4, 3)), rng.normal(size=3)
    c = contributions([a], [v], w, [np.zeros(4)])
    # summed over neurons, the direct contributions are the FFN output's projection on the head
    np.testing.assert_allclose(c["contribution"].sum(), ((a @ v) @ w).mean(), atol=1e-12)
    np.testing.assert_allclose(c["mean_abs_contribution"], np.abs(a * (v @ w)).mean(0), atol=1e-12)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_decoder_scorings_against_direct_computation(arch, tokenizer, reviews):
    """The prenorm target equals the backbone's output with its final norm removed; the gain scoring's
    vectors are what the real norm module does to a direction (its Jacobian at a token orthogonal to it)."""
    model = make_tiny(arch, tokenizer)
    adapter = model.adapter
    norm = adapter.final_norm_module()
    with torch.no_grad():  # a gain far from 1, with sign flips, as on SmolLM2
        norm.weight.copy_(torch.randn(norm.weight.shape, generator=torch.Generator().manual_seed(0)) * 1.5)
    enc, ex = _extract(model, tokenizer, reviews)
    owner = adapter.backbone
    attr = "ln_f" if arch == "gpt2" else "norm"
    setattr(owner, attr, torch.nn.Identity())
    try:
        for i, ids in enumerate(enc):
            x = torch.tensor([ids])
            with torch.no_grad():
                last = adapter.backbone(**adapter.forward_kwargs(x, torch.ones_like(x))).last_hidden_state
            np.testing.assert_allclose(ex.final_prenorm[i], last[0, -1].numpy(), atol=2e-5)
    finally:
        setattr(owner, attr, norm)
    assert not np.allclose(ex.final_prenorm, ex.hidden[:, -1], atol=1e-3)  # the norm does change it

    v = adapter.value_vectors(1).double()[:4]
    gained = adapter.norm_linear_part(v).numpy()
    norm64 = copy.deepcopy(norm).double()
    rng = np.random.default_rng(1)
    eps = 1e-3  # Llama's RMSNorm computes in float32 whatever the input dtype
    for j in range(len(v)):
        vj = v[j].numpy()
        vc = vj - vj.mean() if arch == "gpt2" else vj
        x0 = rng.normal(size=vj.shape)
        x0 = x0 - x0.mean() if arch == "gpt2" else x0
        x0 -= (x0 @ vc) / (vc @ vc) * vc  # a token orthogonal to the direction
        with torch.no_grad():  # central difference of the real module along v
            plus, minus = (norm64(torch.from_numpy(x0 + sign * eps * vj)).numpy() for sign in (1, -1))
        slope = (plus - minus) / (2 * eps)
        cos = slope @ gained[j] / np.linalg.norm(slope) / np.linalg.norm(gained[j])
        assert cos == pytest.approx(1.0, abs=1e-5)
    # the three scorings differ for a decoder with a non-trivial final norm
    values = [adapter.value_vectors(l).double().numpy() for l in range(adapter.num_layers)]
    paper = neuron_cosines(values, ex.hidden[:, -1].astype(np.float64))
    prenorm = neuron_cosines(values, ex.final_prenorm.astype(np.float64))
    assert not np.allclose(paper[0], prenorm[0], atol=1e-3)
    direct = np.array([[vv @ f / np.linalg.norm(vv) / np.linalg.norm(f) for vv in values[0]]
                       for f in ex.final_prenorm.astype(np.float64)])
    np.testing.assert_allclose(prenorm[0], direct, atol=1e-6)


def test_encoder_scorings_coincide(tokenizer, reviews):
    model = make_tiny("bert", tokenizer)
    _, ex = _extract(model, tokenizer, reviews)
    np.testing.assert_array_equal(ex.final_prenorm, ex.hidden[:, -1])
    v = model.adapter.value_vectors(0)
    assert torch.equal(model.adapter.norm_linear_part(v), v)
