rule finetune:
    input:
        train="data/processed/train.parquet",
        val="data/processed/val.parquet",
        test="data/processed/test.parquet",
    output:
        model=directory("results/{model}/finetuned"),
        metrics="results/{model}/finetune_metrics.json",
    params:
        spec=model_spec,
        threads=PROFILE["threads"],
        # Not an output: it must survive a killed job so the rerun resumes from it.
        checkpoint="results/{model}/checkpoints/last.pt",
    threads: PROFILE["threads"]
    resources:
        mem_mb=8000,
    log:
        "logs/{model}/finetune.log",
    benchmark:
        "results/{model}/benchmarks/finetune.tsv"
    script:
        "../scripts/finetune.py"


rule finetune_summary:
    input:
        expand("results/{model}/finetune_metrics.json", model=MODELS),
    output:
        "results/metrics/finetune.json",
    log:
        "logs/finetune_summary.log",
    script:
        "../scripts/collect_metrics.py"
