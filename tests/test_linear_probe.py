"""Linear probes: the L-BFGS fit against an independent Newton solve of the same penalised likelihood,
its accuracy on a constructed separable case, and the per-layer table beside a lens that predicts one class."""
import numpy as np
import pytest
import torch

from llm_anatomy.linear_probe import (GTOL, Standardiser, fit_probe, layer_probes, logistic_fit, one_thread,
                                      stratified_folds)


def _newton(x, y, penalty, iters=100):
    """Newton's method on mean log(1 + exp(-s (x.w + b))) + penalty/2 ||w||^2 in numpy (b unpenalised):
    an independent solve, to machine precision. Returns theta and the Hessian at it."""
    n, d = x.shape
    xb = np.hstack([x, np.ones((n, 1))])
    s = 2.0 * y - 1.0
    reg = np.diag(np.r_[np.full(d, penalty), 0.0])
    theta = np.zeros(d + 1)
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(s * (xb @ theta)))  # sigmoid(-z)
        grad = xb.T @ (-s * p) / n + reg @ theta
        hess = (xb * (p * (1 - p))[:, None]).T @ xb / n + reg
        step = np.linalg.solve(hess, grad)
        theta -= step
        if np.abs(step).max() < 1e-14:
            break
    return theta, hess


@pytest.mark.parametrize("penalty", [1.0, 0.05])
def test_fit_equals_newton_solve(penalty):
    rng = np.random.default_rng(0)
    n, d = 300, 12
    x = rng.normal(size=(n, d))
    y = (x @ rng.normal(size=d) + 0.3 + rng.normal(scale=2.0, size=n) > 0).astype(np.int64)  # overlapping classes
    fit = logistic_fit(x, y, penalty)
    ref, hess = _newton(x, y, penalty)
    assert fit.converged
    # the fit stops once every gradient coordinate is <= GTOL: then |theta - theta*| <= |g| / lambda_min(H)
    bound = np.sqrt(d + 1) * GTOL / np.linalg.eigvalsh(hess).min()
    assert np.abs(fit.theta - ref).max() <= 1.05 * bound + 1e-12
    assert bound < 1e-4  # the comparison is a tight one


def test_separable_case_is_classified_exactly():
    """Two classes on either side of a hyperplane with a wide margin, in 40 dimensions: the cross-validated
    probe classifies fresh reviews from the same construction without error."""
    rng = np.random.default_rng(1)
    d = 40
    u = rng.normal(size=d)
    u /= np.linalg.norm(u)

    def draw(n):
        x = rng.normal(size=(n, d))
        y = rng.integers(0, 2, n)
        x += np.outer((2 * y - 1) * 3.0 - x @ u, u)  # distance +-3 from the plane x.u = 0 along u
        return x, y

    x_train, y_train = draw(200)
    x_val, y_val = draw(500)
    probe = fit_probe(x_train, y_train, [1e-3, 1e-2, 1e-1, 1.0, 10.0], folds=5, seed=0)
    pred = probe.logits(x_val) > 0
    assert (pred == (y_val == 1)).mean() == 1.0
    assert probe.cv["cv_accuracy"].max() == 1.0
    # the raw-space coefficients give the same logits as the standardised probe
    w, b = probe.raw_coefficients()
    np.testing.assert_allclose(x_val @ w + b, probe.logits(x_val), rtol=1e-10, atol=1e-10)


def test_layer_table_beside_a_constant_lens():
    """Layer 0 carries no information (every review the same vector, as BERT's CLS embedding), layer 1 is
    separable along a direction the 'head' ignores: the lens predicts one class on both (accuracy = the
    positive share of the labels), the probe is at chance on layer 0 and exact on layer 1."""
    rng = np.random.default_rng(2)
    d = 16

    def states(n):
        y = rng.integers(0, 2, n)
        h = np.zeros((n, 2, d))
        h[:, 0] = 1.5  # constant
        h[:, 1] = rng.normal(size=(n, d))
        h[:, 1, 0] = (2 * y - 1) * 2.0 + 0.1 * rng.normal(size=n)
        return h, y

    h_train, y_train = states(160)
    h_val, y_val = states(240)
    lens = np.full((len(y_val), 2), 3.0)  # the head says "positive" for everything
    head = [np.eye(d)[1], np.eye(d)[1]]   # ... and reads coordinate 1, which carries nothing
    table, cv, weights = layer_probes(h_train, y_train, h_val, y_val, lens, [0.01, 0.1, 1.0], 4, 0, head)
    assert table["lens_positive_share"].tolist() == [1.0, 1.0]
    np.testing.assert_allclose(table["lens_accuracy"], y_val.mean())
    assert table.loc[1, "probe_accuracy"] == 1.0 and table.loc[1, "probe_accuracy_lo"] == 1.0
    assert table.loc[0, "probe_positive_share"] in (0.0, 1.0)  # a constant input gives one class
    assert table.loc[0, "probe_accuracy_lo"] <= 0.5 <= table.loc[0, "probe_accuracy_hi"] + 0.1
    assert abs(table.loc[1, "head_cosine"]) < 0.2  # the probe's direction is not the head's
    assert len(cv) == 6 and cv.groupby("layer")["chosen"].sum().tolist() == [1, 1]
    assert len(weights.loc[1, "weight"]) == d
    assert (table["train_reviews"] == 160).all() and (table["validation_reviews"] == 240).all()


def test_standardiser_and_folds():
    x = np.c_[np.full(10, 7.0), np.arange(10.0)]
    z = Standardiser(x)(x)
    assert (z[:, 0] == 0).all() and z[:, 1].std() == pytest.approx(1.0)
    y = np.array([0] * 6 + [1] * 4)
    fold = stratified_folds(y, 2, seed=0)
    assert [int(((fold == k) & (y == 1)).sum()) for k in (0, 1)] == [2, 2]
    with pytest.raises(ValueError, match=r"5-fold cross-validation needs at least 5 reviews of each class; the "
                                         r"train sample has \[6, 4\].*anatomy.probe.train_reviews"):
        stratified_folds(y, 5, seed=0)
    with pytest.raises(ValueError, match=r"probe penalty 0.0 must be > 0 \(anatomy.probe.penalties\)"):
        logistic_fit(x, y, 0.0)


def test_one_thread_restores_the_setting():
    torch.set_num_threads(2)
    with one_thread():
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2
