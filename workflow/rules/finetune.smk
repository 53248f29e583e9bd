rule finetune:
    """Fine-tune the backbone + head as a sentiment classifier on the train split, resumably; reports
    validation accuracy only (the test split is not an input)."""
    input:
        train=f"{DATA}/train.parquet",
        val=f"{DATA}/val.parquet",
    output:
        model=directory(f"{RES}/{{model}}/finetuned"),
        metrics=f"{RES}/{{model}}/finetune_metrics.json",
    log:
        f"{LOGS}/{{model}}/finetune.log",
    benchmark:
        f"{RES}/{{model}}/benchmarks/finetune.tsv"
    conda:
        CONDA_ENV
    threads: THREADS
    resources:
        mem_mb=8000,
        runtime=240,
    params:
        code=source_digest("finetune.py"),
        spec=model_spec,
        threads=THREADS,
        device=DEVICE,
        # Not an output: it must survive a killed job so the rerun resumes from it.
        checkpoint=f"{RES}/{{model}}/checkpoints/last.pt",
    script:
        "../scripts/finetune.py"


rule finetune_summary:
    """One DVC metrics file with every model's validation accuracy."""
    input:
        expand(f"{RES}/{{model}}/finetune_metrics.json", model=MODELS),
    output:
        f"{RES}/metrics/finetune.json",
    log:
        f"{LOGS}/finetune_summary.log",
    localrule: True
    conda:
        CONDA_ENV
    params:
        code=source_digest("collect_metrics.py"),
    script:
        "../scripts/collect_metrics.py"
