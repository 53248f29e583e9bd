# Structured pruning (paper section 3.4, Figures 4, 5, 4a, 5a; docs/PRUNING.md), one artifact per step:
#   ffn_stats     finetuned -> {RES}/{model}/ffn_stats.parquet        activation statistics (FLAP's input)
#   mask_gradients finetuned -> {RES}/{model}/mask_gradients.parquet per-neuron mask gradients (Taylor, Fisher)
#   obs_scores    finetuned -> {RES}/{model}/obs_scores.parquet      optimal-brain-surgeon removal order (obs)
#   layer_sensitivity finetuned + val -> {RES}/{model}/choices/sensitivity_{criterion}.parquet (searched allocation)
#   prune_plan    scores/stats -> prune/{target}/plan.parquet (+ random_plans.parquet, one plan per seed)
#   materialise   finetuned + plan (+ train, for a fitted compensation) -> {RES}/pruned/{model}/{target}/
#                 a smaller classifier folder (DVC-tracked)
#   evaluate_dense  finetuned + a split -> per-review logits, once per model and split
#   evaluate_pruned pruned folder + finetuned + random plans (+ the plan without compensation) + a split ->
#                 prune/{target}/eval_<split>.parquet and baselines_<split>.parquet, per-review logits
#   time_pruned   dense + pruned folders (+ plan for the zeroed variant) -> prune/{target}/timing.json
#   prune_metrics per target -> prune/{target}/metrics.json (the PruneMetrics record); then the
#   per-configuration DVC metrics, the summary table and Figures 4/5.
# Which targets exist, their configurations, sizes and files: llm_anatomy.pruning.targets (unit-tested).
PRUNE_DIR = TARGETS.target_dir("{model}", "{target}")
PRUNED_DIR = TARGETS.pruned_dir("{model}", "{target}")


# Any folder name matches `target`: a name that is no target of the model then stops the DAG in an input
# function (PruneTargets.check_name) with the valid names, where a narrower pattern gave "No rule to produce".
wildcard_constraints:
    target="[^/]+",
    criterion="|".join(re.escape(c) for c in CRITERIA),


rule ffn_stats:
    """FFN activation statistics on calibration train reviews (FLAP's mean and variance per neuron)."""
    input:
        model=f"{RES}/{{model}}/finetuned",
        train=f"{DATA}/train.parquet",
    output:
        f"{RES}/{{model}}/ffn_stats.parquet",
    log:
        f"{LOGS}/{{model}}/ffn_stats.log",
    benchmark:
        f"{RES}/{{model}}/benchmarks/ffn_stats.tsv"
    conda:
        CONDA_ENV
    threads: THREADS
    resources:
        mem_mb=8000,
        runtime=30,
    params:
        code=source_digest("ffn_stats.py"),
        reviews=calibration_reviews,
        batch_size=PROFILE["pruning"]["batch_size"],
        device=DEVICE,
    script:
        "../scripts/ffn_stats.py"


rule mask_gradients:
    """Per-neuron mask gradients of the classification loss on labelled calibration train reviews: the
    Taylor and Fisher criteria's input (Kwon et al. 2022)."""
    input:
        model=f"{RES}/{{model}}/finetuned",
        train=f"{DATA}/train.parquet",
    output:
        f"{RES}/{{model}}/mask_gradients.parquet",
    log:
        f"{LOGS}/{{model}}/mask_gradients.log",
    benchmark:
        f"{RES}/{{model}}/benchmarks/mask_gradients.tsv"
    conda:
        CONDA_ENV
    threads: THREADS
    resources:
        mem_mb=8000,
        runtime=30,
    params:
        code=source_digest("mask_gradients.py"),
        reviews=calibration_reviews,
        batch_size=16,
        device=DEVICE,
    script:
        "../scripts/mask_gradients.py"


rule obs_scores:
    """The optimal-brain-surgeon removal order of every layer's FFN neurons (criterion obs), from the dense
    model's activation covariance on the calibration train reviews and its value vectors."""
    input:
        model=f"{RES}/{{model}}/finetuned",
        train=f"{DATA}/train.parquet",
    output:
        f"{RES}/{{model}}/obs_scores.parquet",
    log:
        f"{LOGS}/{{model}}/obs_scores.log",
    benchmark:
        f"{RES}/{{model}}/benchmarks/obs_scores.tsv"
    conda:
        CONDA_ENV
    threads: THREADS
    resources:
        mem_mb=8000,
        runtime=30,
    params:
        code=source_digest("obs_scores.py"),
        reviews=calibration_reviews,
        ridge=config["pruning"]["methods"]["ridge"],
        batch_size=16,
        device=DEVICE,
    script:
        "../scripts/obs_scores.py"


rule layer_sensitivity:
    """Validation loss increase per layer and fraction, each layer pruned alone by one criterion (mean output
    kept): the evidence the searched allocation allocates from (the test split is not read)."""
    input:
        unpack(criterion_inputs),
        model=f"{RES}/{{model}}/finetuned",
        val=f"{DATA}/val.parquet",
    output:
        TARGETS.sensitivity_file("{model}", "{criterion}"),
    log:
        f"{LOGS}/{{model}}/layer_sensitivity_{{criterion}}.log",
    benchmark:
        f"{RES}/{{model}}/benchmarks/sensitivity_{{criterion}}.tsv"
    conda:
        CONDA_ENV
    threads: THREADS
    resources:
        mem_mb=8000,
        runtime=30,
    params:
        code=source_digest("layer_sensitivity.py"),
        reviews=search_reviews,
        fractions=config["pruning"]["methods"]["search_fractions"],
        batch_size=16,
        device=DEVICE,
    script:
        "../scripts/layer_sensitivity.py"


rule prune_plan:
    """Which neurons a target prunes (plan.parquet) and its random baselines (one plan per seed); no
    forward pass."""
    input:
        unpack(plan_inputs),
    output:
        plan=f"{PRUNE_DIR}/plan.parquet",
        random_plans=f"{PRUNE_DIR}/random_plans.parquet",
    log:
        f"{LOGS}/{{model}}/prune/{{target}}/plan.log",
    benchmark:
        f"{PRUNE_DIR}/benchmarks/plan.tsv"
    group:
        "prune_target"
    conda:
        CONDA_ENV
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        code=source_digest("prune_plan.py"),
        cfg=rule_config,
        high_threshold=config["pruning"]["high_threshold"],
        average_over=config["pruning"]["average_over"],
        seeds=random_seeds,
    script:
        "../scripts/prune_plan.py"


rule materialise:
    """The physically pruned classifier folder of a plan (smaller FFN matrices, any compensation in its
    weights), DVC-cached."""
    input:
        unpack(fitted_inputs),
        model=f"{RES}/{{model}}/finetuned",
        plan=f"{PRUNE_DIR}/plan.parquet",
    output:
        directory(PRUNED_DIR),
    log:
        f"{LOGS}/{{model}}/prune/{{target}}/materialise.log",
    benchmark:
        f"{PRUNE_DIR}/benchmarks/materialise.tsv"
    group:
        "prune_target"
    conda:
        CONDA_ENV
    threads: THREADS
    resources:
        mem_mb=8000,
        runtime=20,
    params:
        code=source_digest("materialise.py"),
        fit=fit_params,
    script:
        "../scripts/materialise.py"


rule evaluate_dense:
    """Per-review logits of the dense fine-tuned classifier, once per model and split."""
    input:
        model=f"{RES}/{{model}}/finetuned",
        split=f"{DATA}/{{split}}.parquet",
    output:
        f"{RES}/{{model}}/eval_{{split}}.parquet",
    log:
        f"{LOGS}/{{model}}/evaluate_{{split}}.log",
    benchmark:
        f"{RES}/{{model}}/benchmarks/evaluate_{{split}}.tsv"
    conda:
        CONDA_ENV
    threads: THREADS
    resources:
        mem_mb=8000,
        runtime=60,
    params:
        code=source_digest("evaluate.py"),
        limit=eval_limit,
        batch_size=PROFILE["pruning"]["batch_size"],
        threads=THREADS,
        device=DEVICE,
    script:
        "../scripts/evaluate.py"


rule evaluate_pruned:
    """The materialised folder and the plan's baselines (random plans per seed; compensated plans also
    without compensation) on the same reviews, in one job: the baselines are built in memory from the
    dense checkpoint, so one process start and one read of the split serve both."""
    input:
        unpack(fitted_inputs),
        model=f"{RES}/{{model}}/finetuned",
        pruned=PRUNED_DIR,
        split=f"{DATA}/{{split}}.parquet",
        plan=f"{PRUNE_DIR}/plan.parquet",
        random_plans=f"{PRUNE_DIR}/random_plans.parquet",
    output:
        eval=f"{PRUNE_DIR}/eval_{{split}}.parquet",
        baselines=f"{PRUNE_DIR}/baselines_{{split}}.parquet",
    log:
        f"{LOGS}/{{model}}/prune/{{target}}/evaluate_{{split}}.log",
    benchmark:
        f"{PRUNE_DIR}/benchmarks/evaluate_{{split}}.tsv"
    group:
        "prune_target"
    conda:
        CONDA_ENV
    threads: THREADS
    resources:
        mem_mb=8000,
        runtime=90,
    params:
        code=source_digest("evaluate_pruned.py"),
        fit=fit_params,
        limit=eval_limit,
        baseline_limit=baseline_limit,
        batch_size=PROFILE["pruning"]["batch_size"],
        threads=THREADS,
        device=DEVICE,
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
    log:
        f"{LOGS}/{{model}}/prune/{{target}}/time.log",
    benchmark:
        f"{PRUNE_DIR}/benchmarks/time.tsv"
    group:
        "prune_target"
    conda:
        CONDA_ENV
    threads: THREADS
    resources:
        mem_mb=8000,
        runtime=60,
        prune_timing=1,  # profiles/default caps it at 1: timed jobs never overlap, even with spare cores
    params:
        code=source_digest("time_pruned.py"),
        sizing=sizing,
        threads=THREADS,
        device=DEVICE,
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
    log:
        f"{LOGS}/{{model}}/flap_allocation_choice.log",
    benchmark:
        f"{RES}/{{model}}/benchmarks/flap_allocation_choice.tsv"
    conda:
        CONDA_ENV
    threads: THREADS
    resources:
        mem_mb=8000,
        runtime=30,
    params:
        code=source_digest("flap_allocation_choice.py"),
        fractions=lambda wildcards: TARGETS.flap_fractions(wildcards.model),
        flap=config["pruning"]["flap"],
        high_threshold=config["pruning"]["high_threshold"],
        batch_size=PROFILE["pruning"]["batch_size"],
        threads=THREADS,
        device=DEVICE,
    script:
        "../scripts/flap_allocation_choice.py"


rule prune_metrics:
    """One target's PruneMetrics record (accuracies with intervals, gaps, timing) from its artifacts."""
    input:
        unpack(metrics_inputs),
        unpack(benchmark_inputs),
    output:
        f"{PRUNE_DIR}/metrics.json",
    log:
        f"{LOGS}/{{model}}/prune/{{target}}/metrics.log",
    group:
        "prune_target"
    conda:
        CONDA_ENV
    params:
        code=source_digest("prune_metrics.py"),
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
    localrule: True
    conda:
        CONDA_ENV
    params:
        code=source_digest("prune_collect.py"),
    script:
        "../scripts/prune_collect.py"


rule prune_report:
    """Summary table, method-vs-method comparisons, Figures 4/5 of the prune stage, and what DVC compares
    across experiments (headline metrics, data plots)."""
    input:
        metrics=TARGETS.all_metrics(),
        outcomes=TARGETS.all_outcomes(),
    output:
        summary=report(f"{RES}/summary.csv", category="Pruning", caption="../report/prune_summary.rst"),
        summary_md=f"{RES}/summary.md",
        comparisons=f"{RES}/comparisons.csv",
        frontier=f"{RES}/frontier.csv",
        pareto=report(f"{RES}/figures/prune_pareto.png", category="Pruning", caption="../report/prune_pareto.rst"),
        accuracy=report(f"{RES}/figures/prune_accuracy.png", category="Pruning", caption="../report/prune_accuracy.rst"),
        time=report(f"{RES}/figures/prune_time.png", category="Pruning", caption="../report/prune_time.rst"),
        headline=f"{RES}/metrics/headline.json",
        plot_accuracy=f"{RES}/plots/prune_accuracy.csv",
        plot_speedup=f"{RES}/plots/prune_speedup.csv",
    log:
        f"{LOGS}/prune_report.log",
    conda:
        CONDA_ENV
    params:
        code=source_digest("prune_report.py"),
    script:
        "../scripts/prune_report.py"


rule pruned_models:
    """Every materialised pruned model of the profile (the folders DVC's pruned_models stage caches)."""
    input:
        TARGETS.all_pruned_dirs(),
    localrule: True
