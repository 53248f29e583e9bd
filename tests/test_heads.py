"""Attention heads as a prunable structure: zeroing and removal compute the same function, grouped-query
plans stay consistent, the bias fold equals pinning the removed heads to their mean output, per-layer
head counts save and reload (with per-layer FFN widths), and the evaluation loop runs them."""
import copy
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import ARCHS, make_tiny
from rounding import rounding_bound
from llm_anatomy.batching import encode, pad, progress_batches
from llm_anatomy.inference import inference_model, predict_logits
from llm_anatomy.heads import check_heads, remove_heads, zero_masked_heads
from llm_anatomy.models import load_classifier, read_meta, save_classifier
from llm_anatomy.pruning.head_compensation import fold_head_bias, head_output_means
from llm_anatomy.surgery import remove_masked
from test_readout import TEXTS, unpadded_logits

# Per layer of the tiny models (4 layers of 4 query heads; Llama: 2 key/value heads, groups {0, 1} and {2, 3}):
# some heads, most heads, every head (one is kept, zeroed), none.
PLANS = {"bert": [[1], [0, 2, 3], [0, 1, 2, 3], []],
         "gpt2": [[1], [0, 2, 3], [0, 1, 2, 3], []],
         # a whole key/value group; one query head from each group; every head; none
         "llama": [[2, 3], [0, 3], [0, 1, 2, 3], []]}
KEPT = {"bert": [[0, 2, 3], [1], [0], [0, 1, 2, 3]], "gpt2": [[0, 2, 3], [1], [0], [0, 1, 2, 3]],
        "llama": [[0, 1], [1, 2], [0], [0, 1, 2, 3]]}
KV_HEADS = {"bert": [3, 1, 1, 4], "gpt2": [3, 1, 1, 4], "llama": [1, 2, 1, 2]}


def _batch(tokenizer, reviews):
    return pad(tokenizer(reviews)["input_ids"], tokenizer.pad_token_id, "right")


@pytest.mark.parametrize("arch", ARCHS)
@torch.no_grad()
def test_zeroed_heads_equal_removed(arch, tokenizer, reviews):
    ids, mask = _batch(tokenizer, reviews)
    model = make_tiny(arch, tokenizer)
    zeroed, removed = copy.deepcopy(model), copy.deepcopy(model)
    zero_masked_heads(zeroed.adapter, PLANS[arch])
    remove_heads(removed.adapter, PLANS[arch])
    assert removed.adapter.head_counts() == [len(k) for k in KEPT[arch]]
    assert removed.adapter.kv_head_counts() == KV_HEADS[arch]
    assert [removed.adapter.kept_heads(l) for l in range(4)] == KEPT[arch]
    assert zeroed.adapter.head_counts() == model.adapter.head_counts()  # zeroing keeps every shape
    assert sum(p.numel() for p in removed.parameters()) < sum(p.numel() for p in model.parameters())
    # In float64 the two differ by rounding alone (the zeroed columns add exact zeros; the sums are ordered
    # differently): far below 1e-9 on logits of order 1.
    z64, r64 = copy.deepcopy(zeroed).double(), copy.deepcopy(removed).double()
    torch.testing.assert_close(z64(ids, mask), r64(ids, mask), atol=1e-9, rtol=0)
    # In float32 the same rounding is a few ulps per operation: 1e-5 leaves two orders of magnitude.
    torch.testing.assert_close(zeroed(ids, mask), removed(ids, mask), atol=1e-5, rtol=0)
    assert (zeroed(ids, mask) - model(ids, mask)).abs().max() > 1e-4  # pruning changed something


@torch.no_grad()
def test_grouped_query_plans_keep_the_groups_consistent(tokenizer, reviews):
    model = make_tiny("llama", tokenizer)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for bad in ([0], [3]):  # the groups would keep 1 and 2, or 2 and 1 query heads
        with pytest.raises(ValueError, match="layer 0: the heads kept per key/value group"):
            remove_heads(model.adapter, [bad, [], [], []])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # refused before any change
    with pytest.raises(ValueError, match=r"layer 1: pruned heads \[4\] outside 0..3"):
        check_heads(model.adapter, [[], [4], [], []])
    # whole groups: a key/value head goes with its group; the same count per group: every key/value head stays
    removed = copy.deepcopy(model)
    remove_heads(removed.adapter, [[0, 1], [1, 3], [], []])
    att = [removed.adapter.attention(l) for l in range(2)]
    assert [(a.heads, a.kv_heads, a.group) for a in att] == [(2, 1, 2), (2, 2, 1)]
    assert removed.adapter.layers()[1].self_attn.num_key_value_groups == 1
    ids, mask = _batch(tokenizer, reviews)
    zeroed = copy.deepcopy(model)
    zero_masked_heads(zeroed.adapter, [[0, 1], [1, 3], [], []])
    torch.testing.assert_close(zeroed(ids, mask), removed(ids, mask), atol=1e-5, rtol=0)


def _pinned(model, pruned, means):
    """`model` with the pruned heads' outputs replaced by their means on every token (forward pre-hooks
    on the output projections), the function a bias fold should compute."""
    def hook(layer):
        block = model.adapter.attention(layer)

        def pin(_module, args):
            x = args[0].clone().view(*args[0].shape[:-1], block.heads, block.head_dim)
            for h in pruned[layer]:
                x[..., h, :] = torch.as_tensor(means[layer][h], dtype=x.dtype)
            return (x.view(args[0].shape),)
        return pin
    return [model.adapter.attention(l).output.register_forward_pre_hook(hook(l)) for l in range(len(pruned))]


@pytest.mark.parametrize("arch", ARCHS)
@torch.no_grad()
def test_bias_fold_equals_heads_pinned_to_their_means(arch, tokenizer, reviews):
    model = make_tiny(arch, tokenizer)
    encoded = encode(tokenizer, TEXTS, 32)
    means = head_output_means(model, encoded, tokenizer.pad_token_id, batch_size=2)
    # the means are plain averages of the output projection's input over real tokens (here one review at a
    # time, unpadded: the same float32 values up to rounding, ~1e-7 relative on values below 1)
    seen = []
    hook = model.adapter.attention(1).output.register_forward_pre_hook(lambda _m, a: seen.append(a[0][0].double()))
    for ids in encoded:
        model(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long))
    hook.remove()
    np.testing.assert_allclose(means[1].reshape(-1), torch.cat(seen).mean(0).numpy(), rtol=0, atol=1e-6)

    pruned = PLANS[arch]
    folded = copy.deepcopy(model)
    fold_head_bias(folded.adapter, pruned, means)
    remove_heads(folded.adapter, pruned)
    plain = copy.deepcopy(model)
    remove_heads(plain.adapter, pruned)
    pinned = copy.deepcopy(model)
    hooks = _pinned(pinned, pruned, means)
    ids, mask = _batch(tokenizer, reviews)
    expect = pinned(ids, mask)
    for h in hooks:
        h.remove()
    torch.testing.assert_close(folded(ids, mask), expect, atol=1e-5, rtol=0)
    assert (plain(ids, mask) - expect).abs().max() > 1e-4  # the fold is what makes them equal
    if arch == "llama":
        assert folded.backbone.config.attention_bias and folded.adapter.attention(0).output.bias is not None


FRESH = """
import sys, numpy as np, torch
from llm_anatomy.models import load_classifier
model, _, _ = load_classifier(sys.argv[1])
ids, mask = (torch.from_numpy(np.load(sys.argv[2] + f)) for f in ("ids.npy", "mask.npy"))
with torch.no_grad():
    np.save(sys.argv[2] + "logits.npy", model(ids, mask).numpy())
print(model.adapter.head_counts(), model.adapter.kv_head_counts(), model.adapter.ffn_widths())
"""


@pytest.mark.parametrize("arch", ARCHS)
@torch.no_grad()
def test_heads_and_widths_save_and_reload_in_a_fresh_process(arch, tokenizer, reviews, tmp_path):
    model = make_tiny(arch, tokenizer)
    means = head_output_means(model, encode(tokenizer, TEXTS, 32), tokenizer.pad_token_id)
    pruned = copy.deepcopy(model)
    fold_head_bias(pruned.adapter, PLANS[arch], means)  # Llama: saved with attention biases
    remove_heads(pruned.adapter, PLANS[arch])
    rng = np.random.default_rng(0)
    remove_masked(pruned.adapter, [rng.choice(w, w // 3 + 8 * l, replace=False) for l, w in
                                   enumerate(pruned.adapter.ffn_widths())])
    save_classifier(pruned, tokenizer, tmp_path / "ckpt", dict(max_length=64))
    meta = read_meta(tmp_path / "ckpt")
    assert meta["attention_heads"] == pruned.adapter.head_counts() == [len(k) for k in KEPT[arch]]
    assert meta["kv_heads"] == KV_HEADS[arch] and meta["kept_heads"] == KEPT[arch]
    ids, mask = _batch(tokenizer, reviews)
    np.save(tmp_path / "ids.npy", ids.numpy())
    np.save(tmp_path / "mask.npy", mask.numpy())
    out = subprocess.run([sys.executable, "-c", FRESH, str(tmp_path / "ckpt"), f"{tmp_path}/"], check=True,
                         capture_output=True, text=True)
    counts = f"{pruned.adapter.head_counts()} {KV_HEADS[arch]} {pruned.adapter.ffn_widths()}"
    assert out.stdout.strip().splitlines()[-1] == counts
    np.testing.assert_allclose(np.load(tmp_path / "logits.npy"), pruned(ids, mask).numpy(), rtol=0, atol=1e-5)
    again, _, _ = load_classifier(tmp_path / "ckpt")
    assert [again.adapter.kept_heads(l) for l in range(4)] == KEPT[arch]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("arch", ARCHS)
def test_the_evaluation_loop_runs_per_layer_head_counts(arch, side, precision, tokenizer):
    """inference_model's last-block readout and fused FFN maps, on a model with heads and neurons removed,
    against the plain forward one review at a time."""
    if arch == "bert" and side == "left":
        pytest.skip("BERT's absolute positions count from the first token, pads included: right padding only")
    model = make_tiny(arch, tokenizer)
    remove_heads(model.adapter, PLANS[arch][::-1])  # every head of the last layer but one, via the readout block
    remove_masked(model.adapter, [list(range(0, w, 3)) for w in model.adapter.ffn_widths()])
    encoded = encode(tokenizer, TEXTS, 32)
    expected = unpadded_logits(model, encoded)
    got = predict_logits(inference_model(model, precision), encoded, tokenizer.pad_token_id, batch_size=3,
                         precision=precision, padding_side=side)
    tol = 0.05 if precision == "bf16" else 1e-5  # as test_readout: bf16 weights, or float32 rounding
    assert np.abs(got - expected).max() < tol * max(1.0, float(np.abs(expected).max()))


@pytest.mark.parametrize("arch", ARCHS)
def test_forward_macs_count_the_kept_heads(arch, tokenizer):
    from test_readout import counted_linear_macs

    from llm_anatomy.costs import forward_macs
    model = make_tiny(arch, tokenizer)
    remove_heads(model.adapter, PLANS[arch])
    runner = inference_model(model, "fp32", fuse=False)
    widths = [len(k) * 8 for k in KEPT[arch]]  # kept query heads x head_dim (hidden 32 / 4 heads)
    for T in (1, 7, 19):
        every, read = 2 * T * T * sum(widths), 2 * T * T * sum(widths[:-1]) + 2 * T * widths[-1]
        assert forward_macs(model.adapter, [T], readout=False) == counted_linear_macs(model, T) + every
        assert forward_macs(model.adapter, [T]) == counted_linear_macs(runner, T) + read


@pytest.mark.parametrize("arch", ARCHS)
def test_head_refit_is_the_least_squares_fit_of_the_dense_output(arch, tokenizer):
    """The refit of the output projection (compensation.compensate's closed form, ridge 0) against numpy's
    least squares on the same tokens: the kept heads' outputs with an intercept, regressed on the dense
    projection's output; the bias method against the fold. In float64 (the fit keeps the model's dtype): with
    ridge 0 the solve amplifies rounding in its inputs by its condition number squared, which float32 rounding in
    another summation order could push past any fixed tolerance (`rounding.rounding_bound`)."""
    from llm_anatomy.pruning.head_compensation import fit_head_outputs, kept_features

    model = make_tiny(arch, tokenizer).double()
    encoded = encode(tokenizer, TEXTS * 4, 32)  # 100+ tokens: more samples than a layer's 16-32 kept features
    inputs, outputs, state = {l: [] for l in range(4)}, {l: [] for l in range(4)}, {}

    def grab(layer):
        def hook(_module, args, output):
            inputs[layer].append(args[0][state["mask"]].double())
            outputs[layer].append(output[state["mask"]].double())
        return hook
    hooks = [model.adapter.attention(l).output.register_forward_hook(grab(l)) for l in range(4)]
    with torch.no_grad():  # the fit's batches, real tokens only
        for _idx, ids, mask in progress_batches(encoded, 3, tokenizer.pad_token_id):
            state["mask"] = mask.bool()
            model(ids, mask)
    for h in hooks:
        h.remove()
    pruned = PLANS[arch]
    refit, folded = copy.deepcopy(model), copy.deepcopy(model)
    report = fit_head_outputs(refit, pruned, encoded, tokenizer.pad_token_id, batch_size=3, method="refit", ridge=0.0)
    fit_head_outputs(folded, pruned, encoded, tokenizer.pad_token_id, batch_size=3, method="bias")
    means = head_output_means(model, encoded, tokenizer.pad_token_id)
    fold = copy.deepcopy(model)
    fold_head_bias(fold.adapter, pruned, means)
    for r in report:
        l, block = r["layer"], model.adapter.attention(r["layer"])
        kept = kept_features(block.heads, block.head_dim, pruned[l])
        a, y = torch.cat(inputs[l]).numpy()[:, kept], torch.cat(outputs[l]).numpy()
        design = np.hstack([a, np.ones((len(a), 1))])
        solution = np.linalg.lstsq(design, y, rcond=None)[0]  # [kept + 1, hidden]: weights, then the bias
        out = refit.adapter.attention(l).output
        weight = out.weight.detach().double().numpy()
        rows = weight if arch == "gpt2" else weight.T  # GPT-2's Conv1D holds [in, out], Linear [out, in]
        # the same samples; normal equations against an SVD solve, both in float64
        tol = rounding_bound(design, y, np.zeros_like(y), solution)
        np.testing.assert_allclose(rows[kept], solution[:-1], rtol=0, atol=tol)
        np.testing.assert_allclose(out.bias.detach().numpy(), solution[-1], rtol=0, atol=tol)
        assert r["error_refit"] <= r["error_bias"] <= r["error_none"]
        torch.testing.assert_close(folded.adapter.attention(l).output.bias, fold.adapter.attention(l).output.bias,
                                   atol=1e-6, rtol=0)
    zeroed_heads = copy.deepcopy(refit)
    remove_heads(refit.adapter, pruned)  # the fitted, zeroed model and its removed form: the same function
    ids, mask = _batch(tokenizer, TEXTS)
    with torch.no_grad():
        torch.testing.assert_close(zeroed_heads(ids, mask), refit(ids, mask), atol=1e-5, rtol=0)
