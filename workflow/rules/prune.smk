# Structured pruning (paper section 3.4, Figures 4, 5, 4a, 5a; docs/PRUNING.md), one artifact per step:
#   ffn_stats      finetuned -> ffn_stats.parquet              activation statistics (FLAP's input)
#   mask_gradients finetuned -> mask_gradients.parquet         per-neuron mask gradients (Taylor, Fisher)
#   obs_scores     finetuned -> obs_scores.parquet             optimal-brain-surgeon removal order (obs)
#   layer_sensitivity finetuned + val -> choices/sensitivity_{criterion}.parquet (searched allocation)
#   latency_table  finetuned + val -> speed/latency_table.json  this machine's latency table (a timing; speed targets)
#   head_stats     finetuned + train -> speed/head_stats.parquet, head_means.npz   head criteria's statistics
#   speed_sensitivity finetuned + val -> speed/sensitivity_{criterion}+{head_criterion}.parquet  estimated costs
#   prune_plan     scores/stats -> prune/{target}/plan.parquet (+ random_plans.parquet, one plan per seed)
#   materialise    finetuned + plan (+ train, for a fitted compensation) -> pruned/{model}/{target}/
#                  a smaller classifier folder (DVC-tracked)
#   evaluate_dense finetuned + a split -> per-review logits, once per model and split
#   evaluate_pruned pruned folder + finetuned + random plans (+ the plan without compensation) + a split ->
#                  prune/{target}/eval_<split>.parquet and baselines_<split>.parquet, per-review logits
#   time_pruned    dense + pruned folders (+ plan for the zeroed variant) -> prune/{target}/timing.json
#   prune_metrics  per target -> prune/{target}/metrics.json (the PruneMetrics record); then the
#   per-configuration DVC metrics, the summary table and Figures 4/5.
# Which targets exist and the method each names: llm_anatomy.pruning.targets; which files each rule reads:
# llm_anatomy.pipeline; where they are: llm_anatomy.layout (all unit-tested). The `target` wildcard matches any
# folder name (workflow/rules/common.smk): a name that is no target of the model stops the DAG in an input
# function (Targets.check_name) with the valid names, where a narrower pattern gave "No rule to produce".


rule ffn_stats:
    """FFN activation statistics on calibration train reviews (FLAP's mean and variance per neuron)."""
    input:
        finetuned=MODEL.finetuned,
        train=LAYOUT.split("train"),
    output:
        ffn_stats=MODEL.ffn_stats,
    log:
        LAYOUT.log("{model}", "ffn_stats"),
    benchmark:
        MODEL.benchmark("ffn_stats")
    conda:
        CONDA_ENV
    threads: THREADS
    resources:
        mem_mb=8000,
        runtime=30,
    params:
        code=source_digest("ffn_stats.py"),
        reviews=sizing("calibration_reviews"),
        batch_size=sizing("batch_size"),
        threads=THREADS,
        device=DEVICE,
    script:
        "../scripts/ffn_stats.py"


rule mask_gradients:
    """Per-neuron mask gradients of the classification loss on labelled calibration train reviews: the
    Taylor and Fisher criteria's input (Kwon et al. 2022)."""
    input:
        finetuned=MODEL.finetuned,
        train=LAYOUT.split("train"),
    output:
        mask_gradients=MODEL.mask_gradients,
    log:
        LAYOUT.log("{model}", "mask_gradients"),
    benchmark:
        MODEL.benchmark("mask_gradients")
    conda:
        CONDA_ENV
    threads: THREADS
    resources:
        mem_mb=8000,
        runtime=30,
    params:
        code=source_digest("mask_gradients.py"),
        reviews=sizing("calibration_reviews"),
        batch_size=sizing("calibration_batch_size"),
        threads=THREADS,
        device=DEVICE,
    script:
        "../scripts/mask_gradients.py"


rule obs_scores:
    """The optimal-brain-surgeon removal order of every layer's FFN neurons (criterion obs), from the dense
    model's activation covariance on the calibration train reviews and its value vectors."""
    input:
        finetuned=MODEL.finetuned,
        train=LAYOUT.split("train"),
    output:
        obs_scores=MODEL.obs_scores,
    log:
        LAYOUT.log("{model}", "obs_scores"),
    benchmark:
        MODEL.benchmark("obs_scores")
    conda:
        CONDA_ENV
    threads: THREADS
    resources:
        mem_mb=8000,
        runtime=30,
    params:
        code=source_digest("obs_scores.py"),
        reviews=sizing("calibration_reviews"),
        ridge=config["pruning"]["methods"]["ridge"],
        batch_size=sizing("calibration_batch_size"),
        threads=THREADS,
        device=DEVICE,
    script:
        "../scripts/obs_scores.py"


rule layer_sensitivity:
    """Validation loss increase per layer and fraction, each layer pruned alone by one criterion (mean output
    kept): the evidence the searched allocation allocates from (the test split is not read)."""
    input:
        unpack(criterion_inputs),
        finetuned=MODEL.finetuned,
        val=LAYOUT.split("val"),
    output:
        sensitivity=MODEL.sensitivity("{criterion}"),
    log:
        LAYOUT.log("{model}", "layer_sensitivity_{criterion}"),
    benchmark:
        MODEL.benchmark("sensitivity_{criterion}")
    conda:
        CONDA_ENV
    threads: THREADS
    resources:
        mem_mb=8000,
        runtime=30,
    params:
        code=source_digest("layer_sensitivity.py"),
        criterion="{criterion}",
        reviews=sizing("search_reviews"),
        fractions=config["pruning"]["methods"]["search_fractions"],
        batch_size=sizing("calibration_batch_size"),
        threads=THREADS,
        device=DEVICE,
    script:
        "../scripts/layer_sensitivity.py"


rule latency_table:
    """This machine's latency table of the model (docs/SPEED.md): a layer's seconds per head configuration and
    FFN width, read from the cache under results/<profile>/latency/ or measured into it. A timing, run as
    time_pruned is (every thread, never beside another timed job). The file records the machine it was
    measured on; Snakemake cannot see that the machine changed, so the speed plans follow the table the file
    holds (`--forcerun latency_table` reads, or measures, this machine's). A profile whose sizing says
    `speed.latency: macs` (tiny) plans on multiply-adds instead: no timing."""
    input:
        finetuned=MODEL.finetuned,
        val=LAYOUT.split("val"),
    output:
        latency_table=MODEL.latency_table,
    log:
        LAYOUT.log("{model}", "latency_table"),
    benchmark:
        MODEL.benchmark("latency_table")
    conda:
        CONDA_ENV
    threads: THREADS
    resources:
        mem_mb=8000,
        runtime=60,
        prune_timing=1,  # as time_pruned: timed jobs never overlap
    params:
        code=source_digest("latency_table.py"),
        cache=LAYOUT.latency,
        kind=sizing("speed_latency"),
        reviews=config["pruning"]["speed"]["latency_reviews"],
        repeats=config["pruning"]["speed"]["latency_repeats"],
        batch_size=sizing("batch_size"),
        threads=THREADS,
        device=DEVICE,
    script:
        "../scripts/latency_table.py"


rule head_stats:
    """The head criteria's statistics and every head's mean output on the calibration train reviews (one
    backward pass): the speed targets' head rankings and the means their estimated costs ablate to."""
    input:
        finetuned=MODEL.finetuned,
        train=LAYOUT.split("train"),
    output:
        head_stats=MODEL.head_stats,
        head_means=MODEL.head_means,
    log:
        LAYOUT.log("{model}", "head_stats"),
    benchmark:
        MODEL.benchmark("head_stats")
    conda:
        CONDA_ENV
    threads: THREADS
    resources:
        mem_mb=8000,
        runtime=30,
    params:
        code=source_digest("head_stats.py"),
        reviews=sizing("calibration_reviews"),
        threads=THREADS,
        device=DEVICE,
    script:
        "../scripts/head_stats.py"


rule speed_sensitivity:
    """The speed targets' estimated cost of every head configuration and FFN width of every layer, from one
    backward pass over the first validation reviews (the test split is not read)."""
    input:
        unpack(speed_sensitivity_inputs),
        finetuned=MODEL.finetuned,
        val=LAYOUT.split("val"),
    output:
        sensitivity=MODEL.speed_sensitivity("{criterion}", "{head_criterion}"),
    log:
        LAYOUT.log("{model}", "speed_sensitivity_{criterion}+{head_criterion}"),
    benchmark:
        MODEL.benchmark("speed_sensitivity_{criterion}+{head_criterion}")
    conda:
        CONDA_ENV
    threads: THREADS
    resources:
        mem_mb=8000,
        runtime=60,
    params:
        code=source_digest("speed_sensitivity.py"),
        ffn_criterion="{criterion}",
        head_criterion="{head_criterion}",
        objective=config["pruning"]["speed"]["objective"],
        width_steps=config["pruning"]["speed"]["width_steps"],
        reviews=sizing("speed_search_reviews"),
        threads=THREADS,
        device=DEVICE,
    script:
        "../scripts/speed_sensitivity.py"


rule prune_plan:
    """Which neurons a target prunes (plan.parquet) and its random baselines (one plan per seed); no
    forward pass."""
    input:
        unpack(plan_inputs),
    output:
        plan=TARGET.plan,
        random_plans=TARGET.random_plans,
    log:
        LAYOUT.log("{model}", "prune", "{target}", "plan"),
    benchmark:
        TARGET.benchmark("plan")
    group:
        "prune_target"
    conda:
        CONDA_ENV
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        code=source_digest("prune_plan.py"),
        spec=method_spec,
        high_threshold=config["pruning"]["high_threshold"],
        average_over=config["pruning"]["average_over"],
        seeds=random_seeds,
        speed=speed_params,
    script:
        "../scripts/prune_plan.py"


rule materialise:
    """The physically pruned classifier folder of a plan (smaller FFN matrices, any compensation in its
    weights), DVC-cached."""
    input:
        unpack(fitted_inputs),
        finetuned=MODEL.finetuned,
        plan=TARGET.plan,
    output:
        pruned=directory(PRUNED),
    log:
        LAYOUT.log("{model}", "prune", "{target}", "materialise"),
    benchmark:
        TARGET.benchmark("materialise")
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
        target="{target}",
        fit=fit_params,
    script:
        "../scripts/materialise.py"


rule evaluate_dense:
    """Per-review logits of the dense fine-tuned classifier, once per model and split."""
    input:
        finetuned=MODEL.finetuned,
        split=LAYOUT.split("{split}"),
    output:
        eval=MODEL.dense_eval("{split}"),
    log:
        LAYOUT.log("{model}", "evaluate_{split}"),
    benchmark:
        MODEL.benchmark("evaluate_{split}")
    conda:
        CONDA_ENV
    threads: THREADS
    resources:
        mem_mb=8000,
        runtime=60,
    params:
        code=source_digest("evaluate_dense.py"),
        limit=eval_limit,
        batch_size=sizing("batch_size"),
        threads=THREADS,
        device=DEVICE,
    script:
        "../scripts/evaluate_dense.py"


rule evaluate_pruned:
    """The materialised folder and the plan's baselines (random plans per seed; compensated plans also
    without compensation) on the same reviews, in one job: the baselines are built in memory from the
    dense checkpoint, so one process start and one read of the split serve both."""
    input:
        unpack(fitted_inputs),
        finetuned=MODEL.finetuned,
        pruned=PRUNED,
        split=LAYOUT.split("{split}"),
        plan=TARGET.plan,
        random_plans=TARGET.random_plans,
    output:
        eval=TARGET.eval("{split}"),
        baselines=TARGET.baselines("{split}"),
    log:
        LAYOUT.log("{model}", "prune", "{target}", "evaluate_{split}"),
    benchmark:
        TARGET.benchmark("evaluate_{split}")
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
        batch_size=sizing("batch_size"),
        threads=THREADS,
        device=DEVICE,
    script:
        "../scripts/evaluate_pruned.py"


rule time_pruned:
    """Dense, removed (and, where the sizing asks, zeroed) models timed alternately in one process."""
    input:
        finetuned=MODEL.finetuned,
        pruned=PRUNED,
        plan=TARGET.plan,
        test=LAYOUT.split("test"),
    output:
        timing=TARGET.timing,
    log:
        LAYOUT.log("{model}", "prune", "{target}", "time"),
    benchmark:
        TARGET.benchmark("time")
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
        time_limit=sizing("time_limit"),
        batch_size=sizing("batch_size"),
        repeats=sizing("repeats"),
        time_zeroed=sizing("time_zeroed"),
        equality_check_reviews=sizing("equality_check_reviews"),
        threads=THREADS,
        device=DEVICE,
    script:
        "../scripts/time_pruned.py"


rule flap_allocation_choice:
    """FLAP's uniform and global allocations on the validation split, paired: the evidence behind
    pruning.flap.allocation (the test split is not read)."""
    input:
        **MODEL.files("ffn_stats", "neuron_scores"),
        finetuned=MODEL.finetuned,
        val=LAYOUT.split("val"),
    output:
        choice=MODEL.flap_allocation,
    log:
        LAYOUT.log("{model}", "flap_allocation_choice"),
    benchmark:
        MODEL.benchmark("flap_allocation_choice")
    conda:
        CONDA_ENV
    threads: THREADS
    resources:
        mem_mb=8000,
        runtime=30,
    params:
        code=source_digest("flap_allocation_choice.py"),
        fractions=flap_fractions,
        flap=config["pruning"]["flap"],
        high_threshold=config["pruning"]["high_threshold"],
        batch_size=sizing("batch_size"),
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
        metrics=TARGET.metrics,
    log:
        LAYOUT.log("{model}", "prune", "{target}", "metrics"),
    group:
        "prune_target"
    conda:
        CONDA_ENV
    params:
        code=source_digest("prune_metrics.py"),
        model_name="{model}",
        target="{target}",
    script:
        "../scripts/prune_metrics.py"


rule prune_collect:
    """The DVC metrics file of one named Figure-5a configuration, across the models it applies to."""
    input:
        metrics=config_metrics_inputs,
    output:
        collected=LAYOUT.config_metrics("{target}"),
    log:
        LAYOUT.log("prune_collect", "{target}"),
    localrule: True
    conda:
        CONDA_ENV
    params:
        code=source_digest("prune_collect.py"),
    script:
        "../scripts/prune_collect.py"


REPORT = LAYOUT.report()


rule prune_report:
    """Summary table, method-vs-method comparisons, Figures 4/5 of the prune stage, and what DVC compares
    across experiments (headline metrics, data plots)."""
    input:
        **PIPE.report_inputs(),
    output:
        summary=report(REPORT["summary"], category="Pruning", caption="../report/prune_summary.rst"),
        summary_md=REPORT["summary_md"],
        comparisons=REPORT["comparisons"],
        frontier=REPORT["frontier"],
        pareto=report(REPORT["pareto"], category="Pruning", caption="../report/prune_pareto.rst"),
        accuracy=report(REPORT["accuracy"], category="Pruning", caption="../report/prune_accuracy.rst"),
        time=report(REPORT["time"], category="Pruning", caption="../report/prune_time.rst"),
        headline=REPORT["headline"],
        plot_accuracy=REPORT["plot_accuracy"],
        plot_speedup=REPORT["plot_speedup"],
    log:
        LAYOUT.log("prune_report"),
    conda:
        CONDA_ENV
    params:
        code=source_digest("prune_report.py"),
    script:
        "../scripts/prune_report.py"


rule pruned_models:
    """Every materialised pruned model of the profile (the folders DVC's pruned_models stage caches)."""
    input:
        PIPE.pruned_dirs(),
    localrule: True
