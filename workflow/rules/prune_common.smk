# Helpers of workflow/rules/prune.smk (kept apart: Snakemake lint wants rules and functions in separate files).
import re

from llm_anatomy.config import model_kind
from llm_anatomy.pruning.curves import DEFAULT_CALIBRATION_REVIEWS, curve_of

PRUNE = config["pruning"]
PRUNE_SIZING = PROFILE["pruning"]
PRUNE_CONFIGS = list(PRUNE["configs"])
MODEL_KIND = {m: model_kind(spec) for m, spec in PROFILE["models"].items()}


def prune_names(model):
    """Named configurations of the model's rule, then the paper rule's curve, then FLAP's."""
    kind = MODEL_KIND[model]
    named = [c for c in PRUNE_CONFIGS if PRUNE["configs"][c]["rule"] == kind]
    sweep = [f"sweep-{p}" for p in PRUNE_SIZING[kind]["sweep"]] if kind in PRUNE.get("sweep", {}) else []
    flap = [f"flap-{p}" for p in PRUNE_SIZING[kind].get("flap", [])]
    return named + sweep + flap


def prune_models(name):
    """Models of the active profile a named configuration applies to."""
    return [m for m in MODELS if MODEL_KIND[m] == PRUNE["configs"][name]["rule"]]


def prune_config(wildcards):
    kind = MODEL_KIND[wildcards.model]
    name = wildcards.config
    curve, pct = curve_of(name)
    if curve == "sweep":
        cfg = dict(PRUNE["configs"][PRUNE["sweep"][kind]], target=pct / 100)
    elif curve == "flap":
        cfg = dict(rule="flap", target=pct / 100, **PRUNE.get("flap", {}))
    else:
        cfg = dict(PRUNE["configs"][name])
    if cfg["rule"] not in (kind, "flap"):
        raise ValueError(f"configuration {name!r} is for {cfg['rule']} models; {wildcards.model} is a {kind}")
    return cfg


def prune_settings(wildcards):
    sizing = PRUNE_SIZING[MODEL_KIND[wildcards.model]]
    time_limit = sizing.get("time_limit")
    if curve_of(wildcards.config)[0] != "named":
        time_limit = sizing.get("sweep_time_limit", time_limit)
    return dict(batch_size=PRUNE_SIZING.get("batch_size", 32), repeats=PRUNE_SIZING.get("repeats", 3),
                random_seeds=PRUNE_SIZING.get("random_seeds", 3), test_limit=sizing["test_limit"], time_limit=time_limit,
                threads=PROFILE["threads"], high_threshold=PRUNE.get("high_threshold", 0.35),
                average_over=PRUNE.get("average_over", "probe"))


def prune_inputs(wildcards):
    inputs = dict(model=f"results/{wildcards.model}/finetuned",
                  layer_scores=f"results/{wildcards.model}/layer_scores.parquet",
                  neuron_scores=f"results/{wildcards.model}/neuron_scores.parquet",
                  test="data/processed/test.parquet")
    if curve_of(wildcards.config)[0] == "flap":
        inputs["ffn_stats"] = f"results/{wildcards.model}/ffn_stats.parquet"
    return inputs


def calibration_reviews(wildcards):
    return PRUNE_SIZING[MODEL_KIND[wildcards.model]].get("calibration_reviews", DEFAULT_CALIBRATION_REVIEWS)


def prune_collect_inputs(wildcards):
    return expand("results/{model}/prune/{config}/metrics.json", model=prune_models(wildcards.config),
                  config=wildcards.config)


def prune_all_metrics():
    return [f"results/{m}/prune/{c}/metrics.json" for m in MODELS for c in prune_names(m)]


def prune_targets():
    return (expand("results/metrics/prune/{config}.json", config=[c for c in PRUNE_CONFIGS if prune_models(c)])
            + ["results/summary.csv", "results/summary.md", "results/figures/prune_accuracy.png",
               "results/figures/prune_time.png"])
