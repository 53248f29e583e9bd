"""Per-review effects of heads and neurons (`pruning.attribution`) and the head criteria built on them, against
independent computations on tiny BERT, GPT-2 and Llama in float64: the mask gradients (and so Kwon et al.'s
Fisher) and the mean-ablation attributions against central finite differences of the model with a mask or a
blend applied by a hook; the output norms against the head outputs written out; the exact head ablation against
a plain forward pass of the model with the head's mean folded into the bias and the head zeroed."""
import copy

import numpy as np
import pytest
import torch

from conftest import ARCHS, make_tiny
from llm_anatomy.ablation import Ablator
from llm_anatomy.batching import encode, pad
from llm_anatomy.heads import zero_masked_heads
from llm_anatomy.pruning.attribution import review_effects
from llm_anatomy.pruning.head_compensation import fold_head_bias, head_output_weights
from llm_anatomy.pruning.head_criteria import HEAD_CRITERIA, criterion_agreement, head_importance, head_stats_frame
from llm_anatomy.pruning.sensitivity import head_sensitivity

LABELS = np.array([1, 0, 1, 1, 0])
EPS = 1e-4  # central differences in float64: truncation error ~ EPS^2, far below the tolerances


@pytest.fixture(autouse=True)
def _rmsnorm_in_float64(monkeypatch):
    """transformers' LlamaRMSNorm computes in float32 whatever its input (a no-op for float32 models): in a
    float64 model that rounding (1e-7) swamps a finite difference. The same formula in the input's dtype."""
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    def forward(self, x):
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))
    monkeypatch.setattr(LlamaRMSNorm, "forward", forward)


def _setup(arch, tokenizer, reviews):
    model = make_tiny(arch, tokenizer).double()
    enc = encode(tokenizer, reviews, 24)
    return model, enc


@torch.no_grad()
def _review_margins(model, enc, pad_id, hook_site=None, make_hook=None):
    """Per-review margin (2y - 1) x logit of a plain forward pass, each review alone, with an optional pre-hook."""
    handle = hook_site.register_forward_pre_hook(make_hook) if hook_site is not None else None
    try:
        return np.array([float((2.0 * y - 1.0) * model(*pad([e], pad_id))) for e, y in zip(enc, LABELS)])
    finally:
        if handle is not None:
            handle.remove()


def _review_losses(*args):
    return np.logaddexp(0.0, -_review_margins(*args))


def _head_mask(block, head, m):
    def hook(_module, args):
        x = args[0].clone()
        view = x.view(*x.shape[:-1], block.heads, block.head_dim)
        view[..., head, :] *= m
        return (x, *args[1:])
    return hook


@pytest.mark.parametrize("arch", ARCHS)
def test_head_mask_gradients_and_fisher_match_finite_differences(arch, tokenizer, reviews):
    model, enc = _setup(arch, tokenizer, reviews)
    effects = review_effects(model, enc, LABELS, tokenizer.pad_token_id, batch_size=2, neurons=False)
    grads = effects.loss_gradient_scale()[:, None]  # dl_i/dm_h = this x S_ih
    stats = head_stats_frame(effects)
    for layer in range(model.adapter.num_layers):
        block = model.adapter.attention(layer)
        for head in range(block.heads):
            up = _review_losses(model, enc, tokenizer.pad_token_id, block.output, _head_mask(block, head, 1 + EPS))
            down = _review_losses(model, enc, tokenizer.pad_token_id, block.output, _head_mask(block, head, 1 - EPS))
            fd = (up - down) / (2 * EPS)
            np.testing.assert_allclose(grads[:, 0] * effects.head_s[layer][:, head], fd, rtol=1e-6, atol=1e-10)
            row = stats[(stats["layer"] == layer) & (stats["head"] == head)].iloc[0]
            assert row["grad_sq"] == pytest.approx(float((fd ** 2).sum()), rel=1e-6, abs=1e-14)  # Kwon's Fisher
            assert row["grad_sum"] == pytest.approx(float(fd.sum()), rel=1e-6, abs=1e-10)


@pytest.mark.parametrize("arch", ARCHS)
def test_head_attribution_is_the_derivative_of_the_mean_ablation_blend(arch, tokenizer, reviews):
    """A_ih = d margin_i / d eps of the head's output moved eps of the way to its mean (any mean: a random one)."""
    model, enc = _setup(arch, tokenizer, reviews)
    effects = review_effects(model, enc, LABELS, tokenizer.pad_token_id, batch_size=3, neurons=False)
    rng = np.random.default_rng(0)
    means = [rng.normal(size=(model.adapter.attention(l).heads, model.adapter.attention(l).head_dim))
             for l in range(model.adapter.num_layers)]
    attr = effects.head_attribution(means)
    for layer in (0, model.adapter.num_layers - 1):
        block = model.adapter.attention(layer)
        for head in range(block.heads):
            mu = torch.as_tensor(means[layer][head])

            def blend(eps):
                def hook(_module, args):
                    x = args[0].clone()
                    view = x.view(*x.shape[:-1], block.heads, block.head_dim)
                    view[..., head, :] += eps * (mu - view[..., head, :])
                    return (x, *args[1:])
                return hook
            up, down = (_review_margins(model, enc, tokenizer.pad_token_id, block.output, blend(e)) for e in (EPS, -EPS))
            np.testing.assert_allclose(attr[layer][:, head], (up - down) / (2 * EPS), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(effects.margins, _review_margins(model, enc, tokenizer.pad_token_id), rtol=1e-9)


@pytest.mark.parametrize("arch", ARCHS)
def test_neuron_effects_match_finite_differences(arch, tokenizer, reviews):
    model, enc = _setup(arch, tokenizer, reviews)
    effects = review_effects(model, enc, LABELS, tokenizer.pad_token_id, batch_size=2)
    grads = effects.loss_gradient_scale()
    layer = 1
    out = model.adapter.ffn(layer).output
    for j in (0, 7, 33):
        def scale(m):
            def hook(_module, args):
                x = args[0].clone()
                x[..., j] *= m
                return (x, *args[1:])
            return hook
        fd = (_review_losses(model, enc, tokenizer.pad_token_id, out, scale(1 + EPS))
              - _review_losses(model, enc, tokenizer.pad_token_id, out, scale(1 - EPS))) / (2 * EPS)
        np.testing.assert_allclose(grads * effects.neuron_s[layer][:, j], fd, rtol=1e-5, atol=1e-9)
    # neuron_s and neuron_g are kept in float32 (SmolLM2 has 46k neurons per review): the mean-ablation
    # attribution at the mean 0 is -S
    np.testing.assert_allclose(effects.neuron_attribution([np.zeros(w) for w in model.adapter.ffn_widths()])[layer],
                               -effects.neuron_s[layer], rtol=0, atol=0)


@pytest.mark.parametrize("arch", ARCHS)
@torch.no_grad()
def test_head_norm_and_fluctuation_are_the_head_outputs_statistics(arch, tokenizer, reviews):
    model, enc = _setup(arch, tokenizer, reviews)
    effects = review_effects(model, enc, LABELS, tokenizer.pad_token_id, batch_size=2, neurons=False)
    stats = head_stats_frame(effects)
    layer = 2
    block = model.adapter.attention(layer)
    w = head_output_weights(model.adapter, layer)  # [heads, head_dim, hidden]
    seen = []
    handle = block.output.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    for e in enc:
        model(*pad([e], tokenizer.pad_token_id))
    handle.remove()
    o = torch.cat([s[0] for s in seen]).view(-1, block.heads, block.head_dim)  # every token is real (one review)
    c = torch.einsum("thd,hdo->tho", o, w).numpy()  # each head's output in the residual stream
    rows = stats[stats["layer"] == layer]
    np.testing.assert_allclose(rows["norm"], np.linalg.norm(c, axis=-1).mean(0), rtol=1e-9)
    np.testing.assert_allclose(rows["fluctuation"], ((c - c.mean(0)) ** 2).sum(-1).mean(0), rtol=1e-7)
    assert effects.tokens == len(o)


@pytest.mark.parametrize("arch", ARCHS)
def test_exact_head_ablation_equals_the_folded_and_zeroed_model(arch, tokenizer, reviews):
    """head_sensitivity (replayed blocks, heads pinned by a hook) against a plain forward pass of a model whose
    pruned heads' means are folded into the bias and whose heads are zeroed; and zeroing alone. In float32, as
    the Ablator runs: mean losses of order 1 agree to float32 rounding (a few 1e-7), far below the effects."""
    model, enc = _setup(arch, tokenizer, reviews)
    model.float()
    pad_id = tokenizer.pad_token_id
    effects = review_effects(model, enc, LABELS, pad_id, batch_size=2, neurons=False)
    means = effects.head_means()
    heads = {"llama": [0, 1]}.get(arch, [0, 1, 3])  # Llama: a whole key/value group
    layer = 2
    ablator = Ablator(copy.deepcopy(model), enc, LABELS, pad_id, "right", 2)
    options = [[] for _ in range(model.adapter.num_layers)]
    options[layer] = [np.array(heads)]
    pinned = head_sensitivity(ablator, options, [torch.as_tensor(m) for m in means]).iloc[0]
    zeroed = head_sensitivity(ablator, options, None).iloc[0]
    dense = _review_losses(model, enc, pad_id)
    plan = [[] for _ in range(model.adapter.num_layers)]
    plan[layer] = heads
    folded = copy.deepcopy(model)
    fold_head_bias(folded.adapter, plan, means)
    zero_masked_heads(folded.adapter, plan)
    only_zeroed = copy.deepcopy(model)
    zero_masked_heads(only_zeroed.adapter, plan)
    for row, m in ((pinned, folded), (zeroed, only_zeroed)):
        direct = float((_review_losses(m, enc, pad_id) - dense).mean())
        assert row["loss_increase"] == pytest.approx(direct, abs=2e-6)
        assert abs(direct) > 2e-5  # the ablation changed something


def test_criteria_registry_and_agreement(tokenizer, reviews):
    model, enc = _setup("bert", tokenizer, reviews)
    stats = head_stats_frame(review_effects(model, enc, LABELS, tokenizer.pad_token_id, batch_size=2, neurons=False))
    for name in HEAD_CRITERIA:
        imp = head_importance(name, stats)
        assert [len(x) for x in imp] == model.adapter.head_counts() and all(np.isfinite(x).all() for x in imp)
    with pytest.raises(ValueError, match="head criterion 'bogus' is not one of"):
        head_importance("bogus", stats)
    table = stats[["layer", "head"]].copy()
    table["a"] = np.arange(len(table), dtype=float)
    table["b"] = -table["a"]
    table["effect"] = table["a"] ** 3  # monotone in a: rho 1 pooled and within every layer
    agree = criterion_agreement(table, ["a", "b"], ["effect"]).set_index("criterion")
    assert agree.loc["a", "spearman"] == pytest.approx(1.0) and agree.loc["a", "spearman_within_layer"] == pytest.approx(1.0)
    assert agree.loc["b", "spearman"] == pytest.approx(-1.0)


def test_sensitivities_log_ablations_done_of_all(tokenizer, reviews, monkeypatch, caplog):
    """head_sensitivity and sensitivity_table report progress as ablations done of all (an empty head set runs
    none), through the package's log lines (a line on every update here)."""
    import logging

    from llm_anatomy.progress import LogProgress
    from llm_anatomy.pruning import sensitivity

    monkeypatch.setattr(sensitivity, "progress", lambda total, desc: LogProgress(total=total, desc=desc, interval=0))
    model, enc = _setup("bert", tokenizer, reviews)
    ablator = Ablator(model.float(), enc, LABELS, tokenizer.pad_token_id, "right", 2)
    L = model.adapter.num_layers
    options = [[] for _ in range(L)]
    options[0] = [np.array([], dtype=np.int64), np.array([0])]
    options[1] = [np.array([1, 2])]
    with caplog.at_level(logging.INFO, logger="llm_anatomy.progress"):
        sensitivity.head_sensitivity(ablator, options, None, desc="heads")
        sensitivity.sensitivity_table(ablator, [np.arange(w, dtype=float) for w in model.adapter.ffn_widths()], [0.5],
                                      desc="neurons")
    lines = [r.getMessage().split(",")[0] for r in caplog.records]
    assert lines == ["heads: 1/2 (50%)", "heads: 2/2 (100%)"] + [f"neurons: {i}/{L} ({100 * i / L:.0f}%)"
                                                                  for i in range(1, L + 1)]
