"""Anatomy checked by ablation: what removing a neuron actually does to the classifier.

On a few validation reviews (float32, so single-neuron effects are not rounding noise):
  exact effect     mean-ablate one neuron (its activation set to its mean over the reviews' real
                   tokens) and measure the change of the logit margin (2y-1) * logit, averaged over
                   the reviews. Negative: the neuron helps classify. Each ablation reruns only the
                   blocks from the neuron's layer up: the blocks below replay their cached outputs.
                   Run on a sample stratified over layers, plus every node of the neuron graph.
  attribution      attribution patching: sum over tokens of (mean - a) * d margin / d a, one
                   forward and backward pass for every neuron at once; a first-order estimate of the
                   exact effect (Syed et al. 2023; Nanda 2023).
  score agreement  Spearman's rho (95% bootstrap interval) between each score's importance and
                   |exact effect| on the sample, pooled over layers and within layers: the paper's
                   |cosine|, the direct contribution's mean |a (v . head)|, FLAP's fluctuation
                   Var[a] ||v||^2, activation magnitude mean |a|, and |attribution|.
  top sets         the margin change when the top `top_fraction` of all neurons by each score are
                   mean-ablated together, against `random_draws` random sets of the same size.

ablation.parquet, one row per (layer, neuron): in_sample, graph_node (bool), exact_effect (NaN
where not ablated), attribution, and the scores above (cosine, contribution, fluctuation,
activation); confirmed (graph nodes: |exact effect| above the 90th percentile of the sample's).
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from contextlib import contextmanager

import numpy as np
import pandas as pd
import torch

from .batching import iter_padded, sorted_batches
from .device import model_device
from .io import read_parquet
from .models import SentimentClassifier
from .progress import progress as progress_bar
from .pruning.criteria import NeuronStats, importance
from .replay import replay_below
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
    """One batch of reviews with what the dense pass cached for it."""

    def __init__(self, ids, mask, sign):
        self.ids, self.mask, self.sign = ids, mask, sign
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
            self.batches.append(Batch(ids, mask, sign))
        self._dense_pass()

    @torch.inference_mode()
    def _dense_pass(self) -> None:
        """Cache every block's output and the margins; the neurons' mean and mean |a| over real tokens."""
        L = self.adapter.num_layers
        widths = self.adapter.ffn_widths()
        s1 = [torch.zeros(w, dtype=torch.float64) for w in widths]
        sabs = [torch.zeros(w, dtype=torch.float64) for w in widths]
        tokens = 0
        state: dict = {}

        def grab(layer):
            def hook(_module, args):
                x = args[0].double()[state["mask"]]
                s1[layer] += x.sum(0).cpu()
                sabs[layer] += x.abs().sum(0).cpu()
            return hook

        for batch in self.batches:
            outs: dict[int, object] = {}
            hooks = [block.register_forward_hook(lambda _m, _a, out, l=l: outs.__setitem__(l, out))
                     for l, block in enumerate(self.adapter.layers())]
            state["mask"] = batch.mask.bool()
            try:
                with self.adapter.activation_hooks(grab):
                    batch.margin = margin_of(self.model, batch)
            finally:
                for h in hooks:
                    h.remove()
            batch.block_outputs = [outs[l] for l in range(L)]
            tokens += int(batch.mask.sum())
        self.means = [(s / tokens).float() for s in s1]
        self.activation = [(s / tokens).numpy() for s in sabs]
        self.tokens = tokens

    @torch.inference_mode()
    def effect(self, neurons: dict[int, np.ndarray]) -> float:
        """Mean change of the margin over the reviews when these neurons (per layer) are mean-ablated."""
        lowest = min(neurons) if neurons else self.adapter.num_layers
        total = 0.0
        for batch in self.batches:
            with replay_below(self.model, lowest, batch.block_outputs), pin_to_means(self.model, neurons, self.means):
                total += float((margin_of(self.model, batch) - batch.margin).sum())
        return total / self.n_reviews

    def attribution(self) -> list[np.ndarray]:
        """Per layer, every neuron's first-order estimate of its exact effect."""
        acc = [torch.zeros(w, dtype=torch.float64) for w in self.adapter.ffn_widths()]
        # Gradients with respect to the activations only: the weights stay frozen, the embedding output
        # is made to require grad so everything after it is differentiable.
        frozen = [(q, q.requires_grad) for q in self.model.parameters()]
        for q, _ in frozen:
            q.requires_grad_(False)
        embed = self.adapter.backbone.get_input_embeddings().register_forward_hook(
            lambda _m, _a, out: out.requires_grad_(True))
        try:
            for batch in self.batches:
                acts: dict[int, torch.Tensor] = {}

                def keep(layer):
                    def hook(_module, args):
                        acts[layer] = args[0]
                        args[0].retain_grad()
                    return hook
                with torch.enable_grad(), self.adapter.activation_hooks(keep):
                    margin_of(self.model, batch).sum().backward()
                self._accumulate(acc, acts, batch)
        finally:
            embed.remove()
            for q, flag in frozen:
                q.requires_grad_(flag)
        return [(x / self.n_reviews).numpy() for x in acc]

    def _accumulate(self, acc, acts, batch) -> None:
        """Add sum over real tokens of (mean - a) * d margin / d a, per neuron."""
        m = batch.mask.unsqueeze(-1).double()
        for l in range(self.adapter.num_layers):
            a, g = acts[l].detach().double(), acts[l].grad.double()
            acc[l] += (((self.means[l].double() - a) * g) * m).sum(dim=(0, 1)).cpu()


def stratified_sample(widths: Sequence[int], total: int, seed: int) -> list[tuple[int, int]]:
    """About `total` (layer, neuron) pairs, the same number from every layer, drawn without replacement."""
    per_layer = max(1, math.ceil(total / len(widths)))
    rng = np.random.default_rng(seed)
    out = []
    for layer, w in enumerate(widths):
        out += [(layer, int(j)) for j in np.sort(rng.choice(w, size=min(per_layer, w), replace=False))]
    return out


def _by_layer(pairs) -> dict[int, np.ndarray]:
    out: dict[int, list[int]] = {}
    for layer, j in pairs:
        out.setdefault(int(layer), []).append(int(j))
    return {l: np.asarray(v) for l, v in out.items()}


def ablation_tables(ablator: Ablator, scores: pd.DataFrame, graph_nodes: Sequence[tuple[int, int]], sample_size: int,
                    top_fraction: float, random_draws: int, seed: int, progress=None
                    ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(per-neuron table, score agreement table, top-set table). `scores`: one row per (layer, neuron)
    with columns cosine, contribution, fluctuation (importance; larger = more important)."""
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

    sample = stratified_sample(widths, sample_size, seed)
    nodes = [tuple(map(int, n)) for n in graph_nodes]
    targets = list(dict.fromkeys(sample + nodes))
    exact = {}
    iterator = progress(targets) if progress else targets
    for layer, j in iterator:
        exact[(layer, j)] = ablator.effect({layer: np.array([j])})
    sampled, graph = set(sample), set(nodes)
    table["in_sample"] = [k in sampled for k in table.index]
    table["graph_node"] = [k in graph for k in table.index]
    table["exact_effect"] = [exact.get(k, np.nan) for k in table.index]
    in_sample = table[table["in_sample"]]
    cut = float(np.quantile(np.abs(in_sample["exact_effect"]), CONFIRM_QUANTILE))
    table["confirmed"] = table["graph_node"] & (np.abs(table["exact_effect"]) > cut)

    agreement = score_agreement(table.reset_index(), ablator.n_reviews, seed)

    total = len(table)
    k = max(1, int(round(top_fraction * total)))
    rng = np.random.default_rng(seed + 1)
    keys = np.array(table.index.tolist())
    random_effects = [ablator.effect(_by_layer(keys[rng.choice(total, size=k, replace=False)]))
                      for _ in range(random_draws)]
    top_rows = []
    for name in SCORES:
        top = keys[np.argsort(-table[name].to_numpy(), kind="stable")[:k]]
        eff = ablator.effect(_by_layer(top))
        r = np.asarray(random_effects)
        top_rows.append(dict(score=name, neurons=k, effect=eff, random_mean=float(r.mean()),
                             random_sd=float(r.std(ddof=1)) if len(r) > 1 else 0.0, random_min=float(r.min()),
                             random_max=float(r.max()), random_draws=len(r),
                             # share of random sets that hurt at least as much (one-sided, empirical)
                             p_random=float((np.sum(r <= eff) + 1) / (len(r) + 1))))
    tops = pd.DataFrame(top_rows)
    return table.reset_index(), agreement, tops


def _within_layer_ranks(values: pd.Series, layers: pd.Series) -> np.ndarray:
    """Each value's percentile rank among the sampled neurons of its own layer."""
    return values.groupby(layers.to_numpy()).rank(pct=True).to_numpy()


def score_agreement(table: pd.DataFrame, reviews: int, seed: int = 0) -> pd.DataFrame:
    """Spearman of each score's importance with |exact effect| over the sampled neurons, pooled over
    layers (`spearman`) and within layers (`spearman_within_layer`: both sides ranked within their
    layer first, so a score is judged on the choice a per-layer allocation makes, not on how its
    scale differs between layers), each with a 95% bootstrap interval; plus attribution patching
    against the exact effect, both signed."""
    s = table[table["in_sample"]]
    effect = s["exact_effect"].abs()
    effect_within = _within_layer_ranks(effect, s["layer"])
    rows = []
    for name, doc in SCORES.items():
        pooled = spearman_interval(s[name].to_numpy(), effect.to_numpy(), seed=seed)
        within = spearman_interval(_within_layer_ranks(s[name], s["layer"]), effect_within, seed=seed)
        rows.append(dict(score=name, description=doc, spearman=pooled.value, spearman_lo=pooled.lo,
                         spearman_hi=pooled.hi, spearman_within_layer=within.value,
                         spearman_within_layer_lo=within.lo, spearman_within_layer_hi=within.hi,
                         neurons=len(s), reviews=reviews))
    agree = spearman_interval(s["attribution_signed"].to_numpy(), s["exact_effect"].to_numpy(), seed)
    rows.append(dict(score="attribution_signed_vs_exact_signed", description="attribution patching against the "
                     "exact effect, both signed", spearman=agree.value, spearman_lo=agree.lo, spearman_hi=agree.hi,
                     neurons=len(s), reviews=reviews,
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
           ablation_summary, settings: dict, threads: int | None, device: str) -> dict:
    """Rule ablate: exact and first-order ablation effects on the first `settings["reviews"]` validation reviews,
    the score agreement and the top sets (module doc). settings: reviews, neurons, top_fraction, random_draws,
    seed, batch_size."""
    import networkx as nx

    from .data import read_split
    from .io import write_csv, write_json, write_parquet
    from .models import open_checkpoint

    p = settings
    start = time.perf_counter()
    ck = open_checkpoint(finetuned, device, threads)
    val = read_split(val)
    if p["reviews"] > len(val):
        raise ValueError(f"ablation.reviews = {p['reviews']} exceeds the {len(val)} validation reviews; lower it")
    reviews = val.iloc[: p["reviews"]]
    ablator = Ablator(ck.model, ck.encode(reviews["text"]), reviews["label"].to_numpy(), ck.pad_id, ck.padding_side,
                      p["batch_size"])
    nodes = [(int(d["layer"]), int(d["neuron"])) for _, d in nx.read_graphml(graph).nodes(data=True)]
    table, agreement, tops = ablation_tables(
        ablator, score_frame(neuron_scores, contributions, ffn_stats), nodes, p["neurons"], p["top_fraction"],
        p["random_draws"], p["seed"], progress=lambda xs: progress_bar(xs, desc="ablate"))
    write_parquet(table, ablation)
    write_csv(agreement, ablation_scores)
    write_csv(tops, ablation_top)
    summary = dict(reviews=ablator.n_reviews, tokens=ablator.tokens, sampled_neurons=int(table["in_sample"].sum()),
                   graph_nodes=int(table["graph_node"].sum()), confirmed_graph_nodes=int(table["confirmed"].sum()),
                   spearman={r.score: [r.spearman, r.spearman_lo, r.spearman_hi] for r in agreement.itertuples()},
                   seconds=time.perf_counter() - start)
    write_json(ablation_summary, summary)
    log.info("ablation of %d neurons on %d reviews in %.0f s; Spearman with |exact effect| %s; %d of %d graph nodes "
             "confirmed", summary["sampled_neurons"], ablator.n_reviews, summary["seconds"],
             {k: round(v[0], 3) for k, v in summary["spearman"].items()}, summary["confirmed_graph_nodes"],
             summary["graph_nodes"])
    return None
