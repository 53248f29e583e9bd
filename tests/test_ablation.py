"""Ablation against plain forward passes: the replayed, pinned forward equals a full forward with the
neuron's activation set to its mean; attribution patching equals a finite difference of that blend."""
import numpy as np
import pandas as pd
import pytest
import torch

from conftest import ARCHS, forward_tolerance, make_tiny
from llm_anatomy.ablation import Ablator, ablation_tables, stratified_sample

LABELS = np.array([1, 0, 1, 1, 0])


def _margin_with(model, tokenizer, reviews, layer, neuron, value_of):
    """Mean margin (2y-1) * logit with neuron (layer, neuron) replaced by value_of(activation), every
    review run alone (no padding): a computation that shares nothing with the Ablator."""
    adapter = model.adapter
    total = 0.0
    for text, y in zip(reviews, LABELS):
        ids = torch.tensor([tokenizer(text)["input_ids"]])
        def hook(_m, args):
            x = args[0].clone()
            x[..., neuron] = value_of(x[..., neuron])
            return (x,)
        h = adapter.ffn(layer).output.register_forward_pre_hook(hook) if layer is not None else None
        with torch.no_grad():
            total += (2 * y - 1) * model(ids, torch.ones_like(ids)).item()
        if h is not None:
            h.remove()
    return total / len(reviews)


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


def test_stratified_sample_and_tables(tokenizer, reviews):
    assert [l for l, _ in stratified_sample([10, 10, 10], 7, seed=0)] == [0] * 3 + [1] * 3 + [2] * 3
    model = make_tiny("llama", tokenizer)
    ab = Ablator(model, tokenizer(reviews)["input_ids"], LABELS, tokenizer.pad_token_id, "right", batch_size=4)
    widths = model.adapter.ffn_widths()
    rng = np.random.default_rng(0)
    scores = pd.DataFrame([dict(layer=l, neuron=j, cosine=rng.random(), contribution=rng.random(),
                                fluctuation=rng.random()) for l, w in enumerate(widths) for j in range(w)])
    table, agreement, tops = ablation_tables(ab, scores, [(1, 5)], sample_size=20, top_fraction=0.05,
                                             random_draws=4, seed=0)
    assert table["in_sample"].sum() == 20 and table.loc[table["graph_node"], "neuron"].tolist() == [5]
    assert table.loc[table["in_sample"] | table["graph_node"], "exact_effect"].notna().all()
    assert set(agreement["score"]) >= {"cosine", "contribution", "fluctuation", "activation", "attribution"}
    assert ((agreement["spearman_lo"] <= agreement["spearman"]) & (agreement["spearman"] <= agreement["spearman_hi"])).all()
    assert len(tops) == 5 and (tops["random_draws"] == 4).all() and (tops["neurons"] == round(0.05 * sum(widths))).all()


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
                             attribution_signed=-effect, **{name: score for name in SCORES}))
    table = pd.DataFrame(rows)
    ag = score_agreement(table, reviews=4).set_index("score")
    assert ag.loc["cosine", "spearman_within_layer"] == pytest.approx(1.0)
    assert ag.loc["cosine", "spearman"] < 0
    assert ag.loc["attribution_signed_vs_exact_signed", "spearman"] == pytest.approx(1.0)
