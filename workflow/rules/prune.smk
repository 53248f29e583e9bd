# Structured pruning (paper section 3.4, Figures 4, 5, 4a, 5a; docs/PRUNING.md), one artifact per step:
#   ffn_stats     finetuned -> {RES}/{model}/ffn_stats.parquet        activation statistics (FLAP's input)
#   prune_plan    scores/stats -> prune/{target}/plan.parquet (+ random_plans.parquet, one plan per seed)
#   materialise   finetuned + plan -> {RES}/pruned/{model}/{target}/  a smaller classifier folder (DVC-tracked)
#   evaluate_dense  finetuned + a split -> per-review logits, once per model and split
#   evaluate_pruned pruned folder + finetuned + random plans (+ the plan without compensation) + a split ->
#                 prune/{target}/eval_<split>.parquet and baselines_<split>.parquet, per-review logits
#   time_pruned   dense + pruned folders (+ plan for the zeroed variant) -> prune/{target}/timing.json
#   prune_metrics per target -> prune/{target}/metrics.json (the PruneMetrics record); then the
#   per-configuration DVC metrics, the summary table and Figures 4/5.
# Which targets exist, their configurations, sizes and files: llm_anatomy.pruning.targets (unit-tested).
PRUNE_DIR = TARGETS.target_dir("{model}", "{target}")
PRUNED_DIR = TARGETS.pruned_dir("{model}", "{target}")


wildcard_constraints:
    target="|".join([re.escape(c) for c in TARGETS.named] + [TARGETS_CURVE_PATTERN]),


def sizing(wildcards):
    return asdict(TARGETS.sizing(wildcards.model, wildcards.get("target")))


def calibration_reviews(wildcards):
    return TARGETS.sizing(wildcards.model).calibration_reviews


def eval_limit(wildcards):
    """Pruning is judged on the first test_limit test reviews; other splits are read whole."""
    return TARGETS.sizing(wildcards.model).test_limit if wildcards.split == "test" else None


def random_seeds(wildcards):
    return TARGETS.random_seeds(wildcards.model)


def rule_config(wildcards):
    return TARGETS.rule_config(wildcards.model, wildcards.target)


def plan_inputs(wildcards):
    return TARGETS.plan_inputs(wildcards.model, wildcards.target)


def metrics_inputs(wildcards):
    return TARGETS.metrics_inputs(wildcards.model, wildcards.target)


def config_metrics_inputs(wildcards):
    return TARGETS.config_metrics_inputs(wildcards.target)


def prune_targets():
    return TARGETS.final_outputs()


rule ffn_stats:
    """FFN activation statistics on calibration train reviews (FLAP's mean and variance per neuron)."""
    input:
        model=f"{RES}/{{model}}/finetuned",
        train=f"{DATA}/train.parquet",
    output:
        f"{RES}/{{model}}/ffn_stats.parquet",
    params:
        reviews=calibration_reviews,
        batch_size=PROFILE["pruning"]["batch_size"],
        device=DEVICE,
    threads: THREADS
    resources:
        mem_mb=8000,
        runtime=30,
    log:
        f"{LOGS}/{{model}}/ffn_stats.log",
    benchmark:
        f"{RES}/{{model}}/benchmarks/ffn_stats.tsv"
    script:
        "../scripts/ffn_stats.py"


rule prune_plan:
    """Which neurons a target prunes (plan.parquet) and its random baselines (one plan per seed); no
    forward pass."""
    input:
        unpack(plan_inputs),
    output:
        plan=f"{PRUNE_DIR}/plan.parquet",
        random_plans=f"{PRUNE_DIR}/random_plans.parquet",
    params:
        cfg=rule_config,
        high_threshold=config["pruning"]["high_threshold"],
        average_over=config["pruning"]["average_over"],
        seeds=random_seeds,
    resources:
        mem_mb=2000,
        runtime=10,
    log:
        f"{LOGS}/{{model}}/prune/{{target}}/plan.log",
    benchmark:
        f"{PRUNE_DIR}/benchmarks/plan.tsv"
    script:
        "../scripts/prune_plan.py"


rule materialise:
    """The physically pruned classifier folder of a plan (smaller FFN matrices), DVC-cached."""
    input:
        model=f"{RES}/{{model}}/finetuned",
        plan=f"{PRUNE_DIR}/plan.parquet",
    output:
        directory(PRUNED_DIR),
    threads: THREADS
    resources:
        mem_mb=8000,
        runtime=20,
    log:
        f"{LOGS}/{{model}}/prune/{{target}}/materialise.log",
    benchmark:
        f"{PRUNE_DIR}/benchmarks/materialise.tsv"
    script:
        "../scripts/materialise.py"


rule evaluate_dense:
    """Per-review logits of the dense fine-tuned classifier, once per model and split."""
    input:
        model=f"{RES}/{{model}}/finetuned",
        split=f"{DATA}/{{split}}.parquet",
    output:
        f"{RES}/{{model}}/eval_{{split}}.parquet",
    params:
        limit=eval_limit,
        batch_size=PROFILE["pruning"]["batch_size"],
        threads=THREADS,
        device=DEVICE,
    threads: THREADS
    resources:
        mem_mb=8000,
        runtime=60,
    log:
        f"{LOGS}/{{model}}/evaluate_{{split}}.log",
    benchmark:
        f"{RES}/{{model}}/benchmarks/evaluate_{{split}}.tsv"
    script:
        "../scripts/evaluate.py"


rule evaluate_pruned:
    """The materialised folder and the plan's baselines (random plans per seed; compensated plans also
    without compensation) on the same reviews, in one job: the baselines are built in memory from the
    dense checkpoint, so one process start and one read of the split serve both."""
    input:
        model=f"{RES}/{{model}}/finetuned",
        pruned=PRUNED_DIR,
        split=f"{DATA}/{{split}}.parquet",
        plan=f"{PRUNE_DIR}/plan.parquet",
        random_plans=f"{PRUNE_DIR}/random_plans.parquet",
    output:
        eval=f"{PRUNE_DIR}/eval_{{split}}.parquet",
        baselines=f"{PRUNE_DIR}/baselines_{{split}}.parquet",
    params:
        limit=eval_limit,
        batch_size=PROFILE["pruning"]["batch_size"],
        threads=THREADS,
        device=DEVICE,
    threads: THREADS
    resources:
        mem_mb=8000,
        runtime=90,
    log:
        f"{LOGS}/{{model}}/prune/{{target}}/evaluate_{{split}}.log",
    benchmark:
        f"{PRUNE_DIR}/benchmarks/evaluate_{{split}}.tsv"
    script:
        "../scripts/evaluate_pruned.py"


rule time_pruned:
    """Dense, removed (and, where the sizing asks, zeroed) models timed alternately in one process."""
    input:
        dense=f"{RES}/{{model}}/finetuned",
        pruned=PRUNED_DIR,
        plan=f"{PRUNE_DIR}/plan.parquet",
        test=f"{DATA}/test.parquet",
    output:
        f"{PRUNE_DIR}/timing.json",
    params:
        sizing=sizing,
        threads=THREADS,
        device=DEVICE,
    threads: THREADS
    resources:
        mem_mb=8000,
        runtime=60,
        prune_timing=1,  # profiles/default caps it at 1: timed jobs never overlap, even with spare cores
    log:
        f"{LOGS}/{{model}}/prune/{{target}}/time.log",
    benchmark:
        f"{PRUNE_DIR}/benchmarks/time.tsv"
    script:
        "../scripts/time_pruned.py"


rule flap_allocation_choice:
    """FLAP's uniform and global allocations on the validation split, paired: the evidence behind
    pruning.flap.allocation (the test split is not read)."""
    input:
        model=f"{RES}/{{model}}/finetuned",
        val=f"{DATA}/val.parquet",
        ffn_stats=f"{RES}/{{model}}/ffn_stats.parquet",
        neuron_scores=f"{RES}/{{model}}/neuron_scores.parquet",
    output:
        f"{RES}/{{model}}/choices/flap_allocation.csv",
    params:
        fractions=lambda wildcards: TARGETS.flap_fractions(wildcards.model),
        flap=config["pruning"]["flap"],
        high_threshold=config["pruning"]["high_threshold"],
        batch_size=PROFILE["pruning"]["batch_size"],
        threads=THREADS,
        device=DEVICE,
    threads: THREADS
    resources:
        mem_mb=8000,
        runtime=30,
    log:
        f"{LOGS}/{{model}}/flap_allocation_choice.log",
    benchmark:
        f"{RES}/{{model}}/benchmarks/flap_allocation_choice.tsv"
    script:
        "../scripts/flap_allocation_choice.py"


rule prune_metrics:
    """One target's PruneMetrics record (accuracies with intervals, gaps, timing) from its artifacts."""
    input:
        unpack(metrics_inputs),
    output:
        f"{PRUNE_DIR}/metrics.json",
    log:
        f"{LOGS}/{{model}}/prune/{{target}}/metrics.log",
    script:
        "../scripts/prune_metrics.py"


rule prune_collect:
    """The DVC metrics file of one named Figure-5a configuration, across the models it applies to."""
    input:
        config_metrics_inputs,
    output:
        f"{RES}/metrics/prune/{{target}}.json",
    log:
        f"{LOGS}/prune_collect/{{target}}.log",
    script:
        "../scripts/prune_collect.py"


rule prune_report:
    """Summary table, method-vs-method comparisons and Figures 4/5 of the prune stage."""
    input:
        metrics=TARGETS.all_metrics(),
        outcomes=TARGETS.all_outcomes(),
    output:
        summary=f"{RES}/summary.csv",
        summary_md=f"{RES}/summary.md",
        comparisons=f"{RES}/comparisons.csv",
        accuracy=report(f"{RES}/figures/prune_accuracy.png", category="Pruning",
                        caption="../report/prune_accuracy.rst"),
        time=report(f"{RES}/figures/prune_time.png", category="Pruning", caption="../report/prune_time.rst"),
    params:
        results=RES,
    log:
        f"{LOGS}/prune_report.log",
    script:
        "../scripts/prune_report.py"


rule pruned_models:
    """Every materialised pruned model of the profile (the folders DVC's pruned_models stage caches)."""
    input:
        TARGETS.all_pruned_dirs(),
