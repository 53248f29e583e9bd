"""A per-layer sensitivity for the searched allocation at the cost of one forward and backward pass (issue 26),
and a gradient criterion from the same pass; validation-split evidence in `decoder_levers.py`.

    python experiments/allocation_probe.py MODEL CRITERION REVIEWS PCTS [CHECK]
    python experiments/allocation_probe.py smollm2 wanda-sp 64 50,70 4

On the first REVIEWS train reviews (the calibration reviews; labels are not read), with the dense model in
float32:
1. the activations' mean mu and covariance C per layer (`obs.ffn_moments`); per layer l and fraction f of
   `pruning.methods.search_fractions`, the lowest f of the layer by CRITERION are pruned and the kept value
   vectors refitted to the dense FFN output by the pipeline's ridge least squares (relative ridge 0.01) from
   C alone: W = (C_KK + lambda I)^-1 (C_K: V + lambda V_K). D_lf = W - V on the kept rows, -V on the pruned.
2. one forward and backward pass: per review r, token t, layer l, a_rt (activations) and g_rt = d logit_r /
   d(FFN output at t). The first-order change of review r's logit when layer l alone is pruned at f and
   refitted is sum_t (a_rt - mu) D_lf . g_rt = <D_lf, P_rl>, P_rl = sum_t (a_rt - mu)^T g_rt; pinned to the
   means instead (the bias fold), neuron j alone changes it by -attr_rj, attr_rj = sum_t (a_rtj - mu_j) v_j . g_rt.
3. the sensitivity of (l, f): the mean over reviews of the squared logit change (label-free: a fidelity to the
   dense model, so the train reviews the model was fitted on are usable); the searched allocation of
   `allocation.searched_counts` on it, written to experiments/out/<model>-counts-<criterion>-<fit>.json for
   `decoder_levers.py alloc=counts:<file>` (fit: refit and bias).
4. the criterion `attribution`: sum_r attr_rj^2 per neuron (the Fisher of the mean-pinning mask in the logit),
   written to experiments/out/<model>-attribution.npz (`decoder_levers.py crit=attribution`).
CHECK > 0 compares the linear estimate with the exact logit change (a forward pass with layer l's value
vectors replaced by W) for CHECK (layer, fraction) cells on the first 16 reviews: Pearson over reviews.
"""
from __future__ import annotations

import copy
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from llm_anatomy.batching import iter_padded, sorted_batches
from llm_anatomy.config import load_params
from llm_anatomy.data import read_split
from llm_anatomy.layout import Layout
from llm_anatomy.models import open_checkpoint, set_threads
from llm_anatomy.pruning.allocation import lowest, searched_counts
from llm_anatomy.pruning.criteria import importance
from llm_anatomy.pruning.obs import ffn_moments
from llm_anatomy.surgery import set_outputs, zero_neurons
from decoder_levers import neuron_stats

OUT = Path("experiments/out")


def refit_deltas(values: np.ndarray, cov: np.ndarray, imp: np.ndarray, fractions, ridge: float = 0.01):
    """Per fraction, (pruned indices, D [F, H]): the layer's change of output weights when its lowest `f` by `imp`
    go and the kept ones are refitted to the dense output from the activations' covariance alone."""
    out = []
    for f in fractions:
        drop = lowest(imp, int(round(f * len(imp))))
        kept = np.setdiff1d(np.arange(len(imp)), drop)
        g = cov[np.ix_(kept, kept)]
        lam = ridge * float(np.trace(g)) / max(len(kept), 1)
        w = np.linalg.solve(g + lam * np.eye(len(kept)), cov[kept] @ values + lam * values[kept])
        d = -values.astype(np.float32)  # float32: 30 layers x 9 fractions of [F, H] must fit beside the model
        d[kept] = w - values[kept]
        out.append((drop, d))
    return out


def gradient_pass(model, encoded, pad, side, means, deltas, values, batch_size: int = 4):
    """(refit [R, L, Fr], bias [R, L, Fr], attr [R, L, F] list): first-order logit changes (see the docstring)."""
    ad = model.adapter
    L = ad.num_layers
    mu = [torch.tensor(m, dtype=torch.float32) for m in means]
    dt = [[torch.from_numpy(d) for _drop, d in cells] for cells in deltas]
    vt = [torch.tensor(v, dtype=torch.float32) for v in values]
    refit, attrs, order = [], [], []
    for q in model.parameters():
        q.requires_grad_(False)
    for idx, ids, mask in iter_padded(encoded, sorted_batches([len(e) for e in encoded], batch_size), pad, side):
        acts, outs, hooks = {}, {}, []
        for l in range(L):
            def grab(_m, args, out, l=l):
                acts[l] = args[0].detach()
                out.requires_grad_(True)
                outs[l] = out
                return out
            hooks.append(ad.ffn(l).output.register_forward_hook(grab))
        try:
            with torch.enable_grad():
                logits = model(ids, mask)
                grads = torch.autograd.grad(logits.sum(), [outs[l] for l in range(L)])
        finally:
            for h in hooks:
                h.remove()
        m = mask.unsqueeze(-1).float()
        r_cells, r_attr = [], []
        for l in range(L):
            p = torch.einsum("bsf,bsh->bfh", (acts[l] - mu[l]) * m, grads[l] * m)  # P_rl
            r_cells.append(torch.stack([(p * d).sum((1, 2)) for d in dt[l]], 1))
            r_attr.append((p * vt[l]).sum(-1))
        refit.append(torch.stack(r_cells, 1).double().numpy())
        attrs.append(torch.stack(r_attr, 1).double().numpy())
        order.append(idx)
    inv = np.argsort(np.concatenate(order))
    refit, attr = np.concatenate(refit)[inv], np.concatenate(attrs)[inv]
    bias = np.stack([np.stack([-attr[:, l, drop].sum(1) for drop, _d in deltas[l]], 1) for l in range(L)], 1)
    return refit, bias, attr


@torch.no_grad()
def exact_change(model, encoded, pad, side, layer, drop, d, values, bias_shift):
    """The logit change of each review when layer `layer`'s value vectors become V + D (bias shifted too)."""
    student = copy.deepcopy(model)
    ad = student.adapter
    ad.ensure_ffn_biases()
    kept = np.setdiff1d(np.arange(len(values)), drop)
    out = ad.ffn(layer).output
    set_outputs(ad, layer, kept.tolist(), torch.tensor(values[kept] + d[kept]),
                out.bias.detach().double() + torch.tensor(bias_shift))
    zero_neurons(ad, layer, drop.tolist())
    diffs = []
    for idx, ids, mask in iter_padded(encoded, sorted_batches([len(e) for e in encoded], 8), pad, side):
        diffs.append((idx, (student(ids, mask) - model(ids, mask)).double().numpy()))
    order = np.concatenate([i for i, _ in diffs])
    return np.concatenate([x for _, x in diffs])[np.argsort(order)]


def main(argv):
    name, crit, nrev, pcts = argv[0], argv[1], int(argv[2]), [int(p) for p in argv[3].split(",")]
    check = int(argv[4]) if len(argv) > 4 else 0
    logging.basicConfig(level=logging.WARNING)
    set_threads(int(os.environ.get("THREADS", "2")))
    fractions = load_params("params.yaml")["pruning"]["methods"]["search_fractions"]
    offline = Layout("offline")  # the offline run's files (llm_anatomy.layout)
    ck = open_checkpoint(offline.model(name).finetuned)
    model = ck.model
    model.float().eval()
    pad, side = ck.pad_id, ck.padding_side
    train = read_split(offline.split("train"))
    enc = ck.encode(train["text"].iloc[:nrev])
    imp = importance(crit, neuron_stats(name, ck, enc))
    start = time.perf_counter()
    means, covs, _n = ffn_moments(model, enc, pad, side, 8)
    values = [model.adapter.value_vectors(l).double().numpy() for l in range(model.adapter.num_layers)]
    deltas = []
    for l in range(len(values)):
        deltas.append(refit_deltas(values[l], covs[l], imp[l], fractions))
        covs[l] = None
    t_moments = time.perf_counter() - start
    refit, bias, attr = gradient_pass(model, enc, pad, side, means, deltas, values)
    seconds = time.perf_counter() - start
    OUT.mkdir(exist_ok=True)
    np.savez(OUT / f"{name}-probe-{crit}.npz", refit=refit, bias=bias, attr=attr)
    np.savez(OUT / f"{name}-attribution.npz", **{str(l): (attr[:, l] ** 2).sum(0) for l in range(attr.shape[1])})
    widths = [len(v) for v in values]
    for fit, table in (("refit", refit), ("bias", bias)):
        rows = [dict(layer=l, fraction=0.0, pruned=0, loss_increase=0.0) for l in range(len(widths))]
        rows += [dict(layer=l, fraction=f, pruned=int(round(f * widths[l])),
                      loss_increase=float((table[:, l, i] ** 2).mean()))
                 for l in range(len(widths)) for i, f in enumerate(fractions)]
        sens = pd.DataFrame(rows)
        counts = {str(p): searched_counts(sens, widths, p / 100) for p in pcts}
        path = OUT / f"{name}-counts-{crit}-{fit}.json"
        path.write_text(json.dumps(counts))
        print(json.dumps(dict(model=name, crit=crit, fit=fit, reviews=nrev, seconds=round(seconds, 1),
                              seconds_moments=round(t_moments, 1), file=str(path), counts=counts,
                              sensitivity_at_half={l: round(float((table[:, l, 4] ** 2).mean()), 5)
                                                   for l in range(len(widths))})), flush=True)
    rng = np.random.default_rng(0)
    for _ in range(check):
        l, i = int(rng.integers(len(widths))), int(rng.integers(len(fractions)))
        drop, d = deltas[l][i]
        shift = -(means[l] @ d)
        exact = exact_change(model, enc[:16], pad, side, l, drop, d, values[l], shift)
        est = refit[:16, l, i]
        print(json.dumps(dict(check_layer=l, fraction=fractions[i], pearson=round(float(np.corrcoef(exact, est)[0, 1]), 3),
                              exact_rms=round(float(np.sqrt((exact ** 2).mean())), 4),
                              linear_rms=round(float(np.sqrt((est ** 2).mean())), 4))), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
