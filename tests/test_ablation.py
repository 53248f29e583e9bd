"""Ablation against plain forward passes: the replayed, pinned forward equals a full forward with the
neuron's activation set to its mean; attribution patching equals a finite difference of that blend."""
import copy

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import ARCHS, forward_tolerance, make_tiny
from llm_anatomy.ablation import Ablator, ablation_tables, stratified_sample

LABELS = np.array([1, 0, 1, 1, 0])


def _margins_with(model, tokenizer, reviews, layer, neuron, value_of):
    """Per review, the margin (2y-1) * logit with neuron (layer, neuron) replaced by value_of(activation),
    every review run alone (no padding): a computation that shares nothing with the Ablator."""
    adapter = model.adapter
    out = []
    for text, y in zip(reviews, LABELS):
        ids = torch.tensor([tokenizer(text)["input_ids"]])
        def hook(_m, args):
            x = args[0].clone()
            x[..., neuron] = value_of(x[..., neuron])
            return (x,)
        h = adapter.ffn(layer).output.register_forward_pre_hook(hook) if layer is not None else None
        with torch.no_grad():
            out.append((2 * y - 1) * model(ids, torch.ones_like(ids)).item())
        if h is not None:
            h.remove()
    return np.array(out)


def _margin_with(model, tokenizer, reviews, layer, neuron, value_of):
    return float(_margins_with(model, tokenizer, reviews, layer, neuron, value_of).mean())


def _real_token_mean(model, tokenizer, reviews, layer, neuron):
    vals = []
    def hook(_m, args):
        vals.append(args[0][0, :, neuron].double())
    h = model.adapter.ffn(layer).output.register_forward_pre_hook(hook)
    with torch.no_grad():
        for text in reviews:
            ids = torch.tensor([tokenizer(text)["input_ids"]])
            model(ids, torch.ones_like(ids))
    h.remove()
    return float(torch.cat(vals).mean())


@pytest.mark.parametrize("arch", ARCHS)
def test_exact_effect_and_attribution_against_plain_forwards(arch, tokenizer, reviews):
    model = make_tiny(arch, tokenizer)
    encoded = tokenizer(reviews)["input_ids"]
    ab = Ablator(model, encoded, LABELS, tokenizer.pad_token_id, "right", batch_size=2)
    dense = _margin_with(model, tokenizer, reviews, None, 0, None)
    attribution = ab.attribution()
    for layer, neuron in [(0, 3), (1, 17)]:
        mean = _real_token_mean(model, tokenizer, reviews, layer, neuron)
        tol = forward_tolerance(model, mean)  # the Ablator's batched float32 pass against unbatched ones
        assert float(ab.means[layer][neuron]) == pytest.approx(mean, abs=tol)
        pinned = _margin_with(model, tokenizer, reviews, layer, neuron, lambda a: torch.full_like(a, mean))
        assert ab.effect({layer: np.array([neuron])}) == pytest.approx(pinned - dense, abs=2 * forward_tolerance(model, dense))
        eps = 1e-2  # a small step toward the mean: the effect divided by eps is the first-order estimate
        blend = _margin_with(model, tokenizer, reviews, layer, neuron, lambda a: a + eps * (mean - a))
        # the difference quotient carries both margins' float32 rounding divided by eps; 2% for its truncation
        assert attribution[layer][neuron] == pytest.approx((blend - dense) / eps, rel=0.02,
                                                           abs=2 * forward_tolerance(model, dense) / eps)
    # several neurons in several layers at once equal the plain computation too
    both = ab.effect({0: np.array([3]), 1: np.array([17])})
    assert np.isfinite(both)


@pytest.mark.parametrize("arch", ARCHS)
def test_batched_neuron_effects_with_readout_against_plain_forwards(arch, tokenizer, reviews):
    """Several neurons of a layer ablated in one pass (the batch repeated, each copy pinning its own neuron),
    the last block computed for the read token only: every review's margin change equals a plain forward
    with that neuron pinned to its mean, review by review; also for the last layer."""
    model = make_tiny(arch, tokenizer)
    ab = Ablator(model, tokenizer(reviews)["input_ids"], LABELS, tokenizer.pad_token_id, "right", batch_size=2)
    plain = copy.deepcopy(model)
    dense = _margins_with(plain, tokenizer, reviews, None, 0, None)
    np.testing.assert_allclose(ab.margins, dense, atol=2e-5)
    assert ab.use_readout() and not ab.use_readout()  # installed once
    last = model.adapter.num_layers - 1
    for layer, neurons in [(0, [3, 17, 5]), (1, [0, 63]), (last, [8, 9, 10, 11])]:
        ab.means[layer] = ab.means[layer].clone()  # pinned far from the mean: changes well above float32 rounding
        for j in neurons:
            ab.means[layer][j] += 2.0 * (j % 2 - 0.5)
        got = ab.neuron_effects(layer, neurons, per_pass=2)
        for row, j in zip(got, neurons):
            value = float(ab.means[layer][j])
            pinned = _margins_with(plain, tokenizer, reviews, layer, j, lambda a: torch.full_like(a, value))
            np.testing.assert_allclose(row, pinned - dense, atol=2e-5)
            assert np.abs(row).max() > 1e-3
        np.testing.assert_allclose(ab.neuron_effects(layer, neurons, per_pass=1), got, atol=1e-6)
    with pytest.raises(RuntimeError, match="attribution patching needs every token of the last block"):
        ab.attribution()


@pytest.mark.parametrize("arch", ARCHS)
def test_downstream_change_against_plain_forwards(arch, tokenizer, reviews):
    """The measured edge weight: the change of every next-block activation over the real tokens when one
    neuron is pinned to its mean, against full forwards of each review alone with and without the pin."""
    model = make_tiny(arch, tokenizer)
    ab = Ablator(model, tokenizer(reviews)["input_ids"], LABELS, tokenizer.pad_token_id, "right", batch_size=2)
    layer, neuron = 1, 17
    ab.means[layer] = ab.means[layer].clone()
    ab.means[layer][neuron] += 2.0  # pinned far from the mean: changes well above float32 rounding
    mean = float(ab.means[layer][neuron])
    diffs = []
    for text in reviews:
        ids = torch.tensor([tokenizer(text)["input_ids"]])
        acts = []
        grab = model.adapter.ffn(layer + 1).output.register_forward_pre_hook(lambda _m, a: acts.append(a[0][0]))
        for pinned in (False, True):
            def pin(_m, args):
                x = args[0].clone()
                x[..., neuron] = mean
                return (x,)
            h = model.adapter.ffn(layer).output.register_forward_pre_hook(pin) if pinned else None
            with torch.no_grad():
                model(ids, torch.ones_like(ids))
            if h is not None:
                h.remove()
        grab.remove()
        diffs.append((acts[1] - acts[0]).double())
    d = torch.cat(diffs)
    change, abs_change = ab.downstream_change(layer, neuron)
    np.testing.assert_allclose(change, d.mean(0).numpy(), atol=1e-6)
    np.testing.assert_allclose(abs_change, d.abs().mean(0).numpy(), atol=1e-6)
    assert abs_change.max() > 1e-3  # the pin does reach the next block
    np.testing.assert_allclose(ab.std[layer + 1], torch.stack([a for a in _all_acts(model, tokenizer, reviews,
                                                                                  layer + 1)]).double().std(0,
                               unbiased=False).numpy(), atol=1e-5)


def _all_acts(model, tokenizer, reviews, layer):
    acts = []
    h = model.adapter.ffn(layer).output.register_forward_pre_hook(lambda _m, a: acts.extend(a[0][0]))
    with torch.no_grad():
        for text in reviews:
            ids = torch.tensor([tokenizer(text)["input_ids"]])
            model(ids, torch.ones_like(ids))
    h.remove()
    return acts


def test_stratified_sample_and_tables(tokenizer, reviews):
    assert [l for l, _ in stratified_sample([10, 10, 10], 7, seed=0)] == [0] * 3 + [1] * 3 + [2] * 3
    model = make_tiny("llama", tokenizer)
    ab = Ablator(model, tokenizer(reviews)["input_ids"], LABELS, tokenizer.pad_token_id, "right", batch_size=4)
    widths = model.adapter.ffn_widths()
    rng = np.random.default_rng(0)
    scores = pd.DataFrame([dict(layer=l, neuron=j, cosine=rng.random(), contribution=rng.random(),
                                fluctuation=rng.random()) for l, w in enumerate(widths) for j in range(w)])
    table, agreement, tops, tails, timings = ablation_tables(ab, scores, [(1, 5)], per_layer=5, tail=2,
                                                             top_fraction=0.05, random_draws=4, seed=0, per_pass=3)
    assert table["in_sample"].sum() == 5 * len(widths) and table.loc[table["graph_node"], "neuron"].tolist() == [5]
    ablated = table["in_sample"] | table["graph_node"] | (table["tail_of"] != "")
    assert table.loc[ablated, ["exact_effect", "exact_abs_effect", "exact_loss_effect"]].notna().all().all()
    assert table.loc[~ablated, "exact_effect"].isna().all()
    # each score's tail: its 2 highest neurons in every layer
    for name in ("fluctuation", "attribution"):
        for layer, g in table.groupby("layer"):
            assert set(g.loc[g["tail_of"].str.contains(name), "neuron"]) == set(g.nlargest(2, name)["neuron"])
    # the summaries agree with the per-review effects they come from (one neuron per pass here, three in the
    # table: float32 rounding of margins of order 1 apart)
    row = table[table["in_sample"]].iloc[0]
    delta = ab.neuron_effects(int(row["layer"]), [int(row["neuron"])])[0]
    assert row["exact_effect"] == pytest.approx(delta.mean(), abs=1e-6)
    assert row["exact_abs_effect"] == pytest.approx(np.abs(delta).mean(), abs=1e-6)
    assert set(agreement["score"]) >= {"cosine", "contribution", "fluctuation", "activation", "attribution"}
    assert set(agreement["target"]) == {"abs_mean_margin", "mean_abs_logit", "exact_effect"}
    ok = agreement["spearman_lo"] <= agreement["spearman"]
    assert (ok & (agreement["spearman"] <= agreement["spearman_hi"])).all()
    assert len(tops) == 5 and (tops["random_draws"] == 4).all() and (tops["neurons"] == round(0.05 * sum(widths))).all()
    assert len(tails) == 10 and (tails["tail_neurons"] == 2 * len(widths)).all()
    assert timings["exact_neurons"] == ablated.sum()


def test_score_agreement_pooled_and_within_layers():
    """A score that ranks neurons perfectly inside each layer but whose scale runs against the effect's
    across layers: within-layer rho is 1, pooled rho is negative."""
    from llm_anatomy.ablation import SCORES, score_agreement

    rows = []
    for layer in range(3):
        for j in range(10):
            effect = (j + 1) * 10.0 ** (-layer)       # later layers: smaller effects
            score = (j + 1) * 10.0 ** layer           # later layers: larger scores
            rows.append(dict(layer=layer, neuron=j, in_sample=True, exact_effect=-effect,
                             exact_abs_effect=(10 - j) * 10.0 ** (-layer),  # the other target: ranked backwards
                             attribution_signed=-effect, **{name: score for name in SCORES}))
    table = pd.DataFrame(rows)
    ag = score_agreement(table, reviews=4).set_index(["score", "target"])
    assert ag.loc[("cosine", "abs_mean_margin"), "spearman_within_layer"] == pytest.approx(1.0)
    assert ag.loc[("cosine", "abs_mean_margin"), "spearman"] < 0
    assert ag.loc[("cosine", "mean_abs_logit"), "spearman_within_layer"] == pytest.approx(-1.0)
    assert ag.loc[("attribution_signed_vs_exact_signed", "exact_effect"), "spearman"] == pytest.approx(1.0)


def test_tail_agreement_hand_made():
    """Two layers of four random neurons (effects 1..4 and 10..40); fluctuation's tail (one per layer) beats
    both medians, cosine's tail loses to both: shares 1 and 0, percentiles against the layer's sample."""
    from llm_anatomy.ablation import SCORES, effect_summary, tail_agreement

    rows = []
    for layer, scale in ((0, 1.0), (1, 10.0)):
        for j, e in enumerate([1.0, 2.0, 3.0, 4.0]):
            rows.append(dict(layer=layer, neuron=j, in_sample=True, tail_of="", exact_effect=-e * scale,
                             exact_abs_effect=e * scale))
        rows.append(dict(layer=layer, neuron=10, in_sample=False, tail_of="fluctuation attribution",
                         exact_effect=-3.5 * scale, exact_abs_effect=5.0 * scale))
        rows.append(dict(layer=layer, neuron=11, in_sample=False, tail_of="cosine", exact_effect=-0.5 * scale,
                         exact_abs_effect=0.5 * scale))
    table = pd.DataFrame(rows).assign(**{name: 0.0 for name in SCORES})
    t = tail_agreement(table).set_index(["score", "target"])
    flu = t.loc[("fluctuation", "abs_mean_margin")]
    assert flu["tail_neurons"] == 2 and flu["above_layer_median"] == 2 and flu["share"] == 1.0
    assert flu["mean_percentile"] == pytest.approx(0.75)  # 3.5 is above 3 of the 4 sample effects
    assert flu["p_binomial"] == pytest.approx(0.5)        # two of two: 2 * (1/2)^2
    assert t.loc[("fluctuation", "mean_abs_logit"), "mean_percentile"] == 1.0
    cos = t.loc[("cosine", "mean_abs_logit")]
    assert cos["share"] == 0.0 and cos["mean_percentile"] == 0.0
    assert t.loc[("contribution", "mean_abs_logit"), "tail_neurons"] == 0

    margins = np.array([1.0, -2.0])
    s = effect_summary(np.array([[0.5, -1.0]]), margins)
    assert s["exact_effect"][0] == pytest.approx(-0.25) and s["exact_abs_effect"][0] == pytest.approx(0.75)
    softplus = lambda z: np.log1p(np.exp(z))  # noqa: E731
    expect = (softplus(-1.5) - softplus(-1.0) + softplus(3.0) - softplus(2.0)) / 2
    assert s["exact_loss_effect"][0] == pytest.approx(expect, rel=1e-12)


def test_edge_table_ranks_the_target_within_its_block(tokenizer, reviews):
    from llm_anatomy.ablation import edge_table

    model = make_tiny("gpt2", tokenizer)
    ab = Ablator(model, tokenizer(reviews)["input_ids"], LABELS, tokenizer.pad_token_id, "right", batch_size=2)
    _, abs_change = ab.downstream_change(0, 7)
    relative = abs_change / ab.std[1]
    top, low = int(np.argmax(relative)), int(np.argmin(relative))
    edges = edge_table(ab, [((0, 7), (1, top)), ((0, 7), (1, low))]).set_index("target")
    assert edges.loc[f"1:{top}", "measured"] and not edges.loc[f"1:{low}", "measured"]
    assert edges.loc[f"1:{top}", "percentile"] == pytest.approx((len(relative) - 1) / len(relative))
    assert edges.loc[f"1:{low}", "percentile"] == 0.0
    assert edges.loc[f"1:{top}", "relative_change"] == pytest.approx(relative[top])
    assert edge_table(ab, []).empty
