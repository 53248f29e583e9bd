"""Anatomy checked by ablation: what removing a neuron actually does to the classifier.

On the first validation reviews (float32, so single-neuron effects are not rounding noise):
  exact effects    mean-ablate one neuron (its activation set to its mean over the reviews' real
                   tokens) and record every review's margin change d = new - dense margin, margin =
                   (2y-1) * logit; summarised as EFFECTS: mean d (signed; negative = the neuron helps),
                   mean |d| (how far it moves the logit either way) and the mean loss change. Each
                   ablation reruns only the blocks from the neuron's layer up (the blocks below replay
                   their cached outputs), the last block for the read token only (`readout`), several
                   neurons of a layer per pass if asked. Run on `neurons_per_layer` random neurons of
                   every layer (the sample), each score's top `tail` neurons of every layer, and every
                   node of the neuron graph.
  attribution      attribution patching: sum over tokens of (mean - a) * d margin / d a, one
                   forward and backward pass for every neuron at once; a first-order estimate of the
                   exact effect (Syed et al. 2023; Nanda 2023).
  score agreement  Spearman's rho (95% bootstrap interval) between each score's importance and each
                   TARGET on the random sample, pooled over layers and within layers: the paper's
                   |cosine|, the direct contribution's mean |a (v . head)|, FLAP's fluctuation
                   Var[a] ||v||^2, activation magnitude mean |a|, and |attribution|.
  top tails        per score, how often its top neurons of a layer beat the median of that layer's
                   random sample (binomial test against 1/2).
  top sets         the margin change when the top `top_fraction` of all neurons by each score are
                   mean-ablated together, against `random_draws` random sets of the same size.
  graph edges      for each edge of the neuron graph, the change of the target neuron's activation
                   when the source neuron is mean-ablated, ranked within the target's block.

ablation.parquet, one row per (layer, neuron): in_sample, tail_of (the scores whose top tail it is in,
space-separated), graph_node (bool), exact_effect, exact_abs_effect, exact_loss_effect (NaN where not
ablated), attribution, attribution_signed, and the scores above (cosine, contribution, fluctuation,
activation); confirmed (graph nodes: |exact_effect| above the 90th percentile of the sample's).
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress

import numpy as np
import pandas as pd
import torch

from .adapters import removed_on_exit
from .batching import iter_padded, sorted_batches
from .device import model_device
from .io import read_parquet
from .models import SentimentClassifier
from . import readout
from .progress import progress as progress_bar
from .pruning.criteria import NeuronStats, importance
from .replay import StopForward, replay_below, stop_after
from .stats import spearman_interval

log = logging.getLogger(__name__)

SCORES = {  # importance read off each score: larger = expected to matter more
    "cosine": "paper's |cosine| to the final target (probe mean)",
    "contribution": "direct contribution, mean |a (v . head direction)|",
    "fluctuation": "FLAP's fluctuation Var[a] ||v||^2",
    "activation": "activation magnitude, mean |a| over the reviews' tokens",
    "attribution": "|attribution patching estimate|",
}
CONFIRM_QUANTILE = 0.9


class Batch:
    """One batch of reviews with what the dense pass cached for it; `idx`: the reviews' positions."""

    def __init__(self, ids, mask, sign, idx=None):
        self.ids, self.mask, self.sign, self.idx = ids, mask, sign, idx
        self.block_outputs: list = []
        self.margin: torch.Tensor | None = None


@contextmanager
def pin_to_means(model: SentimentClassifier, neurons: dict[int, np.ndarray], means: list[torch.Tensor]) -> None:
    """Set the given neurons' activations (per layer) to their means, at every position."""
    def make(layer):
        idx = torch.as_tensor(neurons.get(layer, []), dtype=torch.long)

        def hook(_module, args):
            if len(idx) == 0:
                return None
            x = args[0].clone()
            x[..., idx] = means[layer][idx].to(x.dtype)
            return (x, *args[1:])
        return hook
    with model.adapter.activation_hooks(make):
        yield


@contextmanager
def activation_gradients(model: SentimentClassifier) -> Iterator[None]:
    """For the `with` block, gradients with respect to the activations only: the weights frozen (no weight
    gradient is built), the embedding output made to require grad so everything after it is differentiable
    and a hook can retain any activation's gradient."""
    frozen = [(q, q.requires_grad) for q in model.parameters()]
    for q, _ in frozen:
        q.requires_grad_(False)
    try:
        with removed_on_exit([model.adapter.backbone.get_input_embeddings().register_forward_hook(
                lambda _m, _a, out: out.requires_grad_(True))]):
            yield
    finally:
        for q, flag in frozen:
            q.requires_grad_(flag)


def retain_activations(store: dict[int, torch.Tensor]):
    """A hook maker for `activation_hooks` (or a layer's pre-hook) inside `activation_gradients`: each layer's
    activation kept in `store[layer]`, its gradient retained so that `.grad` holds it after the backward pass."""
    def make(layer):
        def hook(_module, args):
            args[0].retain_grad()
            store[layer] = args[0]
        return hook
    return make


def margin_of(model, batch: Batch) -> torch.Tensor:
    return batch.sign * model(batch.ids, batch.mask).float()


class Ablator:
    """Exact and first-order ablation effects on a fixed set of reviews (float32)."""

    def __init__(self, model: SentimentClassifier, encoded, labels, pad_id: int, padding_side: str, batch_size: int):
        self.model = model.float().eval()
        self.adapter = model.adapter
        device = model_device(model)
        labels = np.asarray(labels)
        self.n_reviews = len(encoded)
        self.batches: list[Batch] = []
        for idx, ids, mask in iter_padded(encoded, sorted_batches([len(s) for s in encoded], batch_size), pad_id,
                                          padding_side, device):
            sign = torch.as_tensor(2.0 * labels[idx] - 1.0, dtype=torch.float32, device=device)
            self.batches.append(Batch(ids, mask, sign, idx))
        self._dense_pass()

    @torch.inference_mode()
    def _dense_pass(self) -> None:
        """Cache every block's output and the margins; the neurons' mean and mean |a| over real tokens."""
        s1, s2, sabs = ([torch.zeros(w, dtype=torch.float64) for w in self.adapter.ffn_widths()] for _ in range(3))
        tokens = 0
        state: dict = {}

        def grab(layer):
            def hook(_module, args):
                x = args[0].double()[state["mask"]]
                s1[layer] += x.sum(0).cpu()
                s2[layer] += x.square().sum(0).cpu()
                sabs[layer] += x.abs().sum(0).cpu()
            return hook

        for batch in self.batches:
            outs: dict[int, object] = {}
            hooks = [block.register_forward_hook(lambda _m, _a, out, l=l: outs.__setitem__(l, out))
                     for l, block in enumerate(self.adapter.layers())]
            state["mask"] = batch.mask.bool()
            with removed_on_exit(hooks), self.adapter.activation_hooks(grab):
                batch.margin = margin_of(self.model, batch)
            batch.block_outputs = [outs[l] for l in range(self.adapter.num_layers)]
            tokens += int(batch.mask.sum())
        self.means = [(s / tokens).float() for s in s1]
        self.activation = [(s / tokens).numpy() for s in sabs]
        # the activation's standard deviation over the real tokens: the scale a downstream change is read on
        self.std = [(q / tokens - (s / tokens) ** 2).clamp(min=0).sqrt().numpy() for s, q in zip(s1, s2)]
        self.tokens = tokens

    @property
    def margins(self) -> np.ndarray:
        """The dense margins (2y - 1) * logit, in review order [n_reviews]."""
        out = np.empty(self.n_reviews)
        for batch in self.batches:
            out[batch.idx] = batch.margin.double().cpu().numpy()
        return out

    @torch.inference_mode()
    def review_effect(self, neurons: dict[int, np.ndarray]) -> np.ndarray:
        """Per review, the change of the margin when these neurons (per layer) are mean-ablated together."""
        lowest = min(neurons) if neurons else self.adapter.num_layers
        out = np.empty(self.n_reviews)
        for batch in self.batches:
            with replay_below(self.model, lowest, batch.block_outputs), pin_to_means(self.model, neurons, self.means):
                out[batch.idx] = (margin_of(self.model, batch) - batch.margin).double().cpu().numpy()
        return out

    def effect(self, neurons: dict[int, np.ndarray]) -> float:
        """Mean change of the margin over the reviews when these neurons (per layer) are mean-ablated."""
        return float(self.review_effect(neurons).mean())

    @torch.inference_mode()
    def neuron_effects(self, layer: int, neurons: Sequence[int], per_pass: int = 1) -> np.ndarray:
        """Per neuron of `layer`, each mean-ablated alone, the change of every review's margin [K, n_reviews].

        `per_pass` neurons share a forward pass: the review batch is repeated once per neuron and each copy
        pins its own neuron, so the blocks above run on larger matrices and the per-pass overhead (replay,
        hooks, embeddings) is paid once per group. The blocks below `layer` replay the cached block output."""
        neurons = np.asarray(neurons, dtype=np.int64)
        out = np.empty((len(neurons), self.n_reviews))
        means = self.means[layer]
        for start in range(0, len(neurons), per_pass):
            chunk = torch.as_tensor(neurons[start: start + per_pass])
            k = len(chunk)
            for batch in self.batches:
                b = batch.ids.shape[0]

                def pin(_module, args, chunk=chunk, k=k, b=b):
                    x = args[0].clone()  # [k * b, seq, neurons], copy i of the batch in rows i*b .. (i+1)*b - 1
                    x.view(k, b, *x.shape[1:])[torch.arange(k), :, :, chunk] = means[chunk][:, None, None].to(x.dtype)
                    return (x, *args[1:])

                below = [_repeat(batch.block_outputs[layer - 1], k)] * layer if layer else []
                with removed_on_exit([self.adapter.ffn(layer).output.register_forward_pre_hook(pin)]), \
                        replay_below(self.model, layer, below):
                    logits = self.model(batch.ids.repeat(k, 1), batch.mask.repeat(k, 1)).float().view(k, b)
                out[start: start + k, batch.idx] = (batch.sign * logits - batch.margin).double().cpu().numpy()
        return out

    def use_readout(self) -> bool:
        """From now on compute the last block for the token the head reads only (`readout.install`): exact up
        to float rounding, and the dense margins are retaken with it so an ablation that changes nothing
        reads 0. Attribution and downstream changes need every token of the last block: run them first."""
        if not readout.install(self.model):
            return False
        with torch.inference_mode():
            for batch in self.batches:
                batch.margin = margin_of(self.model, batch)
        return True

    @torch.inference_mode()
    def downstream_change(self, layer: int, neuron: int) -> tuple[np.ndarray, np.ndarray]:
        """(mean change, mean |change|) of every neuron's activation in block layer + 1 over the reviews' real
        tokens when neuron `neuron` of block `layer` is mean-ablated: an exact, measured edge weight."""
        _no_readout(self.model, "downstream changes")
        target = layer + 1
        width = self.adapter.ffn_width(target)
        total, total_abs = torch.zeros(width, dtype=torch.float64), torch.zeros(width, dtype=torch.float64)
        seen: list = []
        with removed_on_exit([self.adapter.ffn(target).output.register_forward_pre_hook(
                lambda _m, args: seen.append(args[0]))]):
            for batch in self.batches:
                for pins in ({}, {layer: np.array([neuron])}):  # dense, then ablated
                    with replay_below(self.model, layer, batch.block_outputs), \
                            pin_to_means(self.model, pins, self.means), stop_after(self.model, target, []), \
                            suppress(StopForward):
                        self.model(batch.ids, batch.mask)
                dense, ablated = seen[-2:]
                d = (ablated.double() - dense.double())[batch.mask.bool()].cpu()  # [real tokens, width]
                total += d.sum(0)
                total_abs += d.abs().sum(0)
                seen.clear()
        return (total / self.tokens).numpy(), (total_abs / self.tokens).numpy()

    def attribution(self) -> list[np.ndarray]:
        """Per layer, every neuron's first-order estimate of its exact effect."""
        _no_readout(self.model, "attribution patching")
        acc = [torch.zeros(w, dtype=torch.float64) for w in self.adapter.ffn_widths()]
        with activation_gradients(self.model):
            for batch in self.batches:
                acts: dict[int, torch.Tensor] = {}
                with torch.enable_grad(), self.adapter.activation_hooks(retain_activations(acts)):
                    margin_of(self.model, batch).sum().backward()
                m = batch.mask.unsqueeze(-1).double()
                for l in range(self.adapter.num_layers):  # sum over real tokens of (mean - a) * d margin / d a
                    a, g = acts[l].detach().double(), acts[l].grad.double()
                    acc[l] += (((self.means[l].double() - a) * g) * m).sum(dim=(0, 1)).cpu()
        return [(x / self.n_reviews).numpy() for x in acc]


def _no_readout(model, what: str) -> None:
    if readout.is_installed(model):
        raise RuntimeError(f"{what} needs every token of the last block; call it before Ablator.use_readout")


def _repeat(out, k: int):
    """A block's cached output with its batch repeated k times (a tensor, or a tuple led by one)."""
    if isinstance(out, torch.Tensor):
        return out.repeat(k, *([1] * (out.dim() - 1)))
    return (_repeat(out[0], k), *out[1:])


def stratified_sample(widths: Sequence[int], total: int, seed: int) -> list[tuple[int, int]]:
    """About `total` (layer, neuron) pairs, the same number from every layer, drawn without replacement."""
    per_layer = max(1, math.ceil(total / len(widths)))
    rng = np.random.default_rng(seed)
    return [(layer, int(j)) for layer, w in enumerate(widths)
            for j in np.sort(rng.choice(w, size=min(per_layer, w), replace=False))]


def _by_layer(pairs) -> dict[int, np.ndarray]:
    out: dict[int, list[int]] = {}
    for layer, j in pairs:
        out.setdefault(int(layer), []).append(int(j))
    return {l: np.asarray(v) for l, v in out.items()}


EFFECTS = {  # per ablated neuron (or set), from the per-review margin changes d and the dense margins m
    "exact_effect": "mean margin change, mean(d): signed, negative = the neuron helps classify",
    "exact_abs_effect": "mean |logit change|, mean(|d|): how far the neuron moves the logit, either way",
    "exact_loss_effect": "mean change of the cross-entropy loss, mean(softplus(-(m + d)) - softplus(-m))",
}
TARGETS = {  # what a score's importance is compared with: larger = the neuron matters more
    "abs_mean_margin": "exact_effect",      # |mean margin change|: effects of opposite sign cancel over reviews
    "mean_abs_logit": "exact_abs_effect",   # mean |logit change|: what removing the neuron disturbs
}


def effect_summary(delta: np.ndarray, margins: np.ndarray) -> dict[str, np.ndarray]:
    """The EFFECTS of per-review margin changes `delta` [..., n_reviews] over dense `margins` [n_reviews]."""
    delta = np.asarray(delta, dtype=np.float64)
    loss = np.logaddexp(0.0, -(margins + delta)) - np.logaddexp(0.0, -margins)
    return {"exact_effect": delta.mean(-1), "exact_abs_effect": np.abs(delta).mean(-1),
            "exact_loss_effect": loss.mean(-1)}


def target_values(table: pd.DataFrame, target: str) -> pd.Series:
    return table[TARGETS[target]].abs()


def tail_neurons(table: pd.DataFrame, tail: int) -> dict[tuple[int, int], list[str]]:
    """Per layer, the `tail` neurons ranked highest by each score (ties: lower index first): (layer, neuron)
    -> the scores whose top tail it is in. `table` is indexed by (layer, neuron)."""
    out: dict[tuple[int, int], list[str]] = {}
    for name in SCORES:
        for layer, values in table[name].groupby(level="layer"):
            order = np.argsort(-values.to_numpy(), kind="stable")[:tail]
            for key in values.index[order]:
                out.setdefault((int(key[0]), int(key[1])), []).append(name)
    return out


def importance_table(ablator: Ablator, scores: pd.DataFrame) -> pd.DataFrame:
    """`scores` (one row per (layer, neuron) with cosine, contribution, fluctuation) indexed by (layer, neuron),
    with the ablator's activation magnitude and attribution patching added: every SCORES column."""
    widths = ablator.adapter.ffn_widths()
    table = scores.set_index(["layer", "neuron"]).sort_index()
    expected = pd.MultiIndex.from_tuples([(l, j) for l, w in enumerate(widths) for j in range(w)])
    if not table.index.equals(expected):
        raise ValueError("the score tables do not cover every (layer, neuron) of the model; rebuild them from "
                         "the same checkpoint")
    table["activation"] = np.concatenate(ablator.activation)
    attribution = np.concatenate(ablator.attribution())
    table["attribution"] = np.abs(attribution)
    table["attribution_signed"] = attribution
    return table


def ablate_each(ablator: Ablator, table: pd.DataFrame, sample, tails: dict, nodes, per_pass: int = 1,
                progress=None) -> dict:
    """Mean-ablate every neuron of `sample`, `tails` and `nodes` alone (the last block read for the target
    token only) and write the columns in_sample, tail_of, graph_node and EFFECTS into `table` (indexed by
    (layer, neuron)); returns the timings."""
    L = ablator.adapter.num_layers
    targets = sorted(set(sample) | set(tails) | set(nodes))
    ablator.use_readout()
    margins = ablator.margins
    clock = time.perf_counter()
    effects: dict[tuple[int, int], dict] = {}
    groups = [(layer, [j for l, j in targets if l == layer]) for layer in range(L)]
    for layer, neurons in (progress(groups) if progress else groups):
        if neurons:
            summary = effect_summary(ablator.neuron_effects(layer, neurons, per_pass), margins)
            for i, j in enumerate(neurons):
                effects[(layer, j)] = {k: float(v[i]) for k, v in summary.items()}
    sampled, graph = set(sample), set(nodes)
    table["in_sample"] = [k in sampled for k in table.index]
    table["tail_of"] = [" ".join(tails.get(k, [])) for k in table.index]
    table["graph_node"] = [k in graph for k in table.index]
    for name in EFFECTS:
        table[name] = [effects[k][name] if k in effects else np.nan for k in table.index]
    return dict(exact_seconds=time.perf_counter() - clock, exact_neurons=len(targets),
                # the cost unit: each ablation recomputes the blocks from its layer up, on every review
                exact_block_reviews=int(sum((L - l) * ablator.n_reviews for l, _ in targets)))


def ablation_tables(ablator: Ablator, scores: pd.DataFrame, graph_nodes: Sequence[tuple[int, int]], per_layer: int,
                    tail: int, top_fraction: float, random_draws: int, seed: int, per_pass: int = 1, progress=None
                    ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame, dict]:
    """(per-neuron table, score agreement table, top-set table, top-tail table, timings). `scores`: one row
    per (layer, neuron) with columns cosine, contribution, fluctuation (importance; larger = more important).

    Exact single-neuron ablations: `per_layer` random neurons of every layer (the sample the agreement is
    measured on), each score's top `tail` neurons of every layer, and the graph nodes."""
    clock = time.perf_counter()
    table = importance_table(ablator, scores)
    timings = dict(attribution_seconds=time.perf_counter() - clock)
    widths = ablator.adapter.ffn_widths()
    sample = stratified_sample(widths, per_layer * len(widths), seed)
    nodes = [tuple(map(int, n)) for n in graph_nodes]
    timings.update(ablate_each(ablator, table, sample, tail_neurons(table, tail), nodes, per_pass, progress))
    margins = ablator.margins
    cut = float(np.quantile(np.abs(table.loc[table["in_sample"], "exact_effect"]), CONFIRM_QUANTILE))
    table["confirmed"] = table["graph_node"] & (np.abs(table["exact_effect"]) > cut)
    flat = table.reset_index()
    agreement = score_agreement(flat, ablator.n_reviews, seed)
    tails_table = tail_agreement(flat)

    clock = time.perf_counter()
    total = len(table)
    k = max(1, int(round(top_fraction * total)))
    rng = np.random.default_rng(seed + 1)
    keys = np.array(table.index.tolist())
    random_sets = [effect_summary(ablator.review_effect(_by_layer(keys[rng.choice(total, size=k, replace=False)])),
                                  margins) for _ in range(random_draws)]
    r = np.array([x["exact_effect"] for x in random_sets])
    r_abs = np.array([x["exact_abs_effect"] for x in random_sets])
    random = dict(random_mean=float(r.mean()), random_sd=float(r.std(ddof=1)) if len(r) > 1 else 0.0,
                  random_min=float(r.min()), random_max=float(r.max()), random_draws=len(r))
    top_rows = []
    for name in SCORES:
        top = keys[np.argsort(-table[name].to_numpy(), kind="stable")[:k]]
        eff = effect_summary(ablator.review_effect(_by_layer(top)), margins)
        top_rows.append(dict(score=name, neurons=k, effect=float(eff["exact_effect"]), **random,
                             # share of random sets that hurt at least as much (one-sided, empirical)
                             p_random=float((np.sum(r <= eff["exact_effect"]) + 1) / (len(r) + 1)),
                             abs_effect=float(eff["exact_abs_effect"]), random_abs_mean=float(r_abs.mean()),
                             random_abs_max=float(r_abs.max()),
                             # share of random sets that move the logit at least as far
                             p_random_abs=float((np.sum(r_abs >= eff["exact_abs_effect"]) + 1) / (len(r) + 1)),
                             loss_effect=float(eff["exact_loss_effect"])))
    timings["top_sets_seconds"] = time.perf_counter() - clock
    return flat, agreement, pd.DataFrame(top_rows), tails_table, timings


def tail_agreement(table: pd.DataFrame) -> pd.DataFrame:
    """Does each score's top tail in a layer matter more than that layer's random neurons? Per (score, target):
    the share of tail neurons whose effect exceeds the median effect of their layer's random sample (1/2 if
    the score picks no better than chance), with its exact 95% interval and two-sided binomial p-value, and
    the tail neurons' mean percentile among their layer's random sample."""
    from scipy.stats import binomtest

    rows = []
    sample = table[table["in_sample"]]
    for target in TARGETS:
        effect = target_values(table, target)
        by_layer = {layer: np.sort(target_values(g, target).to_numpy()) for layer, g in sample.groupby("layer")}
        for name in SCORES:
            tail = table[table["tail_of"].str.split().apply(lambda names, name=name: name in names)]
            values = effect[tail.index].to_numpy()
            ref = [by_layer[int(l)] for l in tail["layer"]]
            above = np.array([v > np.median(r) for v, r in zip(values, ref)])
            pct = np.array([np.searchsorted(r, v, side="left") / len(r) for v, r in zip(values, ref)])
            n, k = len(values), int(above.sum())
            test = binomtest(k, n, 0.5) if n else None
            ci = test.proportion_ci(0.95, method="exact") if test else None
            rows.append(dict(score=name, target=target, tail_neurons=n, layers=int(tail["layer"].nunique()),
                             above_layer_median=k, share=k / n if n else np.nan,
                             share_lo=ci.low if ci else np.nan, share_hi=ci.high if ci else np.nan,
                             p_binomial=test.pvalue if test else np.nan,
                             mean_percentile=float(pct.mean()) if n else np.nan,
                             random_per_layer=int(np.median([len(r) for r in by_layer.values()]))))
    return pd.DataFrame(rows)


def edge_table(ablator: Ablator, edges: Sequence[tuple[tuple[int, int], tuple[int, int]]]) -> pd.DataFrame:
    """The neuron graph's edges measured: for each edge (layer l, neuron i) -> (l + 1, j), the change of j's
    activation over the reviews' real tokens when i is mean-ablated (`Ablator.downstream_change`), relative to
    j's own standard deviation, and its percentile among the same relative change of every neuron of block
    l + 1. `measured`: the percentile reaches CONFIRM_QUANTILE (i moves j more than 90% of that block)."""
    rows = []
    for u in sorted({u for u, _ in edges}):
        change, abs_change = ablator.downstream_change(*u)
        std = ablator.std[u[0] + 1]
        relative = np.divide(abs_change, std, out=np.full_like(abs_change, np.nan), where=std > 0)
        for (_, (lv, j)) in [e for e in edges if e[0] == u]:
            pct = float(np.mean(relative[np.isfinite(relative)] < relative[j])) if np.isfinite(relative[j]) else np.nan
            rows.append(dict(source=f"{u[0]}:{u[1]}", target=f"{lv}:{j}", source_layer=u[0], source_neuron=u[1],
                             target_layer=lv, target_neuron=j, change=float(change[j]), abs_change=float(abs_change[j]),
                             relative_change=float(relative[j]), percentile=pct,
                             measured=bool(pct >= CONFIRM_QUANTILE)))  # False for a NaN percentile
    columns = ["source", "target", "source_layer", "source_neuron", "target_layer", "target_neuron", "change",
               "abs_change", "relative_change", "percentile", "measured"]
    return pd.DataFrame(rows, columns=columns)


def within_layer_ranks(values: pd.Series, layers: pd.Series) -> np.ndarray:
    """Each value's percentile rank among the values of its own layer (sampled neurons, or heads)."""
    return values.groupby(layers.to_numpy()).rank(pct=True).to_numpy()


def rank_agreement(importance: pd.Series, effect: pd.Series, layers: pd.Series, seed: int = 0) -> dict[str, float]:
    """Spearman's rho of `importance` with `effect` (one value per unit, `layers` its layer), each with a 95%
    bootstrap interval: pooled over layers (spearman, spearman_lo, spearman_hi) and within layers
    (spearman_within_layer, _lo, _hi: both sides ranked within their layer first, so a score is judged on
    the choice a per-layer allocation makes, not on how its scale differs between layers)."""
    pooled = spearman_interval(importance.to_numpy(np.float64), effect.to_numpy(np.float64), seed=seed)
    within = spearman_interval(within_layer_ranks(importance, layers), within_layer_ranks(effect, layers), seed=seed)
    return dict(spearman=pooled.value, spearman_lo=pooled.lo, spearman_hi=pooled.hi, spearman_within_layer=within.value,
                spearman_within_layer_lo=within.lo, spearman_within_layer_hi=within.hi)


def score_agreement(table: pd.DataFrame, reviews: int, seed: int = 0) -> pd.DataFrame:
    """Spearman of each score's importance with each target (TARGETS) over the random sample, pooled over
    layers and within layers (`rank_agreement`); plus attribution patching against the exact effect, both
    signed."""
    s = table[table["in_sample"]]
    rows = [dict(score=name, target=target, description=doc,
                 **rank_agreement(s[name], target_values(s, target), s["layer"], seed), neurons=len(s), reviews=reviews)
            for target in TARGETS for name, doc in SCORES.items()]
    agree = spearman_interval(s["attribution_signed"].to_numpy(), s["exact_effect"].to_numpy(), seed)
    rows.append(dict(score="attribution_signed_vs_exact_signed", target="exact_effect",
                     description="attribution patching against the exact effect, both signed", spearman=agree.value,
                     spearman_lo=agree.lo, spearman_hi=agree.hi, neurons=len(s), reviews=reviews,
                     pearson=float(np.corrcoef(s["attribution_signed"], s["exact_effect"])[0, 1])))
    return pd.DataFrame(rows)


def score_frame(neuron_scores, contributions, ffn_stats) -> pd.DataFrame:
    """Importance of every neuron by the anatomy's and FLAP's scores, one row per (layer, neuron)."""
    cos = (read_parquet(neuron_scores, columns=["layer", "neuron", "score"])
           .groupby(["layer", "neuron"])["score"].mean().abs().rename("cosine"))
    con = read_parquet(contributions).set_index(["layer", "neuron"])["mean_abs_contribution"].rename("contribution")
    neurons = read_parquet(ffn_stats, columns=["layer", "neuron"]).set_index(["layer", "neuron"]).sort_index().index
    flu = pd.Series(np.concatenate(importance("fluctuation", NeuronStats.from_files(ffn_stats))), index=neurons,
                    name="fluctuation")
    df = pd.concat([cos, con, flu], axis=1)
    if df.isna().any().any():
        raise ValueError(f"{neuron_scores}, {contributions} and {ffn_stats} list different neurons; rebuild them "
                         "from the same checkpoint")
    df.index = df.index.set_names(["layer", "neuron"])
    return df.reset_index().astype({"layer": "int64", "neuron": "int64"})


def ablate(finetuned, val, neuron_scores, contributions, ffn_stats, graph, ablation, ablation_scores, ablation_top,
           ablation_tails, graph_edges, ablation_summary, settings: dict, threads: int | None, device: str) -> None:
    """Rule ablate: exact and first-order ablation effects on the first `settings["reviews"]` validation reviews,
    the score agreement, the top tails and sets, and the neuron graph's edges measured (module doc). settings:
    reviews, neurons_per_layer, tail, neurons_per_pass, top_fraction, random_draws, seed, batch_size."""
    import networkx as nx

    from .data import read_split
    from .io import write_csv, write_json, write_parquet
    from .models import open_checkpoint

    p = settings
    net = nx.read_graphml(graph)
    key = {n: (int(d["layer"]), int(d["neuron"])) for n, d in net.nodes(data=True)}
    start = time.perf_counter()
    ck = open_checkpoint(finetuned, device, threads)
    val = read_split(val)
    if p["reviews"] > len(val):
        raise ValueError(f"ablation.reviews = {p['reviews']} exceeds the {len(val)} validation reviews; lower it")
    reviews = val.iloc[: p["reviews"]]
    ablator = Ablator(ck.model, ck.encode(reviews["text"]), reviews["label"].to_numpy(), ck.pad_id, ck.padding_side,
                      p["batch_size"])
    dense_seconds = time.perf_counter() - start
    clock = time.perf_counter()
    # before the readout: an edge reads every token of block l + 1
    edges = edge_table(ablator, [(key[u], key[v]) for u, v in net.edges()])
    edge_seconds = time.perf_counter() - clock
    table, agreement, tops, tails, timings = ablation_tables(
        ablator, score_frame(neuron_scores, contributions, ffn_stats), list(key.values()), p["neurons_per_layer"],
        p["tail"], p["top_fraction"], p["random_draws"], p["seed"], p["neurons_per_pass"],
        progress=lambda xs: progress_bar(xs, desc="ablate (layers)"))
    write_parquet(table, ablation)
    write_csv(agreement, ablation_scores)
    write_csv(tops, ablation_top)
    write_csv(tails, ablation_tails)
    write_csv(edges, graph_edges)
    scored = agreement[agreement["score"].isin(list(SCORES))]
    summary = dict(reviews=ablator.n_reviews, tokens=ablator.tokens, layers=ablator.adapter.num_layers,
                   sampled_neurons=int(table["in_sample"].sum()), neurons_per_layer=p["neurons_per_layer"],
                   tail=p["tail"], tail_neurons=int((table["tail_of"] != "").sum()),
                   ablated_neurons=int(table["exact_effect"].notna().sum()),
                   graph_nodes=int(table["graph_node"].sum()), confirmed_graph_nodes=int(table["confirmed"].sum()),
                   graph_edges=len(edges), measured_graph_edges=int(edges["measured"].sum()),
                   # per target and score, [rho, lo, hi] pooled (spearman) and within layers (spearman_within_layer)
                   **{c: {t: {r.score: [getattr(r, c), getattr(r, f"{c}_lo"), getattr(r, f"{c}_hi")] for r in g.itertuples()}
                          for t, g in scored.groupby("target")} for c in ("spearman", "spearman_within_layer")},
                   attribution_vs_exact=agreement.iloc[-1][["spearman", "pearson"]].tolist(),
                   dense_seconds=dense_seconds, edge_seconds=edge_seconds, **timings,
                   seconds=time.perf_counter() - start)
    summary["seconds_per_block_review"] = summary["exact_seconds"] / max(1, summary["exact_block_reviews"])
    write_json(ablation_summary, summary)
    log.info("ablation of %d neurons (%d per layer at random, score tails, graph nodes) on %d reviews: exact %.0f s "
             "(%.2f ms per block and review), in all %.0f s", summary["ablated_neurons"], p["neurons_per_layer"],
             ablator.n_reviews, summary["exact_seconds"], 1e3 * summary["seconds_per_block_review"], summary["seconds"])
    log.info("within-layer Spearman with the exact effects %s; %d of %d graph nodes confirmed, %d of %d edges "
             "measured", summary["spearman_within_layer"], summary["confirmed_graph_nodes"], summary["graph_nodes"],
             summary["measured_graph_edges"], summary["graph_edges"])
