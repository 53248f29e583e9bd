rule finetune:
    """Fine-tune the backbone + head as a sentiment classifier on the train split, resumably; reports
    validation accuracy only (the test split is not an input)."""
    input:
        train=LAYOUT.split("train"),
        val=LAYOUT.split("val"),
    output:
        finetuned=directory(MODEL.finetuned),
        metrics=MODEL.finetune_metrics,
    log:
        LAYOUT.log("{model}", "finetune"),
    benchmark:
        MODEL.benchmark("finetune")
    conda:
        CONDA_ENV
    threads: THREADS
    resources:
        mem_mb=8000,
        runtime=240,
    params:
        code=source_digest("finetune.py"),
        spec=model_spec,
        model_name="{model}",
        threads=THREADS,
        device=DEVICE,
        # Not an output: it must survive a killed job so the rerun resumes from it.
        checkpoint=MODEL.checkpoint,
    script:
        "../scripts/finetune.py"


rule finetune_summary:
    """One DVC metrics file with every model's validation accuracy."""
    input:
        metrics=expand(MODEL.finetune_metrics, model=MODELS),
    output:
        summary=LAYOUT.finetune_summary,
    log:
        LAYOUT.log("finetune_summary"),
    localrule: True
    conda:
        CONDA_ENV
    params:
        code=source_digest("finetune_summary.py"),
        models=MODELS,
    script:
        "../scripts/finetune_summary.py"
