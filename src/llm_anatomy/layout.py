"""Where every artifact lives: the one module that spells a path. The rules, the command line, the tests,
experiments/ and benchmarks/ read their paths here, so a file moves by one edit.

  data/processed/<profile>/{train,val,test}.parquet   `Layout.split`
  results/<profile>/<model>/...                       `ModelFiles` (also `llm-anatomy score --out`)
  results/<profile>/<model>/prune/<target>/...        `TargetFiles`
  results/<profile>/pruned/<model>/<target>/          `Layout.pruned`: a classifier folder (`FOLDER`)
  results/<profile>/{summary.csv, figures/, ...}      `Layout.report`, `Layout.anatomy_figures`
  results/<profile>/latency/                          `Layout.latency`: this machine's latency tables (cache)
  results/metrics/<profile>/...                       `Layout.metrics`: what each DVC stage outputs
  logs/<profile>/...                                  `Layout.log`

A path may hold Snakemake wildcards: `ModelFiles("results/tiny/{model}").ffn_stats` is the rule's pattern.
A file's attribute name is the artifact's name through the stack: the rule's input or output of that name
and the keyword of the stage function that reads or writes it. Plain strings, no imports beyond pathlib.
"""
from __future__ import annotations

from pathlib import Path

SCHEMA = "workflow/schemas/params.schema.yaml"  # relative to the repository root
PROBES = "resources/probes.tsv"
# inside a classifier folder, beside the backbone's and tokenizer's own files; a pruned folder also holds
# pruning.json (and, written by `llm-anatomy prune`, the plan it was cut by)
FOLDER = dict(meta="classifier.json", head="head.safetensors", pruning="pruning.json", plan="plan.parquet")


def folder_file(folder, name: str) -> Path:
    return Path(folder) / FOLDER[name]


BESIDE = dict(metrics=".metrics.json", checkpoint=".checkpoint/last.pt")  # `llm-anatomy finetune --out`'s own


def beside(folder, name: str) -> str:
    """A file next to a classifier folder the command line writes (`runs/minilm` -> `runs/minilm.metrics.json`)."""
    return str(Path(folder)) + BESIDE[name]


def mirror_file(mirror_dir, split: str) -> Path:
    """A split of the IMDB Parquet mirror (data.mirror_dir): train or test."""
    return Path(mirror_dir) / f"{split}.parquet"


class Files:
    """A folder whose files are attributes (`NAMES`: attribute -> path inside the folder)."""

    NAMES: dict[str, str] = {}

    def __init__(self, root):
        self.root = str(root)

    def __call__(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def __getattr__(self, name: str) -> str:
        if name in type(self).NAMES:
            return self(type(self).NAMES[name])
        raise AttributeError(f"{type(self).__name__} has no file {name!r}; files: {sorted(type(self).NAMES)}")

    def files(self, *names: str) -> dict[str, str]:
        return {n: getattr(self, n) for n in names}

    def benchmark(self, job: str) -> str:
        return self("benchmarks", f"{job}.tsv")


class ModelFiles(Files):
    """One model's folder: the fine-tuned classifier, the anatomy tables and the per-model calibration passes."""

    NAMES = dict(
        finetuned="finetuned", finetune_metrics="finetune_metrics.json", checkpoint="checkpoints/last.pt",
        hidden="hidden_states.parquet", ffn="ffn_activations.parquet", inputs="anatomy_inputs.parquet",
        # threshold-free scores (rule score; what the pruning plans read)
        layer_scores="layer_scores.parquet", neuron_scores="neuron_scores.parquet", lens="anatomy/lens.csv",
        contributions="anatomy/contributions.parquet", score_summary="anatomy/score_summary.json",
        # what anatomy.threshold decides (rule neuron_sets)
        neuron_share="anatomy/neuron_share.csv", high_neurons="anatomy/high_neurons.csv",
        neuron_overlap="anatomy/neuron_overlap.csv", graph="anatomy/neuron_graph.graphml",
        graph_counts="anatomy/graph_counts.csv", rank_agreement="anatomy/rank_agreement.csv",
        summary="anatomy/summary.json",
        # anatomy checked by ablation (rule ablate)
        ablation="anatomy/ablation.parquet", ablation_scores="anatomy/ablation_scores.csv",
        ablation_top="anatomy/ablation_top.csv", ablation_tails="anatomy/ablation_tails.csv",
        graph_edges="anatomy/graph_edges.csv", ablation_summary="anatomy/ablation_summary.json",
        # per-layer linear probes beside the lens (rule linear_probe)
        linear_probe="anatomy/linear_probe.csv", linear_probe_cv="anatomy/linear_probe_cv.csv",
        linear_probe_weights="anatomy/linear_probe_weights.parquet",
        # the pruning criteria's calibration passes, and the validation evidence of FLAP's allocation
        ffn_stats="ffn_stats.parquet", mask_gradients="mask_gradients.parquet", obs_scores="obs_scores.parquet",
        flap_allocation="choices/flap_allocation.csv",
        # attention-head criteria against exact head ablation (experiments/head_criteria.py)
        head_criteria_stats="head_criteria/head_stats.parquet", head_criteria="head_criteria/heads.csv",
        head_agreement="head_criteria/agreement.csv",
        # the speed targets' per-model inputs: this machine's latency table (rule latency_table), the heads'
        # calibration statistics and means (rule head_stats)
        latency_table="speed/latency_table.json", head_stats="speed/head_stats.parquet",
        head_means="speed/head_means.npz",
    )
    SCORES = ("layer_scores", "neuron_scores", "lens", "contributions", "score_summary")
    NEURON_SETS = ("neuron_share", "high_neurons", "neuron_overlap", "graph", "graph_counts", "rank_agreement",
                   "summary")
    ABLATION = ("ablation", "ablation_scores", "ablation_top", "ablation_tails", "graph_edges", "ablation_summary")
    LINEAR_PROBE = ("linear_probe", "linear_probe_cv", "linear_probe_weights")

    def sensitivity(self, criterion: str) -> str:
        """The searched allocation's validation evidence, per criterion."""
        return self("choices", f"sensitivity_{criterion}.parquet")

    def dense_eval(self, split: str) -> str:
        return self(f"eval_{split}.parquet")

    def speed_sensitivity(self, ffn_criterion: str, head_criterion: str) -> str:
        """The speed targets' per-layer costs of every (head configuration, FFN width), per pair of criteria
        (rule speed_sensitivity)."""
        return self("speed", f"sensitivity_{ffn_criterion}+{head_criterion}.parquet")

    def speed(self, name: str) -> str:
        """The speed-pruning experiment's caches and saved pruned folders (experiments/speed_pruning.py)."""
        return self("speed", name)


class TargetFiles(Files):
    """One prune target's step artifacts (results/<profile>/<model>/prune/<target>/)."""

    NAMES = dict(plan="plan.parquet", random_plans="random_plans.parquet", timing="timing.json",
                 metrics="metrics.json")

    def eval(self, split: str) -> str:
        return self(f"eval_{split}.parquet")

    def baselines(self, split: str) -> str:
        return self(f"baselines_{split}.parquet")


class Layout:
    """The folders of one profile."""

    def __init__(self, profile: str):
        self.profile = profile
        self.data, self.results, self.logs = f"data/processed/{profile}", f"results/{profile}", f"logs/{profile}"
        self.latency = f"{self.results}/latency"  # `pruning.latency.cached_table`'s cache, one file per machine and shape
        self.metrics = Files(f"results/metrics/{profile}")  # outside results/<profile>/: DVC outputs do not overlap
        self.finetune_summary, self.anatomy_metrics = self.metrics("finetune.json"), self.metrics("anatomy.json")

    def split(self, name: str) -> str:
        return f"{self.data}/{name}.parquet"

    def model(self, model: str) -> ModelFiles:
        return ModelFiles(f"{self.results}/{model}")

    def target(self, model: str, target: str) -> TargetFiles:
        return TargetFiles(f"{self.results}/{model}/prune/{target}")

    def pruned(self, model: str, target: str) -> str:
        return f"{self.results}/pruned/{model}/{target}"

    def log(self, *parts: str) -> str:
        return "/".join([self.logs, *parts]) + ".log"

    def config_metrics(self, config: str) -> str:
        return self.metrics("prune", f"{config}.json")

    def anatomy_figures(self, models) -> dict:
        a = f"{self.results}/anatomy"
        return dict(figure1=f"{a}/figure1_layer_cosine.png", lens_figure=f"{a}/lens_vs_cosine.png",
                    graph_figures=[f"{a}/neuron_graph_{m}.png" for m in models], ablation_figure=f"{a}/ablation.png")

    def report(self) -> dict:
        """The prune stage's report (rule prune_report), with the headline metrics and DVC's data plots."""
        r = self.results
        return dict(summary=f"{r}/summary.csv", summary_md=f"{r}/summary.md", comparisons=f"{r}/comparisons.csv",
                    frontier=f"{r}/frontier.csv", pareto=f"{r}/figures/prune_pareto.png",
                    accuracy=f"{r}/figures/prune_accuracy.png", time=f"{r}/figures/prune_time.png",
                    headline=self.metrics("headline.json"), plot_accuracy=f"{r}/plots/prune_accuracy.csv",
                    plot_speedup=f"{r}/plots/prune_speedup.csv")
