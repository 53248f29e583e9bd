"""Retraining-free compensation of a pruned FFN layer, in closed form from calibration tokens.

For one layer, over the calibration tokens t: a_t [F] the neurons' activations as the pruned model
computes them, y_t [H] what the layer's output projection should produce there (the dense FFN
output, plus any drift of the residual it is added to: see `target`). With K the kept neurons and
V [F, H] the value vectors (rows of the output projection), b its bias, each method picks the kept
neurons' output weights W [|K|, H] and a bias c [H]:

  none    W = V_K, c = b: the pruned neurons are simply gone.
  bias    W = V_K, c = the least-squares bias: b plus the pruned neurons' mean output (FLAP's fold,
          An et al. 2024), when y is the dense output.
  rescale W = diag(s) V_K: one scale per kept neuron, and c, by ridge least squares toward s = 1
          (Kwon et al. 2022's mask tuning, with the bias left free as well).
  refit   W and c by ridge least squares toward V_K: per output dimension an ordinary regression
          of y on the kept activations (K-prune-style sublayer refit).

Each minimises the squared reconstruction error E(W, c) = sum_t u_t ||a_t,K W + c - y_t||^2 (u_t a
per-token weight, 1 unless the caller weights tokens; plus a ridge penalty that is zero at W = V_K) over a
family that contains bias's solution, so on the calibration tokens E(refit), E(rescale) <= E(bias) <=
E(none): compensation never makes the layer's reconstruction worse than leaving the pruned neurons out.
(With ridge = 0, E(refit) <= E(rescale) too; with a ridge the two penalties differ and either may come
out lower.) Everything is computed from sufficient statistics accumulated over batches (`LayerStats`), so a layer costs one
pass whatever the method. The ridge is relative: lambda = ridge x trace(centred Gram) / |K|.
"""
from __future__ import annotations

import numpy as np

METHODS = ("none", "bias", "rescale", "refit")
FITTED = ("rescale", "refit")  # fitted on calibration tokens when the plan is materialised


class LayerStats:
    """Weighted sums over calibration tokens (weight u_t, 1 by default): n = sum u, sum u a [F], sum u a a^T
    [F, F], sum u a y^T [F, H], sum u y [H], sum u ||y||^2; `tokens` counts the tokens added."""

    def __init__(self, width: int, hidden: int):
        self.width, self.hidden = width, hidden
        self.n, self.tokens, self.syy = 0.0, 0, 0.0
        self.sa = np.zeros(width)
        self.saa = np.zeros((width, width))
        self.say = np.zeros((width, hidden))
        self.sy = np.zeros(hidden)

    def add(self, a: np.ndarray, y: np.ndarray, weights: np.ndarray | None = None) -> None:
        """a [T, F] activations and y [T, H] targets of T real tokens, with optional weights [T] >= 0."""
        a, y = np.asarray(a, dtype=np.float64), np.asarray(y, dtype=np.float64)
        if a.shape != (len(a), self.width) or y.shape != (len(a), self.hidden):
            raise ValueError(f"expected a [T, {self.width}] and y [T, {self.hidden}], got {a.shape} and {y.shape}")
        u = np.ones(len(a)) if weights is None else np.asarray(weights, dtype=np.float64)
        if u.shape != (len(a),) or (u < 0).any():
            raise ValueError(f"expected {len(a)} token weights >= 0, got shape {u.shape}, min {u.min(initial=0)}")
        ua = a * u[:, None]
        self.n += float(u.sum())
        self.tokens += len(a)
        self.sa += ua.sum(0)
        self.saa += ua.T @ a
        self.say += ua.T @ y
        self.sy += u @ y
        self.syy += float(u @ (y * y).sum(1))

    def error(self, kept: np.ndarray, w: np.ndarray, c: np.ndarray) -> float:
        """E(W, c) = sum_t u_t ||a_t,K W + c - y_t||^2, from the sums alone."""
        k = np.asarray(kept)
        g, sa, say = self.saa[np.ix_(k, k)], self.sa[k], self.say[k]
        # sum(w * (g @ w)), not a three-operand einsum: numpy's einsum loops in C without BLAS (0.32 s against
        # 0.007 s at |K| = 768, H = 576), which was 41% of a SmolLM2 refit's time.
        return float(np.sum(w * (g @ w)) + 2 * c @ (w.T @ sa) + self.n * c @ c
                     - 2 * np.einsum("ih,ih->", w, say) - 2 * c @ self.sy + self.syy)

    def centred(self, k: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(mean a_K, mean y, centred Gram [K, K], centred cross moments [K, H])."""
        if self.n == 0:
            raise ValueError("no calibration tokens were added")
        ma, my = self.sa[k] / self.n, self.sy / self.n
        g = self.saa[np.ix_(k, k)] - self.n * np.outer(ma, ma)
        cross = self.say[k] - self.n * np.outer(ma, my)
        return ma, my, g, cross


def relative_ridge(g: np.ndarray, ridge: float) -> float:
    """lambda = ridge x trace(G) / |K|: the ridge relative to the mean diagonal of the centred Gram matrix."""
    return ridge * float(np.trace(g)) / max(len(g), 1)


def compensate(stats: LayerStats, kept: np.ndarray, values: np.ndarray, bias: np.ndarray, method: str,
               ridge: float) -> tuple[np.ndarray, np.ndarray]:
    """(W [|K|, H], c [H]) for the kept neurons by `method` (see the module docstring); none and bias read no
    ridge."""
    if method not in METHODS:
        raise ValueError(f"compensation {method!r} is not one of {METHODS}")
    if ridge < 0:
        raise ValueError(f"ridge = {ridge} must be >= 0")
    k = np.asarray(kept, dtype=np.int64)
    v = np.asarray(values, dtype=np.float64)[k]
    b = np.asarray(bias, dtype=np.float64)
    if method == "none":
        return v.copy(), b.copy()
    ma, my, g, cross = stats.centred(k)
    if method == "bias":
        return v.copy(), my - ma @ v
    lam = relative_ridge(g, ridge)
    if method == "rescale":
        # E over s with c free: the centred problem in s, M s = r, M_ij = G_ij (v_i . v_j)
        m = g * (v @ v.T) + lam * np.eye(len(k))
        r = np.einsum("ih,ih->i", cross, v) + lam
        w = _solve(m, r)[:, None] * v
    else:  # refit: (G + lambda I) W = C + lambda V_K, one solve for every output dimension
        w = _solve(g + lam * np.eye(len(k)), cross + lam * v)
    return w, my - ma @ w


def _solve(m: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Symmetric positive semi-definite solve; least squares where m is singular (ridge = 0, dead neurons)."""
    try:
        return np.linalg.solve(m, r)
    except np.linalg.LinAlgError:
        return np.linalg.lstsq(m, r, rcond=None)[0]
