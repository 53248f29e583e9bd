"""Figure 1, the lens beside it, Figures 2/3 (neuron graphs), the ablation figure and the anatomy metrics."""
from llm_anatomy.plots import anatomy_figures
from llm_anatomy.logs import run_rule

run_rule(snakemake, anatomy_figures)  # noqa: F821 (snakemake: injected by Snakemake)
