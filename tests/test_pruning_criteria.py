"""Pruning criteria and closed-form compensation, against hand-made cases and independent solves."""
import numpy as np
import pytest
import torch

from conftest import make_tiny
from llm_anatomy.pruning.compensation import LayerStats, compensate
from llm_anatomy.pruning.criteria import CRITERIA, NeuronStats, importance


def _stats(**cols):
    return NeuronStats({k: [np.asarray(v, dtype=float)] for k, v in cols.items()})


def test_a_neuron_with_a_zero_value_vector_or_a_constant_activation_goes_first():
    base = dict(mean=[0.5, 1.0, 2.0, 0.3], var=[0.2, 0.0, 1.0, 0.4], mean_abs=[0.6, 1.0, 2.0, 0.5],
                value_norm_sq=[0.0, 1.0, 1.0, 1.0], in_norm_sq=[1.0, 1.0, 1.0, 1.0])
    s = _stats(**base)
    for name in ("weight", "wanda-sp"):  # neuron 0 writes nothing into the residual stream
        assert np.argmin(importance(name, s)[0]) == 0, name
    flu = importance("fluctuation", s)[0]  # neuron 0 (no output) and 1 (constant) cost nothing
    assert flu[0] == flu[1] == 0 and flu[2:].min() > 0
    np.testing.assert_allclose(importance("wanda-sp", s)[0], np.sqrt(base["value_norm_sq"])
                               * np.sqrt(np.array(base["var"]) + np.array(base["mean"]) ** 2))
    np.testing.assert_allclose(importance("cosine", _stats(cosine=[-0.5, 0.1]))[0], [0.5, 0.1])


def test_every_criterion_is_documented_and_names_its_missing_inputs():
    for c in CRITERIA.values():
        assert len(c.doc) > 40, c.name
    with pytest.raises(ValueError, match=r"'fisher' needs \['grad_sq'\], measured in \['mask_gradients'\]"):
        importance("fisher", _stats(mean=[1.0]))
    with pytest.raises(ValueError, match="is not one of"):
        importance("l2", _stats(mean=[1.0]))


def test_fisher_and_taylor_equal_finite_differences_of_the_loss(tokenizer, reviews):
    """One batch: g_j = dL/dm_j; the central difference of the loss in the mask of one neuron."""
    from llm_anatomy.batching import encode
    from llm_anatomy.pruning.gradients import gradient_table

    model = make_tiny("llama", tokenizer).double()
    enc = encode(tokenizer, reviews, 24)
    labels = [1, 0, 1, 1, 0]
    table = gradient_table(model, enc, labels, tokenizer.pad_token_id, "right", batch_size=len(enc))
    model = model.double()  # mask_gradients runs in float32; the difference quotient wants float64
    from llm_anatomy.batching import iter_padded, sorted_batches
    (idx, ids, mask), = list(iter_padded(enc, sorted_batches([len(e) for e in enc], len(enc)),
                                         tokenizer.pad_token_id))
    y = torch.tensor(labels, dtype=torch.float64)[idx]

    def loss(layer, neuron, m):
        def hook(_module, args):
            x = args[0].clone()
            x[..., neuron] *= m
            return (x,)
        h = model.adapter.ffn(layer).output.register_forward_pre_hook(hook)
        try:
            with torch.no_grad():
                return float(torch.nn.functional.binary_cross_entropy_with_logits(model(ids, mask), y))
        finally:
            h.remove()

    eps = 1e-2  # smooth in m; Llama computes its rotary embedding in float32 even in a float64 model, so a
    # smaller step drowns in that rounding, and the agreement is to about 1%
    for layer, neuron in ((0, 3), (1, 7)):
        g = (loss(layer, neuron, 1 + eps) - loss(layer, neuron, 1 - eps)) / (2 * eps)
        row = table[(table["layer"] == layer) & (table["neuron"] == neuron)].iloc[0]
        assert row["grad_sum"] == pytest.approx(g, rel=1e-2, abs=1e-8)
        assert row["grad_sq"] == pytest.approx(g * g, rel=2e-2, abs=1e-14)
        s = NeuronStats({k: [table[table["layer"] == l][k].to_numpy() for l in range(2)]
                         for k in ("grad_sum", "grad_sq", "batches")})
        assert importance("taylor", s)[layer][neuron] == pytest.approx(abs(g), rel=1e-2, abs=1e-8)


def test_weight_norms_and_activation_statistics_match_a_direct_computation(tokenizer, reviews):
    from llm_anatomy.batching import encode
    from llm_anatomy.pruning.calibration import ffn_activation_stats

    model = make_tiny("llama", tokenizer)
    mlp = model.backbone.layers[1].mlp
    expect = (mlp.gate_proj.weight.double() ** 2).sum(1) + (mlp.up_proj.weight.double() ** 2).sum(1)
    torch.testing.assert_close(model.adapter.input_norm_sq(1), expect.detach())
    gpt2 = make_tiny("gpt2", tokenizer)  # Conv1D stores [in, out]: neurons are columns of c_fc
    torch.testing.assert_close(gpt2.adapter.input_norm_sq(0),
                               (gpt2.backbone.h[0].mlp.c_fc.weight.double() ** 2).sum(0).detach())
    enc = encode(tokenizer, reviews[:4], 24)
    stats = ffn_activation_stats(model, enc, tokenizer.pad_token_id, "right", batch_size=2)
    acts = []
    h = mlp.down_proj.register_forward_pre_hook(lambda _m, a: acts.append(a[0].detach()))
    with torch.no_grad():
        for e in enc:  # one review at a time: no padding at all
            model(torch.tensor([e]), torch.ones(1, len(e), dtype=torch.long))
    h.remove()
    direct = torch.cat([a[0] for a in acts]).double().abs().mean(0).numpy()
    np.testing.assert_allclose(stats[stats["layer"] == 1]["mean_abs"].to_numpy(), direct, rtol=1e-5, atol=1e-7)


# ---- compensation ---------------------------------------------------------------------------
def _layer(seed=0, t=300, f=12, h=5):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(t, f)) @ rng.normal(size=(f, f)) * 0.5 + rng.normal(size=f)  # correlated neurons
    v, b = rng.normal(size=(f, h)), rng.normal(size=h)
    y = a @ v + b + 0.05 * rng.normal(size=(t, h))  # the dense output (and a little residual drift)
    stats = LayerStats(f, h)
    stats.add(a[:120], y[:120])
    stats.add(a[120:], y[120:])
    return a, y, v, b, stats


def _direct_error(a, y, kept, w, c):
    return float(((a[:, kept] @ w + c - y) ** 2).sum())


def test_refit_and_rescale_equal_independent_least_squares():
    a, y, v, b, stats = _layer()
    kept = np.array([0, 2, 3, 5, 8, 9, 11])
    k, h = len(kept), y.shape[1]
    ak = a[:, kept]
    ridge = 0.05
    lam = ridge * np.trace(np.cov(ak.T, bias=True) * len(a)) / k
    # refit: [A_K 1] [W; c] ~ y, with sqrt(lam) (W - V_K) ~ 0 appended
    x = np.vstack([np.hstack([ak, np.ones((len(a), 1))]), np.hstack([np.sqrt(lam) * np.eye(k), np.zeros((k, 1))])])
    rhs = np.vstack([y, np.sqrt(lam) * v[kept]])
    sol = np.linalg.lstsq(x, rhs, rcond=None)[0]
    w, c = compensate(stats, kept, v, b, "refit", ridge)
    np.testing.assert_allclose(w, sol[:k], rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(c, sol[k], rtol=1e-6, atol=1e-8)
    # rescale: unknowns s [k] and c [h]; column i holds a_ti v_ih over all (t, h)
    cols = [np.outer(ak[:, i], v[kept][i]).ravel() for i in range(k)]
    ind = [np.tile(np.eye(h)[j], len(a)) for j in range(h)]
    design = np.column_stack(cols + ind)
    lam_s = ridge * np.trace(np.cov(ak.T, bias=True) * len(a)) / k
    design = np.vstack([design, np.hstack([np.sqrt(lam_s) * np.eye(k), np.zeros((k, h))])])
    target = np.concatenate([y.ravel(), np.sqrt(lam_s) * np.ones(k)])
    sol = np.linalg.lstsq(design, target, rcond=None)[0]
    w, c = compensate(stats, kept, v, b, "rescale", ridge)
    np.testing.assert_allclose(w, sol[:k, None] * v[kept], rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(c, sol[k:], rtol=1e-6, atol=1e-8)
    # bias: the pruned neurons' mean output folded into b (FLAP), on the same tokens
    pruned = np.setdiff1d(np.arange(v.shape[0]), kept)
    w, c = compensate(stats, kept, v, b, "bias", 0.0)
    np.testing.assert_allclose(c, (y - ak @ v[kept]).mean(0), rtol=1e-9)
    np.testing.assert_allclose(c, b + a[:, pruned].mean(0) @ v[pruned], atol=0.02)  # up to the drift


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("ridge", [0.0, 1e-3, 1.0])
def test_compensation_never_increases_the_reconstruction_error(seed, ridge):
    a, y, v, b, stats = _layer(seed)
    rng = np.random.default_rng(seed + 10)
    kept = np.sort(rng.choice(v.shape[0], size=5, replace=False))
    err = {}
    for method in ("none", "bias", "rescale", "refit"):
        w, c = compensate(stats, kept, v, b, method, ridge)
        err[method] = _direct_error(a, y, kept, w, c)
        assert stats.error(kept, w, c) == pytest.approx(err[method], rel=1e-8)  # from the sums alone
    assert err["refit"] <= err["bias"] * (1 + 1e-9) and err["rescale"] <= err["bias"] * (1 + 1e-9)
    assert err["bias"] <= err["none"]
    if ridge == 0.0:
        assert err["refit"] <= err["rescale"] * (1 + 1e-9)


def test_the_obs_order_is_the_greedy_least_squares_order():
    """obs removes first the neuron whose loss, the kept ones refitted by least squares (bias free), adds
    the least error to the layer's output; checked by brute-force regressions for the first two steps.
    A neuron with a zero value vector or a constant activation costs nothing and goes first."""
    from llm_anatomy.pruning.obs import obs_order
    rng = np.random.default_rng(0)
    f, h, t = 10, 4, 300
    a = rng.normal(size=(t, f)) @ rng.normal(size=(f, f)) * 0.5 + rng.normal(size=f)
    v = rng.normal(size=(f, h))
    y = a @ v

    def refit_error(keep):
        x = np.c_[a[:, keep], np.ones(t)]
        coef, *_ = np.linalg.lstsq(x, y, rcond=None)
        return ((x @ coef - y) ** 2).sum() / t

    rank, delta = obs_order(v, np.cov(a.T, bias=True), ridge=0.0)
    assert sorted(rank) == list(range(f))
    errors = {j: refit_error([k for k in range(f) if k != j]) for j in range(f)}
    first = min(errors, key=errors.get)
    assert rank[first] == 0 and delta[first] == pytest.approx(errors[first], rel=1e-6)
    rest = [k for k in range(f) if k != first]
    errors2 = {j: refit_error([k for k in rest if k != j]) for j in rest}
    second = min(errors2, key=errors2.get)
    assert rank[second] == 1 and delta[second] == pytest.approx(errors2[second] - errors[first], rel=1e-6)

    a[:, 3] = 2.0  # constant: the refitted bias replaces it exactly
    v[7] = 0.0  # writes nothing
    rank, delta = obs_order(v, np.cov(a.T, bias=True), ridge=0.0)
    assert set(np.argsort(rank)[:2]) == {3, 7} and delta[3] == pytest.approx(0, abs=1e-9) and delta[7] == 0
    assert importance("obs", _stats(obs_rank=rank))[0].tolist() == rank.tolist()

