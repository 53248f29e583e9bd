# Anatomy (paper sections 3.1-3.3, 5.1-5.2; docs/ANATOMY.md):
# extract (model -> Parquet) -> score (Parquet -> scores, lens, contributions) -> neuron_sets
# (anatomy.threshold -> high neurons, graph, summary) -> ablate -> anatomy_figures; linear_probe (per-layer
# probes beside the lens). Reads train and validation reviews only, never the test split.
from llm_anatomy.config import profile_anatomy

ANATOMY = profile_anatomy(config, PROFILE)  # a profile may override any key
ANATOMY_PROBES = workdir_path(ANATOMY["probes"])
FIGURES = LAYOUT.anatomy_figures(MODELS)

ANATOMY_TARGETS = (
    expand(
        [getattr(MODEL, f) for f in MODEL.SCORES + MODEL.NEURON_SETS + MODEL.ABLATION + MODEL.LINEAR_PROBE],
        model=MODELS,
    )
    + [FIGURES["figure1"], FIGURES["lens_figure"], FIGURES["ablation_figure"], LAYOUT.anatomy_metrics]
    + FIGURES["graph_figures"]
)


rule extract:
    """Every layer's hidden state and every FFN neuron's activation at the target token, for the probes and
    the sampled calibration (train) and validation reviews, to Parquet (paper sections 3.1-3.2)."""
    input:
        finetuned=MODEL.finetuned,
        train=LAYOUT.split("train"),
        val=LAYOUT.split("val"),
        probes=ANATOMY_PROBES,
    output:
        **MODEL.files("hidden", "ffn", "inputs"),
    log:
        LAYOUT.log("{model}", "extract"),
    benchmark:
        MODEL.benchmark("extract")
    conda:
        CONDA_ENV
    threads: THREADS
    resources:
        mem_mb=6000,
        runtime=60,
    params:
        code=source_digest("extract.py"),
        calibration_size=ANATOMY["calibration_size"],
        validation_size=ANATOMY["validation_size"],
        seed=ANATOMY["seed"],
        batch_size=ANATOMY["batch_size"],
        precision=ANATOMY["precision"],
        threads=THREADS,
        device=DEVICE,
    script:
        "../scripts/extract.py"


rule score:
    """Layer-to-final cosines, per-neuron scores (the paper's and the decoder scoring variants), the
    classifier lens and direct contributions, from the extracted Parquet (no model pass, no threshold)."""
    input:
        **MODEL.files("hidden", "ffn", "inputs"),
        finetuned=MODEL.finetuned,
    output:
        **MODEL.files(*MODEL.SCORES),
    log:
        LAYOUT.log("{model}", "score"),
    benchmark:
        MODEL.benchmark("score")
    conda:
        CONDA_ENV
    threads: THREADS
    resources:
        mem_mb=6000,
        runtime=60,
    params:
        code=source_digest("score.py"),
        threads=THREADS,
    script:
        "../scripts/score.py"


rule neuron_sets:
    """High and negative neurons at anatomy.threshold: shares, lists, overlap across inputs, section
    3.2's graph, rank agreement with the direct contribution, and the model's anatomy summary."""
    input:
        **MODEL.files("neuron_scores", "contributions", "score_summary"),
    output:
        **MODEL.files(*MODEL.NEURON_SETS),
    log:
        LAYOUT.log("{model}", "neuron_sets"),
    conda:
        CONDA_ENV
    params:
        code=source_digest("neuron_sets.py"),
        threshold=ANATOMY["threshold"],
    script:
        "../scripts/neuron_sets.py"


rule ablate:
    """Exact mean-ablation effects of a stratified neuron sample, each score's top tail and every graph node,
    attribution patching for all neurons, how well each score predicts the exact effects, and the neuron
    graph's edges measured (docs/ANATOMY.md)."""
    input:
        **MODEL.files("neuron_scores", "contributions", "ffn_stats", "graph"),
        finetuned=MODEL.finetuned,
        val=LAYOUT.split("val"),
    output:
        **MODEL.files(*MODEL.ABLATION),
    log:
        LAYOUT.log("{model}", "ablate"),
    benchmark:
        MODEL.benchmark("ablate")
    conda:
        CONDA_ENV
    threads: THREADS
    resources:
        mem_mb=8000,
        runtime=60,
    params:
        code=source_digest("ablate.py"),
        settings=ablation_params,
        threads=THREADS,
        device=DEVICE,
    script:
        "../scripts/ablate.py"


rule linear_probe:
    """Per layer, an L2 logistic regression on the target-token states of train reviews (penalty chosen by
    cross-validation on them), scored on the lens's validation reviews beside the lens (docs/ANATOMY.md)."""
    input:
        **MODEL.files("hidden", "inputs"),
        finetuned=MODEL.finetuned,
        train=LAYOUT.split("train"),
    output:
        **MODEL.files(*MODEL.LINEAR_PROBE),
    log:
        LAYOUT.log("{model}", "linear_probe"),
    benchmark:
        MODEL.benchmark("linear_probe")
    conda:
        CONDA_ENV
    threads: THREADS
    resources:
        mem_mb=6000,
        runtime=60,
    params:
        code=source_digest("linear_probe.py"),
        settings={k: ANATOMY[k] for k in ("seed", "batch_size", "precision")} | ANATOMY["probe"],
        threads=THREADS,
        device=DEVICE,
    script:
        "../scripts/linear_probe.py"


rule anatomy_figures:
    """The anatomy figures of every model (layer cosine curves, neuron shares, graphs, lens, ablation)."""
    input:
        layer_scores=expand(MODEL.layer_scores, model=MODELS),
        lens=expand(MODEL.lens, model=MODELS),
        linear_probe=expand(MODEL.linear_probe, model=MODELS),
        graphs=expand(MODEL.graph, model=MODELS),
        summaries=expand(MODEL.summary, model=MODELS),
        ablation=expand(MODEL.ablation, model=MODELS),
        ablation_scores=expand(MODEL.ablation_scores, model=MODELS),
        ablation_top=expand(MODEL.ablation_top, model=MODELS),
        graph_edges=expand(MODEL.graph_edges, model=MODELS),
        probes=ANATOMY_PROBES,
    output:
        figure1=report(FIGURES["figure1"], category="Anatomy", caption="../report/anatomy_figure1.rst"),
        lens_figure=report(FIGURES["lens_figure"], category="Anatomy", caption="../report/anatomy_lens.rst"),
        graph_figures=report(FIGURES["graph_figures"], category="Anatomy", caption="../report/anatomy_graph.rst"),
        ablation_figure=report(FIGURES["ablation_figure"], category="Anatomy", caption="../report/anatomy_ablation.rst"),
        metrics=LAYOUT.anatomy_metrics,
    log:
        LAYOUT.log("anatomy_figures"),
    conda:
        CONDA_ENV
    params:
        code=source_digest("anatomy_figures.py"),
        models=MODELS,
    script:
        "../scripts/anatomy_figures.py"
