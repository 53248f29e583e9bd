"""Per-neuron importance criteria for structured FFN pruning: one interface, one registry.

A criterion turns what the calibration passes measured about each FFN neuron into one importance
score per (layer, neuron); lower scores are pruned first. `importance(name, stats)` computes one by
its name in params; `NeuronStats` gathers the measurements from the files the workflow writes:

  ffn_stats.parquet       mean, var, mean_abs (activation over calibration tokens), value_norm_sq,
                          in_norm_sq (weights)                        -> pruning.calibration
  mask_gradients.parquet  grad_sum, grad_sq, batches                  -> pruning.gradients
  neuron_scores.parquet   cosine (the paper's s_lj, averaged over the probes)  -> plan.load_scores
  contributions.parquet   contribution (mean |a_lj (v_lj . head direction)|) -> scores
  obs_scores.parquet      obs_rank (the optimal-brain-surgeon removal order)   -> pruning.obs

Notation: a the neuron's activation (the input of the FFN's output projection), v its value vector
(its row of the output projection), w_in its input weights, g the loss gradient of a mask on it.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from ..io import read_parquet
from ..scores import per_layer

SOURCES = {  # measurement -> the artifact it is read from (`layout.ModelFiles` names)
    "mean": "ffn_stats", "var": "ffn_stats", "mean_abs": "ffn_stats", "value_norm_sq": "ffn_stats",
    "in_norm_sq": "ffn_stats", "grad_sum": "mask_gradients", "grad_sq": "mask_gradients", "batches": "mask_gradients",
    "cosine": "neuron_scores", "contribution": "contributions", "obs_rank": "obs_scores",
}


class NeuronStats:
    """Named per-neuron measurements: name -> one float64 array per layer (index = neuron)."""

    def __init__(self, columns: dict[str, Sequence[np.ndarray]] | None = None):
        self.columns = {k: [np.asarray(a, dtype=np.float64) for a in v] for k, v in (columns or {}).items()}

    def __contains__(self, name: str) -> bool:
        return name in self.columns

    def __getitem__(self, name: str) -> list[np.ndarray]:
        if name not in self.columns:
            raise KeyError(f"no {name!r} measurement: it comes from {SOURCES.get(name, 'an unknown file')}")
        return self.columns[name]

    @classmethod
    def from_files(cls, ffn_stats=None, mask_gradients=None, contributions=None,
                   cosine: Sequence[np.ndarray] | None = None, obs_scores=None) -> "NeuronStats":
        """From the workflow's files; `cosine` is the per-layer mean neuron score as the plans read it
        (`plan.load_scores`), so the criterion and the threshold rules see the same s_lj."""
        cols: dict[str, list[np.ndarray]] = {}
        for path, names in ((ffn_stats, ("mean", "var", "mean_abs", "value_norm_sq", "in_norm_sq")),
                            (mask_gradients, ("grad_sum", "grad_sq", "batches")), (obs_scores, ("obs_rank",))):
            if path is not None:
                df = read_parquet(path).set_index(["layer", "neuron"])
                cols.update({n: per_layer(df[n].astype(np.float64), path) for n in names if n in df.columns})
        if contributions is not None:
            df = read_parquet(contributions).set_index(["layer", "neuron"])
            cols["contribution"] = per_layer(df["mean_abs_contribution"], contributions)
        if cosine is not None:
            cols["cosine"] = list(cosine)
        return cls(cols)


@dataclass(frozen=True)
class Criterion:
    name: str
    needs: tuple[str, ...]
    compute: Callable[[NeuronStats], list[np.ndarray]]
    doc: str


CRITERIA: dict[str, Criterion] = {}


def _criterion(name: str, *needs: str):
    def register(fn):
        CRITERIA[name] = Criterion(name, needs, fn, " ".join((fn.__doc__ or "").split()))
        return fn
    return register


def _each(stats: NeuronStats, fn, *names: str) -> list[np.ndarray]:
    return [fn(*arrays) for arrays in zip(*(stats[n] for n in names))]


@_criterion("cosine", "cosine")
def cosine(stats):
    """|s_lj|, the paper's cosine of the value vector with the final target (averaged over the probes;
    Sun et al., section 3.2); the threshold rules prune |s| < t, so the magnitude is the importance."""
    return _each(stats, np.abs, "cosine")


@_criterion("activation", "mean_abs")
def activation(stats):
    """E|a| over calibration tokens: activation magnitude (as in TextPruner's and many channel-pruning
    baselines); a neuron that is rarely active contributes little."""
    return stats["mean_abs"]


@_criterion("weight", "value_norm_sq", "in_norm_sq")
def weight(stats):
    """||v|| x ||w_in||: weight magnitude of everything through the neuron, data-free."""
    return _each(stats, lambda v, w: np.sqrt(v * w), "value_norm_sq", "in_norm_sq")


@_criterion("wanda-sp", "value_norm_sq", "mean", "var")
def wanda_sp(stats):
    """||v|| x sqrt(E[a^2]): Wanda's |weight| x input norm (Sun et al., 2023) for a whole neuron, the
    structured variant FLAP (An et al., 2024) compares with; E[a^2] = var + mean^2."""
    return _each(stats, lambda v, m, s: np.sqrt(v) * np.sqrt(s + m * m), "value_norm_sq", "mean", "var")


@_criterion("fluctuation", "var", "value_norm_sq")
def fluctuation(stats):
    """Var[a] x ||v||^2: FLAP's fluctuation (An et al., 2024); what bias compensation cannot restore."""
    return _each(stats, lambda s, v: s * v, "var", "value_norm_sq")


@_criterion("taylor", "grad_sum", "batches")
def taylor(stats):
    """|sum_b g_b| / B: the first-order change of the classification loss when the neuron is removed
    (Molchanov et al., 2017; LLM-Pruner's element-wise Taylor score for a whole neuron)."""
    return _each(stats, lambda g, b: np.abs(g) / np.maximum(b, 1), "grad_sum", "batches")


@_criterion("fisher", "grad_sq")
def fisher(stats):
    """sum_b g_b^2: the empirical Fisher information of the neuron's mask, Kwon et al.'s (2022)
    importance; a second-order estimate of the loss increase, insensitive to the gradient's sign."""
    return stats["grad_sq"]


@_criterion("contribution", "contribution")
def contribution(stats):
    """Mean |a_lj (v_lj . d)| over the calibration reviews at the target token, d the classifier head direction:
    the anatomy stage's direct contribution of the neuron to the logit (docs/ANATOMY.md)."""
    return stats["contribution"]


@_criterion("obs", "obs_rank")
def obs(stats):
    """Position in the layer's greedy optimal-brain-surgeon removal order: at each step the neuron whose
    removal, with the kept neurons' output weights refitted by least squares, adds the least squared
    error to the layer's output (Hassibi and Stork 1993; structured as in ZipLM, Kurtic et al. 2023).
    Made for the refit compensation. A per-layer order: global allocation gives the same cut as uniform."""
    return stats["obs_rank"]


def criterion_inputs(name: str) -> tuple[str, ...]:
    """The artifacts a criterion reads besides the neuron scores and the calibration statistics."""
    needs = {SOURCES[n] for n in CRITERIA[name].needs}
    return tuple(k for k in ("mask_gradients", "obs_scores", "contributions") if k in needs)


def importance(name: str, stats: NeuronStats) -> list[np.ndarray]:
    """Per layer, every neuron's importance by the named criterion (lower = pruned first)."""
    if name not in CRITERIA:
        raise ValueError(f"criterion {name!r} is not one of {sorted(CRITERIA)}")
    c = CRITERIA[name]
    missing = [n for n in c.needs if n not in stats]
    if missing:
        raise ValueError(f"criterion {name!r} needs {missing}, measured in "
                         f"{sorted({SOURCES[n] for n in missing})}")
    return [np.asarray(a, dtype=np.float64) for a in c.compute(stats)]
