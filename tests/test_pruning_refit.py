"""Layer-by-layer compensation on tiny models: what the fit reports is what a plain forward pass of the
compensated model measures, compensation never raises the reconstruction error, and an unpruned
model is left as it was."""
import numpy as np
import pytest
import torch

from conftest import ARCHS, forward_tolerance, make_tiny
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
    """(dense, encoded reviews, pruned sets, student, report): a tiny model with half of every layer's neurons
    drawn at random, refitted on REVIEWS with ridge 1e-3 (and `kw`)."""
    dense = make_tiny(arch, tokenizer)
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
    teacher_sums, _ = _sums(dense.float(), ids, mask)
    student_sums, _ = _sums(student, ids, mask)
    m = mask.bool()
    last = torch.zeros_like(m)
    last[torch.arange(len(m)), dense.adapter.target_positions(mask)] = True
    for l, row in enumerate(report):
        sel = last if l == len(report) - 1 else m
        # the target at layer l: the teacher's sum; the student's sum differs by its FFN's error alone
        st, te = student_sums[l][sel], teacher_sums[l][sel]
        direct = float(((st - te) ** 2).sum())
        # both are sums of squared residuals r of float32 quantities that the fit's pass and this one round
        # differently, |dr| <= eps (|s| + |t|) entrywise: |d sum r^2| <= 2 eps |r| (|s| + |t|)
        eps = forward_tolerance(dense)
        spread = st.abs() + te.abs()
        bound = 2 * eps * float((st - te).norm()) * float(spread.norm()) + eps ** 2 * float(spread.square().sum())
        assert abs(row["error_refit"] - direct) <= bound, l
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


@pytest.mark.parametrize("arch", ARCHS)
def test_the_last_layer_takes_its_own_ridge(arch, tokenizer):
    """The last layer's fit, with `readout_ridge`, equals an augmented least-squares solve of
    [X 1; sqrt(lam) I 0] [W; c] = [Y; sqrt(lam) V_K] on the read tokens (no normal equations)."""
    dense, enc, pruned, student, report = _half_pruned_fit(arch, tokenizer, seed=1, readout_ridge=5.0)
    widths = dense.adapter.ffn_widths()
    assert [r["ridge"] for r in report] == [1e-3] * (len(widths) - 1) + [5.0]
    last = len(widths) - 1
    ids, mask = pad(enc, tokenizer.pad_token_id, "right")
    read = torch.zeros_like(mask, dtype=torch.bool)
    read[torch.arange(len(mask)), dense.adapter.target_positions(mask)] = True
    teacher_sums, _ = _sums(dense.float(), ids, mask)
    seen = {}
    ad = student.adapter
    site, arg = ad.residual_site(last)
    hooks = [site.register_forward_pre_hook(lambda _m, args: seen.__setitem__("r", args[arg])),
             ad.ffn(last).output.register_forward_pre_hook(lambda _m, args: seen.__setitem__("a", args[0]))]
    with torch.no_grad():
        student(ids, mask)
    for h in hooks:
        h.remove()
    kept = np.setdiff1d(np.arange(widths[last]), pruned[last])
    x = seen["a"][read].double().numpy()[:, kept]  # the student's lower layers are fitted; this layer's input is final
    y = (teacher_sums[last][read] - seen["r"][read].double()).numpy()
    v = dense.float().adapter.value_vectors(last).double().numpy()[kept]
    xc = x - x.mean(0)
    lam = 5.0 * np.trace(xc.T @ xc) / len(kept)
    a = np.block([[x, np.ones((len(x), 1))], [np.sqrt(lam) * np.eye(len(kept)), np.zeros((len(kept), 1))]])
    sol = np.linalg.lstsq(a, np.vstack([y, np.sqrt(lam) * v]), rcond=None)[0]
    got = np.vstack([student.adapter.value_vectors(last).double().numpy()[kept],
                     student.adapter.ffn(last).output.bias.detach().double().numpy()])
    tolerance = least_squares_tolerance(a, sol, np.vstack([y, np.sqrt(lam) * v]))
    assert (np.abs(got - sol) <= tolerance).all(), np.abs(got - sol).max()


def least_squares_tolerance(a: np.ndarray, sol: np.ndarray, b: np.ndarray) -> np.ndarray:
    """How far, entry by entry, a fit of the least-squares problem min ||a z - b|| may lie from `sol` when it was
    computed from float32 data that differ from `a` and `b` by rounding: the fit's pass batched the reviews
    differently from this test's pass, so each activation differs by up to EPS of its size (64 float32 ulps: four
    layers' accumulated rounding), and the fitted weights are stored in float32. First-order componentwise
    perturbation of the least-squares solution (Higham, Accuracy and Stability, section 20.1):
    |dz| <= EPS (|a+| (|b| + |a| |z|) + |(a^T a)^-1| |a|^T |r|), r = a z - b."""
    eps = 64 * np.finfo(np.float32).eps
    r = a @ sol - b
    bound = np.abs(np.linalg.pinv(a)) @ (np.abs(b) + np.abs(a) @ np.abs(sol))
    bound += np.abs(np.linalg.inv(a.T @ a)) @ np.abs(a).T @ np.abs(r)
    return eps * bound + np.finfo(np.float32).eps * np.abs(sol)
