"""One latency budget for attention heads and FFN neurons: which heads and neurons each layer keeps so that
the model meets a target speedup at the least cost on validation reviews (the objective's: the loss increase,
or the mean |margin change|).

Per layer l a choice is a head configuration (how many query heads it keeps and, with grouped-query attention,
how many key/value heads: `head_configurations`; or none, the layer's attention removed) and a kept FFN
width from a grid. Which heads and neurons a choice keeps follows the criteria: the most important heads
that fit the configuration (`kept_heads`), the most important neurons (`LayerChoices`). For each choice
(k, j) the latency model gives the layer's seconds t_l(k, j) (`latency.LatencyTable`, measured on this
machine) and a sensitivity table the cost s_l(k, j) (column `cost`, beside its `objective`) of that choice
made in layer l alone. The allocation minimises sum_l s_l(k_l, j_l) subject to base + sum_l t_l(k_l, j_l) <= dense /
target: a multiple-choice knapsack, solved by dynamic programming over the layers' time budget cut into
`bins` equal steps, each choice's seconds rounded up to whole steps (so the budget always holds, and the
answer is optimal for the rounded times). Like `allocation.searched_counts`, the cost is additive over
layers (interactions between layers are ignored).

Two sensitivity tables (`estimated_losses`, `measured_losses`):
- measured: the exact validation loss increase of each head configuration (`sensitivity.head_sensitivity`)
  plus that of the FFN at the width (`sensitivity.layer_sensitivity`'s fractions, interpolated), each
  pruned alone with its bias fold;
- estimated: from one backward pass over the validation reviews (`attribution.review_effects`): per review,
  the first-order margin changes of the layer's pruned heads and neurons (mean-ablated) added up and put
  through the exact loss (objective loss), or their mean absolute value (objective margin,
  `estimated_margin_change`). A forward pass per layer and choice costs too much on SmolLM2's 30 layers.

No torch here (the head criteria's registry, which imports it, is read only when a speed target is parsed).
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .criteria import CRITERIA
from .spec import SPEED, SPEED_FORM, SPEED_PATTERN, STRUCTURES, MethodRecord



def head_configurations(heads: int, kv_heads: int) -> list[tuple[int, int]]:
    """Every (query heads, key/value heads) a layer of `heads` query heads sharing `kv_heads` key/value heads can
    keep, at least one query head: k of its key/value groups, c query heads of each (`heads.check_heads`)."""
    if heads % kv_heads:
        raise ValueError(f"{heads} query heads cannot share {kv_heads} key/value heads evenly")
    group = heads // kv_heads
    return sorted({(k * c, k) for k in range(1, kv_heads + 1) for c in range(1, group + 1)})


def kept_heads(importance: np.ndarray, kv_heads: int, query: int, kv: int) -> np.ndarray:
    """The query heads kept in configuration (query, kv): the kv key/value groups whose `query // kv` most
    important query heads weigh most, and those heads (ties: the lower index)."""
    if query == 0:
        return np.zeros(0, dtype=np.int64)
    importance = np.asarray(importance, dtype=np.float64)
    group = len(importance) // kv_heads
    per = query // kv
    if (query, kv) not in head_configurations(len(importance), kv_heads):
        raise ValueError(f"({query} query, {kv} key/value heads) is not a configuration of {len(importance)} heads in "
                         f"{kv_heads} groups; choose one of {head_configurations(len(importance), kv_heads)}")
    best = [np.argsort(-importance[g * group:(g + 1) * group], kind="stable")[:per] + g * group for g in range(kv_heads)]
    weight = np.array([importance[b].sum() for b in best])
    groups = np.argsort(-weight, kind="stable")[:kv]
    return np.sort(np.concatenate([best[g] for g in groups]))


@dataclass(frozen=True)
class HeadChoice:
    query: int             # query heads kept (0: the attention removed; the layer keeps one head, zeroed)
    kv: int                # key/value heads kept
    pruned: np.ndarray     # the pruned query heads, sorted


@dataclass
class LayerChoices:
    """One layer's choices: head configurations (rows) and kept FFN widths (columns)."""

    heads: list[HeadChoice]
    widths: list[int]
    ffn_order: np.ndarray  # the layer's neurons by increasing importance: a width w prunes the first F - w

    def pruned_neurons(self, j: int) -> np.ndarray:
        return np.sort(self.ffn_order[: len(self.ffn_order) - self.widths[j]])

    @property
    def dense_heads(self) -> tuple[int, int]:
        """(query, key/value) heads of the dense layer: every choice's kept and pruned query heads add up to it."""
        return self.heads[0].query + len(self.heads[0].pruned), max(h.kv for h in self.heads)


def layer_choices(structures: str, ffn_importance: np.ndarray, head_importance: np.ndarray, kv_heads: int,
                  width_steps: int = 32) -> LayerChoices:
    """A layer's choices for `structures` (`STRUCTURES`): every head configuration and no attention (heads,
    joint), kept widths 0, F/width_steps, ..., F (ffn, joint); the structure left alone keeps all."""
    if structures not in STRUCTURES:
        raise ValueError(f"structures {structures!r} is not one of {STRUCTURES}")
    H, F = len(head_importance), len(ffn_importance)
    heads = [HeadChoice(H, kv_heads, np.zeros(0, dtype=np.int64))]
    if structures in ("heads", "joint"):
        heads = [HeadChoice(0, 0, np.arange(H))]
        for q, kv in head_configurations(H, kv_heads):
            keep = kept_heads(head_importance, kv_heads, q, kv)
            heads.append(HeadChoice(q, kv, np.setdiff1d(np.arange(H), keep)))
    widths = [F]
    if structures in ("ffn", "joint"):
        widths = sorted({int(round(F * i / width_steps)) for i in range(width_steps + 1)})
    return LayerChoices(heads, widths, np.argsort(np.asarray(ffn_importance), kind="stable"))  # as `lowest` orders


def choice_attributions(choices: LayerChoices, head_attribution: np.ndarray, neuron_attribution: np.ndarray
                        ) -> np.ndarray:
    """[reviews, head choices, widths]: A_i, the sum of the first-order margin changes
    (`attribution.ReviewEffects.head_attribution` / `neuron_attribution`, [N, units] of this layer) of each choice's
    pruned heads and neurons."""
    a_heads = np.stack([head_attribution[:, c.pruned].sum(1) for c in choices.heads], 1)  # [N, K]
    N, F = neuron_attribution.shape
    cum = np.concatenate([np.zeros((N, 1)), np.cumsum(neuron_attribution[:, choices.ffn_order], 1)], 1)
    a_ffn = cum[:, [F - w for w in choices.widths]]  # [N, J]
    return a_heads[:, :, None] + a_ffn[:, None, :]


def estimated_losses(choices: LayerChoices, margins: np.ndarray, head_attribution: np.ndarray,
                     neuron_attribution: np.ndarray) -> np.ndarray:
    """[heads choices, widths]: mean over reviews of softplus(-(m_i + A_i)) - softplus(-m_i) (`choice_attributions`)."""
    m = np.asarray(margins, dtype=np.float64)
    total = m[:, None, None] + choice_attributions(choices, head_attribution, neuron_attribution)
    return (np.logaddexp(0.0, -total) - np.logaddexp(0.0, -m)[:, None, None]).mean(0)


def estimated_margin_change(choices: LayerChoices, head_attribution: np.ndarray, neuron_attribution: np.ndarray
                            ) -> np.ndarray:
    """[heads choices, widths]: mean over reviews of |A_i| (`choice_attributions`), zero when nothing is pruned.
    Unlike the loss increase it cannot be negative: on a fine-tuned MiniLM removing heads lowers the validation
    cross-entropy, and an allocation minimising that pruned past its latency target (docs/SPEED.md)."""
    return np.abs(choice_attributions(choices, head_attribution, neuron_attribution)).mean(0)


def measured_losses(choices: LayerChoices, head_increase: Sequence[float], ffn_sensitivity: pd.DataFrame
                    ) -> np.ndarray:
    """[heads choices, widths]: the exact loss increase of each head choice (`head_increase`, in the order of
    `choices.heads`) plus the FFN's at each width, interpolated linearly in the pruned count between the
    fractions `sensitivity.layer_sensitivity` measured for this layer (its rows: pruned, loss_increase)."""
    part = ffn_sensitivity.sort_values("pruned")
    F = len(choices.ffn_order)
    pruned = [F - w for w in choices.widths]
    if max(pruned) > part["pruned"].max():
        raise ValueError(f"the FFN sensitivity reaches {part['pruned'].max()} pruned neurons, the widths need "
                         f"{max(pruned)}; measure larger fractions")
    ffn = np.interp(pruned, part["pruned"].to_numpy(float), part["loss_increase"].to_numpy(float))
    return np.asarray(head_increase, dtype=np.float64)[:, None] + ffn[None, :]


def allocate(losses: Sequence[np.ndarray], seconds: Sequence[np.ndarray], budget: float, bins: int = 2000
             ) -> list[tuple[int, int]]:
    """Per layer the choice (k, j) minimising sum_l losses[l][k, j] subject to sum_l seconds[l][k, j] <= budget,
    each time rounded up to whole steps of budget / bins (module docstring); ties go to the choice listed first."""
    if budget <= 0:
        raise ValueError(f"a budget of {budget:.4g} s leaves the layers no time; the target cannot be met")
    unit = budget / bins
    costs = [np.ceil(np.asarray(s, dtype=np.float64) / unit - 1e-9).astype(np.int64) for s in seconds]
    if sum(int(c.min()) for c in costs) > bins:
        fastest = sum(float(np.min(s)) for s in seconds)
        raise ValueError(f"even the fastest choices take {fastest:.4g} s of the layers' budget of {budget:.4g} s: the "
                         "target speedup is out of reach of these choices (prune more structures, or a lower target)")
    inf = np.inf
    best = np.zeros(bins + 1)  # best[b]: least loss of the layers so far within b steps
    picks = []
    for loss, cost in zip(losses, costs):
        loss = np.asarray(loss, dtype=np.float64).ravel()
        cost = cost.ravel()
        new = np.full(bins + 1, inf)
        arg = np.full(bins + 1, -1, dtype=np.int64)
        for o in range(len(loss)):  # options in order: a strict improvement is needed to replace an earlier one
            c = cost[o]
            if c > bins:
                continue
            cand = np.full(bins + 1, inf)
            cand[c:] = best[: bins + 1 - c] + loss[o]
            better = cand < new - 1e-15
            new[better], arg[better] = cand[better], o
        best = new
        picks.append(arg)
    b = bins
    out = []
    for layer in range(len(losses) - 1, -1, -1):
        o = int(picks[layer][b])
        shape = np.asarray(losses[layer]).shape
        out.append(np.unravel_index(o, shape))
        b -= int(costs[layer].ravel()[o])
    return [(int(k), int(j)) for k, j in reversed(out)]


def sensitivity_frame(choices: Sequence[LayerChoices], costs: Sequence[np.ndarray], objective: str) -> pd.DataFrame:
    """The allocation's sensitivity as a table: one row per (layer, head choice, width), its `cost` under
    `objective` (margin: the mean |margin change|; loss: the loss increase, estimated or measured)."""
    rows = []
    for layer, (c, cost) in enumerate(zip(choices, costs)):
        for k, h in enumerate(c.heads):
            for j, w in enumerate(c.widths):
                rows.append(dict(layer=layer, heads_kept=h.query, kv_kept=h.kv, width=w, cost=float(cost[k, j]),
                                 objective=objective))
    return pd.DataFrame(rows)


def restrict(cost: np.ndarray, joint_choices: LayerChoices, choices: LayerChoices) -> np.ndarray:
    """The joint table's rows and columns for a structure's choices (its head configurations and widths are a
    subset of the joint ones: `layer_choices`)."""
    rows = [[(h.query, h.kv) for h in joint_choices.heads].index((h.query, h.kv)) for h in choices.heads]
    cols = [joint_choices.widths.index(w) for w in choices.widths]
    return np.asarray(cost)[np.ix_(rows, cols)]


@dataclass(frozen=True)
class SpeedMethod(MethodRecord):
    """A speed target: prune `structures` with `criterion` (heads: a head criterion; ffn and joint: an FFN
    criterion, the heads of joint by `head_criterion`), compensate by `compensation`, meet `speedup` on the
    latency model. Its name (`name`, read back by `parse`): <criterion>-<structures>-<compensation>-x<speedup>,
    e.g. fluctuation-joint-refit-x1.6; a joint plan whose heads follow another criterion than its neurons names
    both, <ffn criterion>+<head criterion>-joint-<compensation>-x<speedup> (wanda-sp+attribution-joint-refit-x1.4).
    `head_criterion` is the criterion of the pruned heads: `criterion` itself for heads, None for ffn."""

    criterion: str
    structures: str
    compensation: str
    speedup: float
    head_criterion: str | None = "fluctuation"
    ridge: float | None = None          # a fitted compensation's relative ridges (as `spec.MethodSpec`'s)
    readout_ridge: float | None = None

    def __post_init__(self):
        if self.structures not in STRUCTURES:
            raise ValueError(f"structures {self.structures!r} is not one of {STRUCTURES}")
        # one record per name: the head criterion follows from the structures where the name does not carry it
        heads = {"heads": self.criterion, "ffn": None}.get(self.structures, self.head_criterion)
        object.__setattr__(self, "head_criterion", heads)
        object.__setattr__(self, "speedup", float(self.speedup))

    @property
    def name(self) -> str:
        return f"{self.curve}-x{self.speedup:g}"

    @property
    def curve(self) -> str:
        """The name without its speedup: the points of one curve differ in the speedup alone."""
        criteria = self.criterion if self.structures != "joint" or self.head_criterion == self.criterion else \
            f"{self.criterion}+{self.head_criterion}"
        return f"{criteria}-{self.structures}-{self.compensation}"

    @property
    def allocation(self) -> str:
        return SPEED

    @property
    def family(self) -> str:
        """What metrics.json calls the rule (as `spec.MethodSpec.family`)."""
        return SPEED

    @property
    def ffn_criterion(self) -> str | None:
        return None if self.structures == "heads" else self.criterion

    @classmethod
    def parse(cls, name: str) -> "SpeedMethod":
        """The method a speed target's name spells (`name`'s grammar); a ValueError that names the bad part and the
        valid form otherwise."""
        from .head_criteria import HEAD_CRITERIA  # imports torch: read only here

        m = re.fullmatch(SPEED_PATTERN, name)
        if not m:
            raise ValueError(f"{name!r} is not a speed target {SPEED_FORM}")
        criterion, head, structures, compensation = m["criterion"], m["head"], m["structures"], m["compensation"]
        if not re.fullmatch(r"\d+(?:\.\d+)?", m["speedup"]):
            raise ValueError(f"{name}: x{m['speedup']} is not a speedup; write it as a decimal number with a point, "
                             f"e.g. {name[: name.rindex('-x')]}-x1.6")
        speedup = float(m["speedup"])
        if speedup <= 1:
            raise ValueError(f"{name}: a speedup of {speedup:g} is no speedup; give one above 1, e.g. "
                             f"{name[: name.rindex('-x')]}-x1.6")
        if head is not None and structures != "joint":
            raise ValueError(f"{name}: only a joint target names a second (head) criterion after '+'; "
                             f"e.g. {criterion}-{structures}-{compensation}-x{m['speedup']}")
        registry = HEAD_CRITERIA if structures == "heads" else CRITERIA
        if criterion not in registry:
            raise ValueError(f"{name}: {criterion!r} is not a{' head' if structures == 'heads' else 'n FFN'} criterion; "
                             f"choose one of {sorted(registry)}")
        if head is not None and head not in HEAD_CRITERIA:
            raise ValueError(f"{name}: {head!r} is not a head criterion; choose one of {sorted(HEAD_CRITERIA)}")
        if structures == "joint" and head is None and criterion not in HEAD_CRITERIA:
            raise ValueError(f"{name}: {criterion!r} is no head criterion, so the joint target must name one: "
                             f"{criterion}+<head criterion>-joint-..., the head criteria {sorted(HEAD_CRITERIA)}")
        method = cls(criterion, structures, compensation, speedup, head or criterion)
        if method.name != name:
            raise ValueError(f"{name}: write it as {method.name} (one name per target)")
        return method


@dataclass
class LatencyTable:
    """Seconds of one layer over the reference reviews, by head configuration (rows) and FFN width (columns)."""

    signature: dict
    heads: list[tuple[int, int]]   # (query heads, key/value heads) of each row
    widths: list[int]              # kept FFN widths of the columns, increasing
    body: np.ndarray               # a layer below the last
    readout: np.ndarray            # the last layer (the read token only)
    base: float                    # the rest of the pass: embeddings, head, batching, the loop's Python
    dense: float                   # the dense loop's measured pass over the same reviews
    info: dict = field(default_factory=dict)

    @property
    def layers(self) -> int:
        return self.signature["shapes"]["layers"]

    def layer_seconds(self, query: int, kv: int, width: int, last: bool = False) -> float:
        """One layer's seconds; no query heads left costs one (the layer keeps one, zeroed), no neurons one."""
        if query == 0:
            query, kv = 1, 1
        key = (int(query), int(kv))
        if key not in self.heads:
            raise ValueError(f"({query} query, {kv} key/value heads) was not measured; the table has {self.heads}")
        row = (self.readout if last else self.body)[self.heads.index(key)]
        return float(np.interp(max(int(width), 1), self.widths, row))

    def seconds(self, heads: Sequence[tuple[int, int]], widths: Sequence[int]) -> float:
        """A whole pass of a model with these per-layer (query, key/value) heads and FFN widths."""
        if len(heads) != self.layers or len(widths) != self.layers:
            raise ValueError(f"{len(heads)} head counts and {len(widths)} widths for a table of {self.layers} layers")
        last = self.layers - 1
        return self.base + sum(self.layer_seconds(q, kv, w, l == last) for l, ((q, kv), w) in enumerate(zip(heads, widths)))

    @property
    def dense_predicted(self) -> float:
        s = self.signature["shapes"]
        return self.seconds([(s["heads"], s["kv_heads"])] * self.layers, [s["ffn_width"]] * self.layers)

    def speedup(self, heads: Sequence[tuple[int, int]], widths: Sequence[int]) -> float:
        return self.dense_predicted / self.seconds(heads, widths)

    def to_dict(self) -> dict:
        return dict(signature=self.signature, heads=[list(h) for h in self.heads], widths=list(self.widths),
                    body=self.body.tolist(), readout=self.readout.tolist(), base=self.base, dense=self.dense,
                    info=self.info)

    @classmethod
    def from_dict(cls, d: dict) -> "LatencyTable":
        return cls(d["signature"], [tuple(h) for h in d["heads"]], list(d["widths"]), np.asarray(d["body"], float),
                   np.asarray(d["readout"], float), float(d["base"]), float(d["dense"]), d.get("info", {}))
