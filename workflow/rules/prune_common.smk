# Helpers of workflow/rules/prune.smk (kept apart: Snakemake lint wants rules and functions in separate files).
import re

from llm_anatomy.config import model_kind

PRUNE = config["pruning"]
PRUNE_SIZING = PROFILE["pruning"]
PRUNE_CONFIGS = list(PRUNE["configs"])
MODEL_KIND = {m: model_kind(spec) for m, spec in PROFILE["models"].items()}


def prune_names(model):
    """Named configurations of the model's rule, then the sweep points."""
    kind = MODEL_KIND[model]
    named = [c for c in PRUNE_CONFIGS if PRUNE["configs"][c]["rule"] == kind]
    sweep = [f"sweep-{p}" for p in PRUNE_SIZING[kind]["sweep"]] if kind in PRUNE.get("sweep", {}) else []
    return named + sweep


def prune_models(name):
    """Models of the active profile a named configuration applies to."""
    return [m for m in MODELS if MODEL_KIND[m] == PRUNE["configs"][name]["rule"]]


def prune_config(wildcards):
    kind = MODEL_KIND[wildcards.model]
    name = wildcards.config
    if name.startswith("sweep-"):
        cfg = dict(PRUNE["configs"][PRUNE["sweep"][kind]], target=int(name[len("sweep-"):]) / 100)
    else:
        cfg = dict(PRUNE["configs"][name])
    if cfg["rule"] != kind:
        raise ValueError(f"configuration {name!r} is for {cfg['rule']} models; {wildcards.model} is a {kind}")
    return cfg


def prune_settings(wildcards):
    kind = MODEL_KIND[wildcards.model]
    return dict(batch_size=PRUNE_SIZING.get("batch_size", 32), repeats=PRUNE_SIZING.get("repeats", 3),
                random_seeds=PRUNE_SIZING.get("random_seeds", 3), test_limit=PRUNE_SIZING[kind]["test_limit"],
                time_limit=PRUNE_SIZING[kind].get("sweep_time_limit") if wildcards.config.startswith("sweep-") else None,
                threads=PROFILE["threads"], high_threshold=PRUNE.get("high_threshold", 0.35),
                average_over=PRUNE.get("average_over", "probe"))


def prune_collect_inputs(wildcards):
    return expand("results/{model}/prune/{config}/metrics.json", model=prune_models(wildcards.config),
                  config=wildcards.config)


def prune_all_metrics():
    return [f"results/{m}/prune/{c}/metrics.json" for m in MODELS for c in prune_names(m)]


def prune_targets():
    return (expand("results/metrics/prune/{config}.json", config=[c for c in PRUNE_CONFIGS if prune_models(c)])
            + ["results/summary.csv", "results/summary.md", "results/figures/prune_accuracy.png",
               "results/figures/prune_time.png"])
