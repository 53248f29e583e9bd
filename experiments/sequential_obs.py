"""Validation-split evidence against choosing the pruned neurons on the compensated student (docs/EVIDENCE.md,
"Choices"; not adopted). The pipeline fixes every layer's pruned set in the plan, from the dense model's
statistics, and then fits the compensation layer by layer. Here each layer's set is chosen during that
pass instead: with the layers below already pruned and refitted, the greedy optimal-brain-surgeon order
(`pruning.obs.obs_order`) is run on the student's activations against the drift-aware target, starting
from the full least-squares fit, and the plan's per-layer count of the lowest is pruned (ZipLM/SlimGPT's
sequential layer-wise order). Variants, each as `select:readout_ridge`: `fixed` (the plan's neurons, the
pipeline's `refit`) or `obs`; the token-level ridge is the plan's.

    python experiments/sequential_obs.py MODEL CURVE PCTS CAL_REVIEWS VARIANTS [VAL_REVIEWS]
    python experiments/sequential_obs.py minilm fluctuation-searched-refit 60,70,80 128 fixed:10,obs:10
    python experiments/sequential_obs.py smollm2 wanda-sp-uniform-refit 50 64 fixed:10,obs:10

The loop repeats `refit.fit_compensation`'s (kept here rather than given a selection hook in the package,
since the variant was not adopted). What each row prints, against dense and the first variant:
`plan_fits.compare`. Never reads the test split.
"""
import copy
import sys

import numpy as np
import torch

from llm_anatomy.batching import iter_padded, sorted_batches
from llm_anatomy.pruning.compensation import LayerStats, _ridge, compensate
from llm_anatomy.pruning.obs import obs_order
from llm_anatomy.pruning.refit import _run
from llm_anatomy.replay import replay_below, stop_after
from llm_anatomy.surgery import set_outputs, zero_neurons
from plan_fits import compare


@torch.no_grad()
def sequential_fit(dense, plan_pruned, encoded, pad_id, side, ridge, readout_ridge, select):
    """(student, pruned sets): refit layer by layer; `select` obs re-chooses each layer's set on the student."""
    teacher, student = copy.deepcopy(dense).float().eval(), copy.deepcopy(dense).float().eval()
    ad, t_ad = student.adapter, teacher.adapter
    ad.ensure_ffn_biases()
    t_ad.ensure_ffn_biases()
    L = ad.num_layers
    batches = []
    for _i, ids, mask in iter_padded(encoded, sorted_batches([len(s) for s in encoded], 16), pad_id, side,
                                     torch.device("cpu")):
        read = torch.zeros_like(mask, dtype=torch.bool)
        read[torch.arange(len(mask)), ad.target_positions(mask)] = True
        batches.append((ids, mask, [mask.bool()] * (L - 1) + [read]))
    sums = [[] for _ in range(L)]
    for ids, mask, fit_on in batches:
        seen, hooks = {}, []
        for l in range(L):
            site, arg = t_ad.residual_site(l)
            hooks.append(site.register_forward_pre_hook(lambda _m, a, l=l, arg=arg: seen.__setitem__(("r", l), a[arg])))
            hooks.append(t_ad.ffn(l).output.register_forward_hook(lambda _m, _a, o, l=l: seen.__setitem__(("y", l), o)))
        teacher(ids, mask)
        for h in hooks:
            h.remove()
        for l in range(L):
            sums[l].append((seen[("y", l)] + seen[("r", l)])[fit_on[l]])
    cached, chosen = [[] for _ in batches], []
    for l in range(L):
        width, out = ad.ffn_width(l), ad.ffn(l).output
        values, bias = ad.value_vectors(l).double().numpy(), out.bias.double().numpy()
        stats = LayerStats(width, ad.hidden_size)
        site, arg = ad.residual_site(l)
        for b, (ids, mask, fit_on) in enumerate(batches):
            seen = {}
            h1 = site.register_forward_pre_hook(lambda _m, a: seen.__setitem__("r", a[arg]))
            h2 = out.register_forward_pre_hook(lambda _m, a: seen.__setitem__("a", a[0]))
            with replay_below(student, l, cached[b]), stop_after(student, l, []):
                _run(student, ids, mask)
            h1.remove()
            h2.remove()
            stats.add(seen["a"][fit_on[l]].double().numpy(), (sums[l][b].double() - seen["r"][fit_on[l]].double()).numpy())
        lam = readout_ridge if l == L - 1 else ridge
        count = len(plan_pruned[l])
        if select == "obs" and count:
            _ma, _my, g, cross = stats._centred(np.arange(width))
            full = np.linalg.solve(g + _ridge(g, lam) * np.eye(width), cross + _ridge(g, lam) * values)
            rank, _delta = obs_order(full, g, lam)
            drop = np.sort(np.argsort(rank, kind="stable")[:count])
        else:
            drop = np.asarray(plan_pruned[l], dtype=np.int64)
        kept = np.setdiff1d(np.arange(width), drop)
        w, c = compensate(stats, kept, values, bias, "refit", lam)
        zero_neurons(ad, l, drop.tolist())
        set_outputs(ad, l, kept.tolist(), torch.from_numpy(w), torch.from_numpy(c))
        chosen.append(drop)
        for b, (ids, mask, _f) in enumerate(batches):
            keep = []
            with replay_below(student, l, cached[b]), stop_after(student, l, keep):
                _run(student, ids, mask)
            cached[b].append(keep[0])
    return student, chosen


def fit_by(select: str, readout_ridge: float):
    def fit(model, plan, cal, pad, side):
        return sequential_fit(model, plan.pruned, cal, pad, side, plan.info["ridge"], readout_ridge, select)
    return fit


if __name__ == "__main__":
    variants = [(v.split(":")[0], float(v.split(":")[1])) for v in sys.argv[5].split(",")]
    compare(sys.argv[1], sys.argv[2], [int(x) for x in sys.argv[3].split(",")], int(sys.argv[4]),
            int(sys.argv[6]) if len(sys.argv) > 6 else 500,
            [(dict(select=sel, readout_ridge=rr), fit_by(sel, rr)) for sel, rr in variants])
