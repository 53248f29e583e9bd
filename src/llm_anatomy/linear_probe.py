"""Linear probes: how much of the label each layer's target token carries, read by a fitted linear
classifier instead of the fine-tuned head (docs/ANATOMY.md, "Linear probe beside the lens").

The classifier lens thresholds the final head at 0 on every layer: an accuracy of 0.50 there may mean
that the layer holds no sentiment, or only that the head's direction and offset do not fit it (one
constant class). A probe answers the first question. Per layer l = 0..L (hidden_states.parquet's
layers: embeddings to the final, normed state):
  features   the target token's hidden state, standardised with the train reviews' mean and standard
             deviation (a constant coordinate, such as BERT's CLS embedding at layer 0, becomes 0)
  model      logistic regression, minimising
                 mean_i log(1 + exp(-s_i (x_i . w + b))) + penalty / 2 * ||w||^2,   s_i = 2 y_i - 1,
             the intercept b unpenalised, by L-BFGS (torch.optim) in float64
  penalty    chosen from `penalties` by stratified K-fold cross-validation on the train reviews only
             (smallest mean held-out log loss), then refitted on all train reviews
  scored     on the validation reviews the lens reads: accuracy with its 95% bootstrap interval and
             the share predicted positive (a constant class shows as 0 or 1)

linear_probe.csv, one row per layer: layer, train_reviews, validation_reviews, penalty, cv_log_loss,
  cv_accuracy, train_accuracy, probe_accuracy (+ _lo, _hi), probe_positive_share, lens_accuracy (+ _lo,
  _hi), lens_positive_share, head_cosine (cosine between the probe's weight vector in the hidden space
  and the direction the lens reads there, `lens.head_direction` below layer L), converged, iterations.
linear_probe_cv.csv, one row per (layer, penalty): cv_log_loss, cv_accuracy, chosen.
linear_probe_weights.parquet, one row per layer: layer, penalty, intercept, weight (list<float64>[H]):
  the refitted probe in the unstandardised hidden space, logit = hidden . weight + intercept.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from .stats import accuracy_interval

log = logging.getLogger(__name__)

MAX_ITER = 5000  # L-BFGS iterations per fit; a weak penalty on separable states needs the most
GTOL = 1e-7  # stop when every gradient coordinate of the mean loss is below this


@dataclass(frozen=True)
class Fit:
    theta: np.ndarray  # [w (standardised space), b]
    converged: bool    # the largest gradient coordinate reached GTOL
    iterations: int


def logistic_fit(x: np.ndarray, y: np.ndarray, penalty: float, start: np.ndarray | None = None) -> Fit:
    """Minimise the objective above over theta = [w, b] by torch's L-BFGS (strong Wolfe line search), in float64;
    `start` warm-starts it (e.g. the fit at a larger penalty). torch, not scipy: it runs on the job's torch
    threads (`models.set_threads`), where scipy's L-BFGS-B calls a BLAS that starts one thread per core
    whatever the job was given, many times slower on a shared machine."""
    if penalty <= 0:
        raise ValueError(f"probe penalty {penalty} must be > 0 (anatomy.probe.penalties): without one, separable "
                         "states have no finite fit")
    xt = torch.as_tensor(np.asarray(x, dtype=np.float64))
    sign = torch.as_tensor(2.0 * np.asarray(y, dtype=np.float64) - 1.0)
    theta = torch.zeros(xt.shape[1] + 1, dtype=torch.float64) if start is None else torch.tensor(start)
    theta.requires_grad_(True)
    opt = torch.optim.LBFGS([theta], lr=1.0, max_iter=MAX_ITER, max_eval=2 * MAX_ITER, tolerance_grad=GTOL,
                            tolerance_change=0.0, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        w, b = theta[:-1], theta[-1]
        loss = torch.nn.functional.softplus(-sign * (xt @ w + b)).mean() + 0.5 * penalty * (w @ w)  # sign = 2y - 1
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
        closure()  # the gradient at the point reached, for the convergence test
    converged = float(theta.grad.abs().max()) <= GTOL
    return Fit(theta.detach().numpy().copy(), converged, int(opt.state[theta]["n_iter"]))


@contextmanager
def one_thread():
    """Run the fits on one torch thread: a product of a few hundred reviews by a few hundred coordinates gains
    nothing from a second one, and on shared cores the threads' synchronisation made them 5-10x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def decision(theta: np.ndarray, x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float64) @ theta[:-1] + theta[-1]


def stratified_folds(y: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Fold index per review: each class shuffled (seeded) and dealt round-robin, so every fold keeps the
    class balance."""
    y = np.asarray(y)
    counts = np.bincount(y.astype(np.int64), minlength=2)
    if folds < 2 or counts.min() < folds:
        raise ValueError(f"{folds}-fold cross-validation needs at least {folds} reviews of each class; the train "
                         f"sample has {counts.tolist()} (negative, positive). Raise anatomy.probe.train_reviews "
                         "or lower anatomy.probe.folds")
    rng = np.random.default_rng(seed)
    fold = np.empty(len(y), dtype=np.int64)
    for label in (0, 1):
        idx = rng.permutation(np.flatnonzero(y == label))
        fold[idx] = np.arange(len(idx)) % folds
    return fold


class Standardiser:
    """Per-coordinate mean and standard deviation of the train states; a constant coordinate maps to 0."""

    def __init__(self, x: np.ndarray):
        x = np.asarray(x, dtype=np.float64)
        self.mean = x.mean(0)
        sd = x.std(0)
        self.scale = np.where(sd > 1e-12 * max(1.0, float(np.abs(self.mean).max(initial=0.0))), sd, np.inf)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return (np.asarray(x, dtype=np.float64) - self.mean) / self.scale


def cross_validate(x: np.ndarray, y: np.ndarray, penalties: Sequence[float], folds: int, seed: int) -> pd.DataFrame:
    """Per penalty: mean held-out log loss and accuracy over stratified folds of (x, y); each fold's fits run
    from the largest penalty down, each warm-started from the last."""
    fold = stratified_folds(y, folds, seed)
    order = sorted(penalties, reverse=True)
    loss = {p: [] for p in order}
    acc = {p: [] for p in order}
    for k in range(folds):
        train, held = fold != k, fold == k
        theta = None
        for p in order:
            theta = logistic_fit(x[train], y[train], p, theta).theta
            z = (2.0 * np.asarray(y[held], dtype=np.float64) - 1.0) * decision(theta, x[held])  # held-out margins
            loss[p].append(float(np.logaddexp(0.0, -z).mean()) * held.sum())
            acc[p].append(((decision(theta, x[held]) > 0) == (y[held] == 1)).sum())
    n = len(y)
    return pd.DataFrame({"penalty": order, "cv_log_loss": [sum(loss[p]) / n for p in order],
                         "cv_accuracy": [sum(acc[p]) / n for p in order]}).sort_values("penalty", ignore_index=True)


@dataclass(frozen=True)
class Probe:
    """A refitted probe: standardiser, coefficients, the penalty chosen, its cross-validation table."""

    standardiser: Standardiser
    fit: Fit
    penalty: float
    cv: pd.DataFrame

    def logits(self, hidden: np.ndarray) -> np.ndarray:
        return decision(self.fit.theta, self.standardiser(hidden))

    def raw_coefficients(self) -> tuple[np.ndarray, float]:
        """(weight [H], intercept) in the unstandardised space: logit = hidden . weight + intercept."""
        w = self.fit.theta[:-1] / self.standardiser.scale
        return w, float(self.fit.theta[-1] - w @ self.standardiser.mean)


def fit_probe(hidden: np.ndarray, y: np.ndarray, penalties: Sequence[float], folds: int, seed: int) -> Probe:
    """Standardise, choose the penalty by cross-validation on (hidden, y), refit on all of them."""
    std = Standardiser(hidden)
    x = std(hidden)
    cv = cross_validate(x, y, penalties, folds, seed)
    best = float(cv.loc[cv["cv_log_loss"].idxmin(), "penalty"])
    fit = logistic_fit(x, y, best)
    if not fit.converged:
        log.warning("probe at penalty %g stopped after %d iterations without meeting the tolerance; its accuracy "
                    "is that of the coefficients reached", best, fit.iterations)
    return Probe(std, fit, best, cv)


def layer_probes(train_hidden: np.ndarray, y_train, val_hidden: np.ndarray, y_val, lens_logits: np.ndarray,
                 penalties: Sequence[float], folds: int, seed: int, head_directions: Sequence[np.ndarray] | None = None,
                 progress=None) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(per-layer table, cross-validation table, weights table) from target states [N, L+1, H] of the train
    and validation reviews and the lens's logits [N_val, L+1] on the same validation reviews."""
    y_train, y_val = np.asarray(y_train, dtype=np.int64), np.asarray(y_val, dtype=np.int64)
    rows, cv_parts, weights = [], [], []
    layers = range(train_hidden.shape[1])
    for layer in (progress(layers) if progress else layers):
        with one_thread():
            probe = fit_probe(train_hidden[:, layer], y_train, penalties, folds, seed)
        val_pred = probe.logits(val_hidden[:, layer]) > 0
        lens_pred = lens_logits[:, layer] > 0
        probe_acc = accuracy_interval(val_pred == (y_val == 1), seed)
        lens_acc = accuracy_interval(lens_pred == (y_val == 1), seed)
        w, b = probe.raw_coefficients()
        head = None if head_directions is None else head_directions[layer]
        head_cos = (float(w @ head / (np.linalg.norm(w) * np.linalg.norm(head)))
                    if head is not None and np.linalg.norm(w) > 0 else float("nan"))
        chosen = probe.cv[probe.cv["penalty"] == probe.penalty].iloc[0]
        rows.append(dict(layer=layer, train_reviews=len(y_train), validation_reviews=len(y_val),
                         penalty=probe.penalty, cv_log_loss=float(chosen["cv_log_loss"]),
                         cv_accuracy=float(chosen["cv_accuracy"]),
                         train_accuracy=float(((probe.logits(train_hidden[:, layer]) > 0) == (y_train == 1)).mean()),
                         **probe_acc.to_dict("probe_accuracy"), probe_positive_share=float(val_pred.mean()),
                         **lens_acc.to_dict("lens_accuracy"), lens_positive_share=float(lens_pred.mean()),
                         head_cosine=head_cos, converged=probe.fit.converged, iterations=probe.fit.iterations))
        cv_parts.append(probe.cv.assign(layer=layer, chosen=probe.cv["penalty"] == probe.penalty))
        weights.append(dict(layer=layer, penalty=probe.penalty, intercept=b, weight=w.tolist()))
    cv = pd.concat(cv_parts, ignore_index=True)[["layer", "penalty", "cv_log_loss", "cv_accuracy", "chosen"]]
    return pd.DataFrame(rows), cv, pd.DataFrame(weights)


def linear_probe(finetuned, train, hidden, inputs, linear_probe, linear_probe_cv, linear_probe_weights,
                 settings: dict, threads: int | None, device: str) -> dict:
    """Rule linear_probe: per layer, a probe on train reviews scored on the lens's validation reviews, to the
    `linear_probe`, `linear_probe_cv` and `linear_probe_weights` files (module doc). settings: train_reviews,
    folds, penalties, seed, batch_size, precision.

    The train reviews' states are extracted here (a seeded sample of the train split, never written out);
    the validation reviews' are the extract rule's `validation` input set, the same reviews the lens reads."""
    from .data import read_split
    from .extract import extract_inputs, read_vectors
    from .io import read_parquet, write_csv, write_parquet
    from .lens import head_direction, lens_logits
    from .models import open_checkpoint, set_threads
    from .probes import sample_reviews
    from .progress import progress

    p = settings
    set_threads(threads)
    start = time.perf_counter()
    table_in = read_parquet(inputs)
    keys, val_hidden = read_vectors(hidden, "vector", input_set="validation")
    labels = table_in.set_index(["input_set", "input_id"]).loc[
        list(zip(keys["input_set"], keys["input_id"])), "label"].to_numpy()
    ck = open_checkpoint(finetuned, device, threads)
    sample = sample_reviews(read_split(train), p["train_reviews"], p["seed"] + 2, "anatomy.probe.train_reviews")
    ex = extract_inputs(ck.model, ck.tokenizer, ck.meta, sample["text"].tolist(), p["batch_size"], p["precision"],
                        desc="probe states")
    extracted = time.perf_counter()
    model = ck.model.cpu()
    # the direction along which the lens's logit grows in each layer's hidden space: the head's weight for the
    # final (already normed) state, and for a decoder's earlier layers that weight seen through the final
    # norm's linear part (`lens.head_direction`, which is the head's weight itself for encoders)
    heads = [head_direction(model)] * model.adapter.num_layers + [model.head.weight.detach()[0].double().numpy()]
    table, cv, weights = layer_probes(ex.hidden, sample["label"].to_numpy(), val_hidden, labels,
                                      lens_logits(model, val_hidden), p["penalties"], p["folds"], p["seed"], heads,
                                      progress=lambda xs: progress(xs, desc="probe fits"))
    write_csv(table, linear_probe)
    write_csv(cv, linear_probe_cv)
    write_parquet(weights, linear_probe_weights)
    info = dict(train_reviews=len(sample), validation_reviews=len(labels), extract_seconds=extracted - start,
                fit_seconds=time.perf_counter() - extracted)
    log.info("linear probes on %d train reviews, scored on %d validation reviews: extraction %.0f s, fits %.0f s; "
             "probe accuracy by layer %s", info["train_reviews"], info["validation_reviews"], info["extract_seconds"],
             info["fit_seconds"], np.round(table["probe_accuracy"].to_numpy(), 3).tolist())
    return info
