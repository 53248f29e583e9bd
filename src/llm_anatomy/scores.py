"""Layer scores (Figure 1), neuron scores (Figures 2/3), their summaries, and direct contributions.

layer_scores.parquet, one row per (input, layer 0..L):
  input_set string, input_id int64, layer int16,
  cosine    float32  c_l(x) = cos(target at layer l, target at layer L) (hidden_states.parquet vectors)
  cosine_normed float32  the same after the final norm is applied to layer l too (= cosine for encoders)
  cosine_prenorm float32 against the final target before the final norm (layer L: that target itself)
neuron_scores.parquet, one row per (probe input, block, neuron):
  input_id int64, layer int16, neuron int32,
  score    float32  s_lj(x) = cos(value vector v_lj, target at layer L for probe x)
  score_prenorm float32  cos(v_lj, the final target before the final norm)
  score_gain    float32  cos(the final norm's linear part applied to v_lj, the normed final target)

Decoder scorings (`SCORINGS`, docs/ANATOMY.md): where the value vectors and the final target meet.
A decoder's value vectors write into the residual stream before its final norm; the paper's final
target is read after it. For encoders (no final norm) the three coincide.
  paper    c = cosine,         s = score          the paper's literal form (the default)
  prenorm  c = cosine_prenorm, s = score_prenorm  both sides before the final norm
  gain     c = cosine_normed,  s = score_gain     both sides after the norm's linear part
"""
from __future__ import annotations

from itertools import combinations

import numpy as np
import pandas as pd

from .io import read_parquet


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine over the last axis, broadcasting; 0 where a vector is all zeros."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    denom = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    return np.divide((a * b).sum(-1), denom, out=np.zeros(np.broadcast_shapes(denom.shape)), where=denom > 0)


SCORINGS = {"paper": ("cosine", "score"), "prenorm": ("cosine_prenorm", "score_prenorm"),
            "gain": ("cosine_normed", "score_gain")}


def scoring_columns(scoring: str) -> tuple[str, str]:
    """(layer_scores column, neuron_scores column) of a decoder scoring."""
    if scoring not in SCORINGS:
        raise ValueError(f"scoring {scoring!r} is not one of {sorted(SCORINGS)}")
    return SCORINGS[scoring]


# ---- layer scores ------------------------------------------------------------------------
def layer_cosines(hidden: np.ndarray) -> np.ndarray:
    """c [N, L+1] from target states [N, L+1, H]: each layer against the last."""
    return cosine(hidden, hidden[:, -1:, :])


def layer_score_table(keys: pd.DataFrame, cos: np.ndarray, cos_normed: np.ndarray | None = None,
                      cos_prenorm: np.ndarray | None = None) -> pd.DataFrame:
    n, n_layers = cos.shape
    df = pd.DataFrame({"input_set": np.repeat(keys["input_set"].to_numpy().astype(str), n_layers),
                       "input_id": np.repeat(keys["input_id"].to_numpy(np.int64), n_layers),
                       "layer": np.tile(np.arange(n_layers, dtype=np.int16), n), "cosine": cos.reshape(-1).astype(np.float32)})
    for name, c in (("cosine_normed", cos_normed), ("cosine_prenorm", cos_prenorm)):
        if c is not None:
            df[name] = c.reshape(-1).astype(np.float32)
    return df


def mean_layer_scores(path, input_set: str = "probe", column: str = "cosine") -> np.ndarray:
    """c_l averaged over the inputs of `input_set` (default: the probes): array [L+1], index = layer."""
    df = read_parquet(path, columns=["input_set", "layer", column])
    df = df[df["input_set"] == input_set]
    if df.empty:
        raise ValueError(f"{path}: no layer scores for input_set {input_set!r}")
    mean = df.groupby("layer")[column].mean().sort_index()
    if not np.array_equal(mean.index.to_numpy(), np.arange(len(mean))):
        raise ValueError(f"{path}: layers {mean.index.tolist()} are not 0..L")
    return mean.to_numpy(np.float64)


# ---- neuron scores -----------------------------------------------------------------------
def neuron_cosines(values: list[np.ndarray], final: np.ndarray) -> list[np.ndarray]:
    """s per block [N, F_l] from value vectors [F_l, H] and final targets [N, H]."""
    out = []
    f = final / np.linalg.norm(final, axis=-1, keepdims=True)
    for v in values:
        v = np.asarray(v, dtype=np.float64)
        norms = np.linalg.norm(v, axis=1)
        vn = np.divide(v, norms[:, None], out=np.zeros_like(v), where=norms[:, None] > 0)
        out.append((f @ vn.T).astype(np.float32))
    return out


def neuron_score_table(input_ids: np.ndarray, scores: list[np.ndarray], **variants: list[np.ndarray]) -> pd.DataFrame:
    """Rows (probe, layer, neuron) with `score` and one column per named variant (same shapes)."""
    parts = []
    for layer, s in enumerate(scores):
        n, width = s.shape
        parts.append(pd.DataFrame({"input_id": np.repeat(np.asarray(input_ids, np.int64), width),
                                   "layer": np.int16(layer),
                                   "neuron": np.tile(np.arange(width, dtype=np.int32), n),
                                   "score": s.reshape(-1),
                                   **{name: v[layer].reshape(-1) for name, v in variants.items()}}))
    return pd.concat(parts, ignore_index=True).astype({"layer": "int16"})


def read_probe_scores(path, column: str = "score") -> tuple[np.ndarray, list[np.ndarray]]:
    """Inverse of `neuron_score_table`: (probe ids [P], per layer the scores [P, F_l])."""
    df = read_parquet(path, columns=["input_id", "layer", "neuron", column])
    if df.empty:
        raise ValueError(f"{path}: no neuron scores")
    out, ids = [], None
    for layer, g in df.groupby("layer", sort=True):
        if layer != len(out):
            raise ValueError(f"{path}: layers are not 0..L-1; rebuild it with the score rule")
        layer_ids = pd.unique(g["input_id"])
        ids = layer_ids if ids is None else ids
        if not np.array_equal(layer_ids, ids) or len(g) % len(ids):
            raise ValueError(f"{path}: layer {layer} lists other probes than layer 0; rebuild it with the score rule")
        out.append(g[column].to_numpy().reshape(len(ids), -1))
    return np.asarray(ids, dtype=np.int64), out


def per_layer(values: pd.Series, path) -> list[np.ndarray]:
    """A series indexed by (layer, neuron) as one float64 array per layer, index = neuron; the
    layers must be 0..L-1 and each layer's neurons 0..F-1 (`path` names the file in errors)."""
    values = values.sort_index()
    layers = values.index.get_level_values("layer").unique().tolist()
    if layers != list(range(len(layers))):
        raise ValueError(f"{path}: layers {layers} are not 0..L-1; rebuild the file")
    out = []
    for layer in layers:
        s = values.loc[layer]
        if not np.array_equal(s.index.to_numpy(), np.arange(len(s))):
            raise ValueError(f"{path}: layer {layer} neurons are not 0..F-1; rebuild the file")
        out.append(s.to_numpy(np.float64))
    return out


def mean_neuron_scores(path, column: str = "score") -> list[np.ndarray]:
    """s_lj averaged over the probe inputs: one array [F_l] per block, index = neuron."""
    df = read_parquet(path, columns=["layer", "neuron", column])
    if df.empty:
        raise ValueError(f"{path}: no neuron scores")
    return per_layer(df.groupby(["layer", "neuron"])[column].mean(), path)


def neuron_share(input_ids, scores: list[np.ndarray], threshold: float) -> pd.DataFrame:
    """Per (layer, input): neurons above +threshold (high) and below -threshold (negative, "offset")."""
    rows = []
    for layer, s in enumerate(scores):
        for i, input_id in enumerate(input_ids):
            hi, lo = int((s[i] > threshold).sum()), int((s[i] < -threshold).sum())
            rows.append(dict(layer=layer, input_id=int(input_id), neurons=s.shape[1], n_high=hi,
                             share_high=hi / s.shape[1], n_negative=lo, share_negative=lo / s.shape[1],
                             max_score=float(s[i].max()), min_score=float(s[i].min())))
    return pd.DataFrame(rows)


def high_neuron_lists(input_ids, scores: list[np.ndarray], threshold: float) -> pd.DataFrame:
    """Figures 2a/3a: per (input, layer) the high neurons, highest score first, space-separated."""
    rows = []
    for i, input_id in enumerate(input_ids):
        for layer, s in enumerate(scores):
            idx = np.flatnonzero(s[i] > threshold)
            idx = idx[np.argsort(-s[i][idx], kind="stable")]
            rows.append(dict(input_id=int(input_id), layer=layer, n_high=len(idx),
                             neurons=" ".join(map(str, idx))))
    return pd.DataFrame(rows)


def neuron_overlap(scores: list[np.ndarray], threshold: float) -> pd.DataFrame:
    """Per layer: how alike the inputs' high-neuron sets are (section 3.3's "same neurons").

    mean/min_jaccard over input pairs where either set is non-empty; random_jaccard is what two
    random sets of the same mean size would give (the chance level to compare against)."""
    rows = []
    for layer, s in enumerate(scores):
        sets = [set(np.flatnonzero(row > threshold)) for row in s]
        pairs = [len(a & b) / len(a | b) for a, b in combinations(sets, 2) if a | b]  # Jaccard
        width, k = s.shape[1], float(np.mean([len(x) for x in sets]))
        inter = k * k / width
        rows.append(dict(layer=layer, neurons=width, mean_size=k,
                         inputs_with_high=sum(bool(x) for x in sets),
                         mean_jaccard=float(np.mean(pairs)) if pairs else float("nan"),
                         min_jaccard=float(np.min(pairs)) if pairs else float("nan"),
                         intersection_all=len(set.intersection(*sets)), union_all=len(set.union(*sets)),
                         random_jaccard=inter / (2 * k - inter) if k else float("nan")))
    return pd.DataFrame(rows)


def pairwise_mean_cosine(vectors: np.ndarray) -> float:
    """Mean cosine over distinct pairs of rows: why the high sets coincide (see docs/ANATOMY.md)."""
    c = cosine(vectors[:, None, :], vectors[None, :, :])
    iu = np.triu_indices(len(vectors), 1)
    return float(c[iu].mean())


# ---- direct contributions ----------------------------------------------------------------
def contributions(acts: list[np.ndarray], values: list[np.ndarray], head_dir: np.ndarray,
                  cos_mean: list[np.ndarray]) -> pd.DataFrame:
    """Each neuron's direct effect on the logit: activation x (v_lj . head direction), averaged."""
    parts = []
    for layer, (a, v) in enumerate(zip(acts, values)):
        dot = np.asarray(v, np.float64) @ np.asarray(head_dir, np.float64)  # [F]
        c = np.asarray(a, np.float64) * dot  # [N, F]
        parts.append(pd.DataFrame({"layer": np.int16(layer), "neuron": np.arange(len(dot), dtype=np.int32),
                                   "value_dot_head": dot, "mean_activation": a.mean(0),
                                   "contribution": c.mean(0), "mean_abs_contribution": np.abs(c).mean(0),
                                   "cosine_score": cos_mean[layer]}))
    return pd.concat(parts, ignore_index=True).astype({"layer": "int16"})


def spearman(x, y) -> float:
    x, y = pd.Series(np.asarray(x)).rank(), pd.Series(np.asarray(y)).rank()
    return float(x.corr(y))


def rank_agreement(contrib: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """Per layer: Spearman between the cosine ranking and the contribution ranking, and top-k overlap."""
    rows = []
    for layer, g in contrib.groupby("layer", sort=True):
        k = int((g["cosine_score"] > threshold).sum())
        top_k = set(g.nlargest(k, "mean_abs_contribution")["neuron"]) if k else set()
        high = set(g.loc[g["cosine_score"] > threshold, "neuron"])
        rows.append(dict(layer=int(layer),
                         spearman_signed=spearman(g["cosine_score"], g["contribution"]),
                         spearman_abs=spearman(g["cosine_score"].abs(), g["mean_abs_contribution"]),
                         n_high=k, high_in_top_contributors=len(high & top_k)))
    return pd.DataFrame(rows)
