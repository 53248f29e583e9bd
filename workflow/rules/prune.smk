# Structured pruning (paper section 3.4, Figures 4, 5, 4a, 5a; docs/PRUNING.md).
#   results/{model}/ffn_stats.parquet             activation statistics over calibration reviews (for FLAP)
#   results/{model}/prune/{config}/metrics.json   one configuration on one model (named, sweep-<pct> or flap-<pct>)
#   results/metrics/prune/{config}.json           a named configuration over the profile's models (DVC metrics)
#   results/figures/prune_*.png, results/summary.{csv,md}   Figures 4/5 and the summary table
include: "prune_common.smk"


wildcard_constraints:
    config="|".join([re.escape(c) for c in PRUNE_CONFIGS] + [r"(sweep|flap)-\d+"]),


rule ffn_stats:
    input:
        model="results/{model}/finetuned",
        train="data/processed/train.parquet",
    output:
        "results/{model}/ffn_stats.parquet",
    params:
        reviews=calibration_reviews,
        batch_size=PRUNE_SIZING.get("batch_size", 32),
    threads: PROFILE["threads"]
    resources:
        mem_mb=8000,
    log:
        "logs/{model}/ffn_stats.log",
    benchmark:
        "results/{model}/benchmarks/ffn_stats.tsv"
    script:
        "../scripts/ffn_stats.py"


rule prune:
    input:
        unpack(prune_inputs),
    output:
        metrics="results/{model}/prune/{config}/metrics.json",
        layers="results/{model}/prune/{config}/layers.csv",
    params:
        cfg=prune_config,
        settings=prune_settings,
        focus_multiplier=PRUNE.get("focus_multiplier", 3),
    threads: PROFILE["threads"]
    resources:
        mem_mb=8000,
        prune_timing=1,  # profiles/default caps it at 1: timed jobs never overlap, even with spare cores
    log:
        "logs/{model}/prune/{config}.log",
    benchmark:
        "results/{model}/benchmarks/prune/{config}.tsv"
    script:
        "../scripts/prune.py"


rule prune_collect:
    input:
        prune_collect_inputs,
    output:
        "results/metrics/prune/{config}.json",
    log:
        "logs/prune_collect/{config}.log",
    script:
        "../scripts/prune_collect.py"


rule prune_report:
    input:
        prune_all_metrics(),
    output:
        summary="results/summary.csv",
        summary_md="results/summary.md",
        accuracy=report("results/figures/prune_accuracy.png", category="Pruning",
                        caption="../report/prune_accuracy.rst"),
        time=report("results/figures/prune_time.png", category="Pruning", caption="../report/prune_time.rst"),
    log:
        "logs/prune_report.log",
    script:
        "../scripts/prune_report.py"
