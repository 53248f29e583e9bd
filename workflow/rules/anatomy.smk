# Anatomy (paper sections 3.1-3.3, 5.1-5.2; docs/ANATOMY.md):
# extract (model -> Parquet) -> score (Parquet -> scores, graph, lens) -> anatomy_figures.
ANATOMY = {**config["anatomy"], **PROFILE.get("anatomy", {})}  # a profile may override any key
ANATOMY_PROBES = str(resolve_path(ANATOMY["probes"], ROOT))

ANATOMY_SCORES = {
    "layer_scores": "results/{model}/layer_scores.parquet",
    "neuron_scores": "results/{model}/neuron_scores.parquet",
    "neuron_share": "results/{model}/anatomy/neuron_share.csv",
    "high_neurons": "results/{model}/anatomy/high_neurons.csv",
    "neuron_overlap": "results/{model}/anatomy/neuron_overlap.csv",
    "graph": "results/{model}/anatomy/neuron_graph.graphml",
    "graph_counts": "results/{model}/anatomy/graph_counts.csv",
    "lens": "results/{model}/anatomy/lens.csv",
    "contributions": "results/{model}/anatomy/contributions.parquet",
    "rank_agreement": "results/{model}/anatomy/rank_agreement.csv",
    "summary": "results/{model}/anatomy/summary.json",
}


ANATOMY_TARGETS = (
    expand(list(ANATOMY_SCORES.values()), model=MODELS)
    + ["results/anatomy/figure1_layer_cosine.png", "results/anatomy/lens_vs_cosine.png", "results/metrics/anatomy.json"]
    + expand("results/anatomy/neuron_graph_{model}.png", model=MODELS)
)


rule extract:
    input:
        model="results/{model}/finetuned",
        train="data/processed/train.parquet",
        test="data/processed/test.parquet",
        probes=ANATOMY_PROBES,
    output:
        hidden="results/{model}/hidden_states.parquet",
        ffn="results/{model}/ffn_activations.parquet",
        inputs="results/{model}/anatomy_inputs.parquet",
    params:
        calibration_size=ANATOMY["calibration_size"],
        test_size=ANATOMY["test_size"],
        seed=ANATOMY["seed"],
        batch_size=ANATOMY["batch_size"],
        precision=ANATOMY["precision"],
        threads=PROFILE["threads"],
    threads: PROFILE["threads"]
    resources:
        mem_mb=6000,
    log:
        "logs/{model}/extract.log",
    benchmark:
        "results/{model}/benchmarks/extract.tsv"
    script:
        "../scripts/extract.py"


rule score:
    input:
        model="results/{model}/finetuned",
        hidden="results/{model}/hidden_states.parquet",
        ffn="results/{model}/ffn_activations.parquet",
        inputs="results/{model}/anatomy_inputs.parquet",
    output:
        **ANATOMY_SCORES,
    params:
        threshold=ANATOMY["threshold"],
        threads=PROFILE["threads"],
    threads: PROFILE["threads"]
    resources:
        mem_mb=6000,
    log:
        "logs/{model}/score.log",
    benchmark:
        "results/{model}/benchmarks/score.tsv"
    script:
        "../scripts/score.py"


rule anatomy_figures:
    input:
        layer_scores=expand("results/{model}/layer_scores.parquet", model=MODELS),
        lens=expand("results/{model}/anatomy/lens.csv", model=MODELS),
        graphs=expand("results/{model}/anatomy/neuron_graph.graphml", model=MODELS),
        summaries=expand("results/{model}/anatomy/summary.json", model=MODELS),
        probes=ANATOMY_PROBES,
    output:
        figure1=report("results/anatomy/figure1_layer_cosine.png", category="Anatomy",
                       caption="../report/anatomy_figure1.rst"),
        lens=report("results/anatomy/lens_vs_cosine.png", category="Anatomy",
                    caption="../report/anatomy_lens.rst"),
        graphs=report(expand("results/anatomy/neuron_graph_{model}.png", model=MODELS), category="Anatomy",
                      caption="../report/anatomy_graph.rst"),
        metrics="results/metrics/anatomy.json",
    params:
        models=MODELS,
    log:
        "logs/anatomy_figures.log",
    script:
        "../scripts/anatomy_figures.py"
