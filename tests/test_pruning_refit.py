"""Layer-by-layer compensation on tiny models: what the fit reports is what a plain forward pass of the
compensated model measures, compensation never raises the reconstruction error, and an unpruned
model is left as it was.

The models are float64 (the fit keeps a float64 model's dtype): the fit and the independent solves see the same
forward passes up to float64 rounding in another summation order (the fit's batches of 3 and replayed blocks,
the checks' one batch), and the tolerances are that rounding carried through each problem's conditioning
(`rounding.rounding_bound`). In float32 the same rounding, amplified by the last layer's condition number and by the
cancellation in its target (FFN output = dense sum - student residual), moved BERT's solution by up to 1e-4:
more than any fixed tolerance that still pins the fit down, and dependent on the thread count."""
import numpy as np
import pytest
import torch

from conftest import ARCHS, forward_tolerance, make_tiny
from rounding import ROUNDING, rounding_bound
from llm_anatomy.batching import encode, pad
from llm_anatomy.pruning.refit import fit_compensation

REVIEWS = ["a wonderful film with superb acting and a lovely score", "dull, I walked out after twenty minutes",
           "the plot twists kept me guessing until the very last scene", "not bad at all",
           "an overlong mess that wastes a talented cast", "funny, warm and far too short",
           "I have seen better student films", "a masterpiece of quiet, patient storytelling"]


def _sums(model, ids, mask):
    """Per layer, FFN output + residual at every position: a full forward pass, no replay."""
    a, seen, hooks = model.adapter, {}, []
    for l in range(a.num_layers):
        site, arg = a.residual_site(l)
        hooks.append(site.register_forward_pre_hook(lambda _m, args, l=l, arg=arg: seen.__setitem__(("r", l), args[arg])))
        hooks.append(a.ffn(l).output.register_forward_hook(lambda _m, _a, out, l=l: seen.__setitem__(("y", l), out)))
    with torch.no_grad():
        logits = model(ids, mask)
    for h in hooks:
        h.remove()
    return [(seen[("y", l)] + seen[("r", l)]).double() for l in range(a.num_layers)], logits


def _half_pruned_fit(arch, tokenizer, seed, **kw):
    """(dense, encoded reviews, pruned sets, student, report): a float64 tiny model with half of every layer's
    neurons drawn at random, refitted on REVIEWS with ridge 1e-3 (and `kw`)."""
    dense = make_tiny(arch, tokenizer).double()
    enc = encode(tokenizer, REVIEWS, 24)
    rng = np.random.default_rng(seed)
    pruned = [np.sort(rng.choice(w, size=w // 2, replace=False)) for w in dense.adapter.ffn_widths()]
    student, report = fit_compensation(dense, pruned, enc, tokenizer.pad_token_id, "right", batch_size=3, method="refit",
                                       ridge=1e-3, **kw)
    return dense, enc, pruned, student, report


@pytest.mark.parametrize("arch", ARCHS)
def test_the_reported_error_is_what_the_compensated_model_computes(arch, tokenizer):
    dense, enc, pruned, student, report = _half_pruned_fit(arch, tokenizer, seed=0)
    widths = dense.adapter.ffn_widths()
    ids, mask = pad(enc, tokenizer.pad_token_id, "right")
    teacher_sums, _ = _sums(dense, ids, mask)
    student_sums, _ = _sums(student, ids, mask)
    m = mask.bool()
    last = torch.zeros_like(m)
    last[torch.arange(len(m)), dense.adapter.target_positions(mask)] = True
    for l, row in enumerate(report):
        sel = last if l == len(report) - 1 else m
        # the target at layer l: the teacher's sum; the student's sum differs by its FFN's error alone
        direct = float(((student_sums[l] - teacher_sums[l])[sel] ** 2).sum())
        # both are sums of squares that cancel down to the error from terms the size of the sums themselves
        tol = ROUNDING * float(teacher_sums[l][sel].norm() + student_sums[l][sel].norm()) ** 2
        assert row["error_refit"] == pytest.approx(direct, rel=0, abs=tol), l
        assert row["error_refit"] <= row["error_bias"] * (1 + 1e-9) <= row["error_none"] * (1 + 1e-9) + 1e-12
        assert row["kept"] == widths[l] - len(pruned[l]) and row["tokens"] == int(sel.sum())
    # pruned neurons stay pruned: their value vectors are zero in the student
    for l, drop in enumerate(pruned):
        assert student.adapter.value_vectors(l)[torch.as_tensor(drop)].abs().max() == 0


@pytest.mark.parametrize("arch", ARCHS)
def test_an_unpruned_model_is_left_as_it_was(arch, tokenizer):
    dense = make_tiny(arch, tokenizer)
    enc = encode(tokenizer, REVIEWS, 24)
    student, report = fit_compensation(dense, [np.array([], dtype=np.int64)] * dense.adapter.num_layers, enc,
                                       tokenizer.pad_token_id, "right", batch_size=4, method="refit", ridge=1e-2)
    ids, mask = pad(enc, tokenizer.pad_token_id, "right")
    with torch.no_grad():
        expect = dense.float()(ids, mask)  # the fit returns V exactly (float64), stored in float32: one ulp per weight
        torch.testing.assert_close(student(ids, mask), expect, atol=forward_tolerance(dense, expect), rtol=0)
    assert all(r["error_none"] < 1e-6 for r in report)


def _layer_inputs(student, layer, ids, mask):
    """(kept-or-not activations [B, S, F], residual [B, S, H]) entering layer `layer`'s FFN output in a plain pass."""
    seen, ad = {}, student.adapter
    site, arg = ad.residual_site(layer)
    hooks = [site.register_forward_pre_hook(lambda _m, args: seen.__setitem__("r", args[arg])),
             ad.ffn(layer).output.register_forward_pre_hook(lambda _m, args: seen.__setitem__("a", args[0]))]
    with torch.no_grad():
        student(ids, mask)
    for h in hooks:
        h.remove()
    return seen["a"].double(), seen["r"].double()


def _weighted_ridge_solve(x, h, r, u, v, ridge):
    """(W, c, tolerance): the fit of y = h - r as a plain weighted least-squares problem, no normal equations:
    rows sqrt(u_t) [x_t 1] -> sqrt(u_t) y_t, plus sqrt(lambda) I -> sqrt(lambda) V_K, lambda = ridge x trace of
    the weighted centred Gram / |K|; the tolerance is what rounding can change in the solution
    (`rounding.rounding_bound`)."""
    xm = u @ x / u.sum()
    xc = (x - xm) * np.sqrt(u)[:, None]
    lam = ridge * np.trace(xc.T @ xc) / x.shape[1]
    s = np.sqrt(u)[:, None]
    a = np.block([[x * s, s], [np.sqrt(lam) * np.eye(x.shape[1]), np.zeros((x.shape[1], 1))]])
    b_plus, b_minus = np.vstack([h * s, np.sqrt(lam) * v]), np.vstack([r * s, np.zeros_like(v)])
    sol = np.linalg.lstsq(a, b_plus - b_minus, rcond=None)[0]
    return sol[:-1], sol[-1], rounding_bound(a, b_plus, b_minus, sol)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("token_weights,readout_context", [("uniform", 0.0), ("norm", 0.0), ("uniform", 0.3),
                                                           ("norm", 0.3)])
def test_each_layer_is_the_weighted_least_squares_solve(arch, tokenizer, token_weights, readout_context):
    """Every layer's fit (its own ridge for the last) equals an independent weighted least-squares solve on the
    tokens it is fitted on: weight 1, or 1 / the dense residual stream's mean square there (centred for a
    LayerNorm) under `norm`; the last layer on the read token, plus every other real token at `readout_context`."""
    dense, enc, pruned, student, report = _half_pruned_fit(arch, tokenizer, seed=1, readout_ridge=5.0,
                                                           token_weights=token_weights, readout_context=readout_context)
    widths = dense.adapter.ffn_widths()
    last = len(widths) - 1
    assert [r["ridge"] for r in report] == [1e-3] * last + [5.0]
    ids, mask = pad(enc, tokenizer.pad_token_id, "right")
    read = torch.zeros_like(mask, dtype=torch.bool)
    read[torch.arange(len(mask)), dense.adapter.target_positions(mask)] = True
    teacher_sums, _ = _sums(dense, ids, mask)
    centred = arch != "llama"  # BERT's and GPT-2's LayerNorm centre; Llama's RMSNorm does not
    for layer in (0, last):
        on = mask.bool() if (layer < last or readout_context > 0) else read
        u = torch.ones(mask.shape, dtype=torch.float64)
        if layer == last:
            u = torch.where(read, u, u * readout_context)
        h = teacher_sums[layer]
        if token_weights == "norm":
            hc = h - h.mean(-1, keepdim=True) if centred else h
            u = u / (hc * hc).mean(-1)
        a, r = _layer_inputs(student, layer, ids, mask)
        kept = np.setdiff1d(np.arange(widths[layer]), pruned[layer])
        x = a[on].numpy()[:, kept]  # the lower layers are fitted: this layer's input is final
        v = dense.adapter.value_vectors(layer).numpy()[kept]
        w, c, tol = _weighted_ridge_solve(x, h[on].numpy(), r[on].numpy(), u[on].numpy(), v,
                                          5.0 if layer == last else 1e-3)
        np.testing.assert_allclose(student.adapter.value_vectors(layer).numpy()[kept], w, rtol=0, atol=tol)
        np.testing.assert_allclose(student.adapter.ffn(layer).output.bias.detach().numpy(), c, rtol=0, atol=tol)
        assert report[layer]["tokens"] == int(on.sum())


@pytest.mark.parametrize("arch", ARCHS)
def test_the_head_refit_is_the_ridge_solve_to_the_dense_logits(arch, tokenizer):
    """The refitted head equals an augmented least-squares solve from the student's read-token hidden states
    (after the final norm) to the dense model's logits, held toward the dense head by the relative ridge."""
    dense, enc, pruned, student, _report = _half_pruned_fit(arch, tokenizer, seed=2, head_ridge=0.5)
    ids, mask = pad(enc, tokenizer.pad_token_id, "right")
    with torch.no_grad():
        z = student.target_tokens(student.adapter.last_hidden_state(ids, mask), mask).numpy()
        target = dense(ids, mask).numpy()[:, None]
    w0 = dense.head.weight.detach().numpy().reshape(-1)
    w, c, tol = _weighted_ridge_solve(z, target, np.zeros_like(target), np.ones(len(z)), w0[:, None], 0.5)
    np.testing.assert_allclose(student.head.weight.detach().numpy().reshape(-1), w[:, 0], rtol=0, atol=tol)
    assert float(student.head.bias.detach()) == pytest.approx(float(c[0]), rel=0, abs=tol)
    target = target[:, 0]
    # the student's logits now track the dense ones at least as well as with the dense head
    with torch.no_grad():
        refitted = student(ids, mask).numpy()
        student.head.load_state_dict(dense.head.state_dict())
        kept_head = student(ids, mask).numpy()
    assert ((refitted - target) ** 2).sum() <= ((kept_head - target) ** 2).sum() + 1e-9


def test_token_weights_and_readout_context_are_checked_before_any_work(tokenizer):
    dense = make_tiny("llama", tokenizer)
    with pytest.raises(ValueError, match="token_weights 'rms' is not one of"):
        fit_compensation(dense, [], [[1, 2]], 0, "right", 4, "refit", 1e-2, token_weights="rms")
    with pytest.raises(ValueError, match="readout_context = -1"):
        fit_compensation(dense, [], [[1, 2]], 0, "right", 4, "refit", 1e-2, readout_context=-1)
