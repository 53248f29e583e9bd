# Anatomy (paper sections 3.1-3.3, 5.1-5.2; docs/ANATOMY.md):
# extract (model -> Parquet) -> score (Parquet -> scores, lens, contributions) -> neuron_sets
# (anatomy.threshold -> high neurons, graph, summary) -> ablate -> anatomy_figures; linear_probe (per-layer
# probes beside the lens). Reads train and validation reviews only, never the test split.
ANATOMY = {**config["anatomy"], **PROFILE.get("anatomy", {})}  # a profile may override any key
ANATOMY_PROBES = workdir_path(ANATOMY["probes"])

# Threshold-free: the pruning plans read these, so anatomy.threshold must not rewrite them.
ANATOMY_SCORES = {
    "layer_scores": f"{RES}/{{model}}/layer_scores.parquet",
    "neuron_scores": f"{RES}/{{model}}/neuron_scores.parquet",
    "lens": f"{RES}/{{model}}/anatomy/lens.csv",
    "contributions": f"{RES}/{{model}}/anatomy/contributions.parquet",
    "score_summary": f"{RES}/{{model}}/anatomy/score_summary.json",
}

# What anatomy.threshold decides.
NEURON_SETS = {
    "neuron_share": f"{RES}/{{model}}/anatomy/neuron_share.csv",
    "high_neurons": f"{RES}/{{model}}/anatomy/high_neurons.csv",
    "neuron_overlap": f"{RES}/{{model}}/anatomy/neuron_overlap.csv",
    "graph": f"{RES}/{{model}}/anatomy/neuron_graph.graphml",
    "graph_counts": f"{RES}/{{model}}/anatomy/graph_counts.csv",
    "rank_agreement": f"{RES}/{{model}}/anatomy/rank_agreement.csv",
    "summary": f"{RES}/{{model}}/anatomy/summary.json",
}


LINEAR_PROBE = {
    "table": f"{RES}/{{model}}/anatomy/linear_probe.csv",
    "cv": f"{RES}/{{model}}/anatomy/linear_probe_cv.csv",
    "weights": f"{RES}/{{model}}/anatomy/linear_probe_weights.parquet",
}


ABLATION = {
    "table": f"{RES}/{{model}}/anatomy/ablation.parquet",
    "agreement": f"{RES}/{{model}}/anatomy/ablation_scores.csv",
    "top": f"{RES}/{{model}}/anatomy/ablation_top.csv",
    "tails": f"{RES}/{{model}}/anatomy/ablation_tails.csv",
    "edges": f"{RES}/{{model}}/anatomy/graph_edges.csv",
    "summary": f"{RES}/{{model}}/anatomy/ablation_summary.json",
}

ANATOMY_TARGETS = (
    expand(list(ANATOMY_SCORES.values()), model=MODELS)
    + expand(list(NEURON_SETS.values()), model=MODELS)
    + expand(list(ABLATION.values()), model=MODELS)
    + expand(list(LINEAR_PROBE.values()), model=MODELS)
    + [f"{RES}/anatomy/ablation.png"]
    + [f"{RES}/anatomy/figure1_layer_cosine.png", f"{RES}/anatomy/lens_vs_cosine.png", f"{RES}/metrics/anatomy.json"]
    + expand(f"{RES}/anatomy/neuron_graph_{{model}}.png", model=MODELS)
)


rule extract:
    """Every layer's hidden state and every FFN neuron's activation at the target token, for the probes and
    the sampled calibration (train) and validation reviews, to Parquet (paper sections 3.1-3.2)."""
    input:
        model=f"{RES}/{{model}}/finetuned",
        train=f"{DATA}/train.parquet",
        val=f"{DATA}/val.parquet",
        probes=ANATOMY_PROBES,
    output:
        hidden=f"{RES}/{{model}}/hidden_states.parquet",
        ffn=f"{RES}/{{model}}/ffn_activations.parquet",
        inputs=f"{RES}/{{model}}/anatomy_inputs.parquet",
    log:
        f"{LOGS}/{{model}}/extract.log",
    benchmark:
        f"{RES}/{{model}}/benchmarks/extract.tsv"
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
        model=f"{RES}/{{model}}/finetuned",
        hidden=f"{RES}/{{model}}/hidden_states.parquet",
        ffn=f"{RES}/{{model}}/ffn_activations.parquet",
        inputs=f"{RES}/{{model}}/anatomy_inputs.parquet",
    output:
        **ANATOMY_SCORES,
    log:
        f"{LOGS}/{{model}}/score.log",
    benchmark:
        f"{RES}/{{model}}/benchmarks/score.tsv"
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
        neuron_scores=ANATOMY_SCORES["neuron_scores"],
        contributions=ANATOMY_SCORES["contributions"],
        score_summary=ANATOMY_SCORES["score_summary"],
    output:
        **NEURON_SETS,
    log:
        f"{LOGS}/{{model}}/neuron_sets.log",
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
        model=f"{RES}/{{model}}/finetuned",
        val=f"{DATA}/val.parquet",
        neuron_scores=f"{RES}/{{model}}/neuron_scores.parquet",
        contributions=f"{RES}/{{model}}/anatomy/contributions.parquet",
        ffn_stats=f"{RES}/{{model}}/ffn_stats.parquet",
        graph=f"{RES}/{{model}}/anatomy/neuron_graph.graphml",
    output:
        **ABLATION,
    log:
        f"{LOGS}/{{model}}/ablate.log",
    benchmark:
        f"{RES}/{{model}}/benchmarks/ablate.tsv"
    conda:
        CONDA_ENV
    threads: THREADS
    resources:
        mem_mb=8000,
        runtime=60,
    params:
        code=source_digest("ablate.py"),
        p=ablation_params,
        threads=THREADS,
        device=DEVICE,
    script:
        "../scripts/ablate.py"


rule linear_probe:
    """Per layer, an L2 logistic regression on the target-token states of train reviews (penalty chosen by
    cross-validation on them), scored on the lens's validation reviews beside the lens (docs/ANATOMY.md)."""
    input:
        model=f"{RES}/{{model}}/finetuned",
        train=f"{DATA}/train.parquet",
        hidden=f"{RES}/{{model}}/hidden_states.parquet",
        inputs=f"{RES}/{{model}}/anatomy_inputs.parquet",
    output:
        **LINEAR_PROBE,
    log:
        f"{LOGS}/{{model}}/linear_probe.log",
    benchmark:
        f"{RES}/{{model}}/benchmarks/linear_probe.tsv"
    conda:
        CONDA_ENV
    threads: THREADS
    resources:
        mem_mb=6000,
        runtime=60,
    params:
        code=source_digest("linear_probe.py"),
        p={k: ANATOMY[k] for k in ("seed", "batch_size", "precision")} | ANATOMY["probe"],
        threads=THREADS,
        device=DEVICE,
    script:
        "../scripts/linear_probe.py"


rule anatomy_figures:
    """The anatomy figures of every model (layer cosine curves, neuron shares, graphs, lens, ablation)."""
    input:
        layer_scores=expand(f"{RES}/{{model}}/layer_scores.parquet", model=MODELS),
        lens=expand(f"{RES}/{{model}}/anatomy/lens.csv", model=MODELS),
        linear_probe=expand(LINEAR_PROBE["table"], model=MODELS),
        graphs=expand(f"{RES}/{{model}}/anatomy/neuron_graph.graphml", model=MODELS),
        summaries=expand(f"{RES}/{{model}}/anatomy/summary.json", model=MODELS),
        ablation=expand(f"{RES}/{{model}}/anatomy/ablation.parquet", model=MODELS),
        ablation_scores=expand(f"{RES}/{{model}}/anatomy/ablation_scores.csv", model=MODELS),
        ablation_top=expand(f"{RES}/{{model}}/anatomy/ablation_top.csv", model=MODELS),
        graph_edges=expand(ABLATION["edges"], model=MODELS),
        probes=ANATOMY_PROBES,
    output:
        figure1=report(
            f"{RES}/anatomy/figure1_layer_cosine.png", category="Anatomy", caption="../report/anatomy_figure1.rst"
        ),
        lens=report(f"{RES}/anatomy/lens_vs_cosine.png", category="Anatomy", caption="../report/anatomy_lens.rst"),
        graphs=report(
            expand(f"{RES}/anatomy/neuron_graph_{{model}}.png", model=MODELS),
            category="Anatomy",
            caption="../report/anatomy_graph.rst",
        ),
        ablation=report(f"{RES}/anatomy/ablation.png", category="Anatomy", caption="../report/anatomy_ablation.rst"),
        metrics=f"{RES}/metrics/anatomy.json",
    log:
        f"{LOGS}/anatomy_figures.log",
    conda:
        CONDA_ENV
    params:
        code=source_digest("anatomy_figures.py"),
        models=MODELS,
    script:
        "../scripts/anatomy_figures.py"
