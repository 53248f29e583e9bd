"""Validation-split evidence for issue 26 (docs/EVIDENCE.md, "Choices"): retraining-free levers of the refit
method, each variant against the first one (today's method) on the same reviews, printed as JSON lines.

    python experiments/decoder_levers.py MODEL PCTS EVAL VARIANT [VARIANT ...]
    python experiments/decoder_levers.py smollm2 50,70 val:500 base tw=norm ctx=0.01 head=1
    python experiments/decoder_levers.py smollm2 50 dev:2000 base ncal=256
    python experiments/decoder_levers.py minilm 70,80 val:500 base tw=norm

A VARIANT is `base` (the model's offline method) or comma-separated overrides of its keys:
  crit    criterion (`pruning.criteria`), on statistics of the first `nstat` train reviews, or `attribution`
          (written by allocation_probe.py)
  alloc   uniform | global | searched (from `results/offline/<m>/choices/sensitivity_<crit>.parquet`, the
          pipeline's layer sensitivity) | plan (the neurons of the plan `results/offline/<m>/prune/<curve>-<pct>`)
          | counts:<file.json> (per-layer counts per percentage, {"50": [...], ...}, e.g. from
          `allocation_probe.py`; the lowest `crit` neurons of each layer)
  ncal    calibration train reviews of the refit;  nstat  train reviews of the criterion's statistics
  ridge   relative ridge of the token-level layers; rr  the last layer's (readout_ridge)
  tw      token weights of the fit: uniform | norm (`refit.norm_weights`)
  ctx     the last layer's weight on the read review's other tokens (0: the read token alone)
  head    none | the relative ridge of a closed-form refit of the classifier head to the dense logits
EVAL is `val:N` (the first N offline validation reviews) or `dev:N` (N reviews of the IMDB *train* half in
neither the offline train nor validation split, a seeded label-balanced sample; never the IMDB test half).
Each row: accuracy and cross-entropy against dense and against the first variant (paired bootstrap,
`plan_fits.Scorer`), each layer's calibration error after the refit as a share of its uncompensated error, the
fit's wall seconds and their ratio to the first variant's (measured back to back in
this process; the machine may be loaded, so only the ratio is meaningful). THREADS (default 2) sets torch's
threads. Per-review logits go to experiments/out/<model>-<eval>-<pcts>.npz (one array per variant and
percentage) for later paired comparisons.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from llm_anatomy.data import read_split
from llm_anatomy.inference import predict_logits
from llm_anatomy.io import read_parquet
from llm_anatomy.layout import Layout
from llm_anatomy.models import open_checkpoint, set_threads
from llm_anatomy.pruning.allocation import allocate, lowest
from llm_anatomy.pruning.calibration import ffn_activation_stats
from llm_anatomy.pruning.criteria import NeuronStats, importance
from llm_anatomy.pruning.plan import read_plan
from llm_anatomy.pruning.refit import fit_compensation
from llm_anatomy.scores import per_layer
from llm_anatomy.surgery import remove_masked
from plan_fits import Scorer

IMDB_TRAIN = "../shared/data/imdb/train.parquet"
DEFAULTS = {  # the offline methods of params.yaml (docs/PRUNING.md)
    "smollm2": dict(curve="wanda-sp-uniform-refit", crit="wanda-sp", alloc="uniform", ncal=64, nstat=64,
                    ridge=0.01, rr=10.0, tw="uniform", ctx=0.0, head="none"),
    "minilm": dict(curve="fluctuation-searched-refit", crit="fluctuation", alloc="searched", ncal=128, nstat=128,
                   ridge=0.01, rr=10.0, tw="uniform", ctx=0.0, head="none"),
}
OFFLINE = Layout("offline")  # the offline run's files (llm_anatomy.layout)
STAT_COLUMNS = ("mean", "var", "mean_abs", "value_norm_sq", "in_norm_sq")


def neuron_stats(name: str, ck, encoded) -> NeuronStats:
    """FFN statistics of the calibration reviews `encoded`: the pipeline's ffn_stats.parquet where it measured
    exactly these, else measured here as the pipeline does; plus `attribution` when allocation_probe.py wrote it."""
    path = Path(OFFLINE.model(name).ffn_stats)
    df = read_parquet(path) if path.exists() else None
    if df is None or int(df["tokens"].iloc[0]) != sum(len(e) for e in encoded):
        df = ffn_activation_stats(ck.model, encoded, ck.pad_id, ck.padding_side, 16, ck.precision)
    df = df.set_index(["layer", "neuron"])
    cols = {c: per_layer(df[c], "ffn_stats") for c in STAT_COLUMNS}
    attribution = Path(f"experiments/out/{name}-attribution.npz")
    if attribution.exists():
        z = np.load(attribution)
        cols["attribution"] = [z[str(l)] for l in range(len(z.files))]
    return NeuronStats(cols)


def dev_sample(n: int, seed: int = 0) -> pd.DataFrame:
    """n reviews (half of each label) of the IMDB train half outside the offline train and validation splits."""
    imdb = pd.read_parquet(IMDB_TRAIN)
    used = set()
    for split in ("train", "val"):
        used |= set(read_split(OFFLINE.split(split))["source_index"].tolist())
    free = imdb.drop(index=sorted(used))
    rng = np.random.default_rng(seed)
    parts = [free[free["label"] == y].sample(n // 2, random_state=int(rng.integers(1 << 31))) for y in (0, 1)]
    return pd.concat(parts).sample(frac=1, random_state=seed).reset_index(drop=True)


def eval_reviews(spec: str) -> pd.DataFrame:
    kind, n = spec.split(":")
    if kind == "val":
        return read_split(OFFLINE.split("val")).iloc[:int(n)]
    if kind == "dev":
        return dev_sample(int(n))
    raise ValueError(f"EVAL {spec!r}: use val:N or dev:N")


def parse(variant: str, defaults: dict) -> tuple[dict, dict]:
    """(overrides, full configuration) of one VARIANT argument."""
    over = {}
    if variant != "base":
        for part in variant.split(","):
            key, value = part.split("=", 1)
            if key not in defaults:
                raise ValueError(f"{variant}: unknown key {key!r}; keys: {sorted(defaults)}")
            over[key] = type(defaults[key])(value) if not isinstance(defaults[key], str) else value
    return over, dict(defaults, **over)


class Lab:
    """The fine-tuned model, its tokenised train reviews and evaluation reviews, and cached statistics."""

    def __init__(self, name: str, eval_spec: str):
        self.name = name
        self.ck = open_checkpoint(OFFLINE.model(name).finetuned)
        self.model = self.ck.model
        self.pad, self.side, self.prec = self.ck.pad_id, self.ck.padding_side, self.ck.precision
        self.train = read_split(OFFLINE.split("train"))
        reviews = eval_reviews(eval_spec)
        self.enc = self.ck.encode(reviews["text"])
        self.scorer = Scorer(self.logits(self.model), reviews["label"].to_numpy())
        self._stats: dict[int, NeuronStats] = {}

    def logits(self, model) -> np.ndarray:
        return predict_logits(model, self.enc, self.pad, 32, self.prec, self.side)

    def calibration(self, n: int):
        return self.ck.encode(self.train["text"].iloc[:n])

    def pruned(self, cfg: dict, pct: int) -> list[np.ndarray]:
        if cfg["alloc"] == "plan":
            return read_plan(OFFLINE.target(self.name, f"{cfg['curve']}-{pct}").plan).pruned
        n = cfg["nstat"]
        if n not in self._stats:
            self._stats[n] = neuron_stats(self.name, self.ck, self.calibration(n))
        imp = [np.asarray(a, dtype=np.float64) for a in self._stats[n]["attribution"]] if cfg["crit"] == "attribution" \
            else importance(cfg["crit"], self._stats[n])
        if cfg["alloc"].startswith("counts:"):
            counts = json.loads(Path(cfg["alloc"].split(":", 1)[1]).read_text())[str(pct)]
            return [lowest(i, k) for i, k in zip(imp, counts)]
        sensitivity = None
        if cfg["alloc"] == "searched":
            sensitivity = read_parquet(OFFLINE.model(self.name).sensitivity(cfg['crit']))
        return allocate(imp, pct / 100, cfg["alloc"], sensitivity)

    def fit(self, cfg: dict, pruned):
        """(student, per layer: the refit's calibration error as a share of the uncompensated one)."""
        student, report = fit_compensation(self.model, pruned, self.calibration(cfg["ncal"]), self.pad, self.side, 16,
                                           "refit", cfg["ridge"], cfg["rr"], cfg["tw"], cfg["ctx"],
                                           None if cfg["head"] == "none" else float(cfg["head"]))
        return student, [round(r["error_refit"] / max(r["error_none"], 1e-30), 3) for r in report]


def main(argv: list[str]) -> None:
    name, pcts, eval_spec, variants = argv[0], [int(p) for p in argv[1].split(",")], argv[2], argv[3:]
    logging.basicConfig(level=logging.WARNING)
    set_threads(int(os.environ.get("THREADS", "2")))
    lab = Lab(name, eval_spec)
    out = Path("experiments/out") / f"{name}-{eval_spec.replace(':', '')}-{argv[1].replace(',', '_')}.npz"
    out.parent.mkdir(exist_ok=True)
    saved = dict(np.load(out)) if out.exists() else {}
    saved["dense"] = lab.scorer.dense
    print(json.dumps(dict(model=name, eval=eval_spec, reviews=len(lab.enc), dense_acc=lab.scorer.base["acc"].mean())),
          flush=True)
    for pct in pcts:
        first, first_s = None, None
        for variant in variants:
            over, cfg = parse(variant, DEFAULTS[name])
            pruned = lab.pruned(cfg, pct)
            start = time.perf_counter()
            student, errors = lab.fit(cfg, pruned)
            fit_s = time.perf_counter() - start
            remove_masked(student.adapter, pruned)
            z = lab.logits(student)
            first_s = first_s or fit_s
            print(json.dumps(dict(pct=pct, variant=variant, **lab.scorer.row(z, first), fit_s=round(fit_s, 1),
                                  fit_ratio=round(fit_s / first_s, 2), error_share=errors)), flush=True)
            if first is None:
                first = lab.scorer.outcomes(z)
            saved[f"{pct}/{variant}"] = z
            np.savez(out, **saved)


if __name__ == "__main__":
    main(sys.argv[1:])
