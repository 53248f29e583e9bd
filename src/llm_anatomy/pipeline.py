"""What each rule of the workflow reads: the input and parameter functions workflow/rules/*.smk wires in.

The targets of the profile (`pruning.targets`) meet the layout of its files (`layout`): which scores, calibration
passes and validation evidence a target's plan reads, what its metrics are built from, and what `snakemake`
builds. No torch here: the workflow reads this module when it loads.
"""
from __future__ import annotations

from .layout import Layout
from .pruning.criteria import criterion_inputs
from .pruning.joint import SpeedMethod
from .pruning.spec import SPEED, THRESHOLD
from .pruning.targets import Targets

CALIBRATION_JOBS = ("ffn_stats", "mask_gradients", "obs_scores")  # per-model passes a plan may read
SPEED_JOBS = ("latency_table", "head_stats")  # per-model inputs of every speed plan (besides its costs)


class Pipeline:
    """The active profile's targets and files. `config` is the validated params.yaml."""

    def __init__(self, config: dict):
        self.targets = Targets(config)
        self.layout = Layout(config["profile"])

    def criterion_inputs(self, model: str, criterion: str) -> dict[str, str]:
        """What a criterion's importances are computed from: the neuron scores (cosine), the calibration
        statistics (and their means, for the bias fold), and what the criterion measures besides."""
        return self.layout.model(model).files("neuron_scores", "ffn_stats", *criterion_inputs(criterion))

    def plan_inputs(self, model: str, target: str) -> dict[str, str]:
        """Scores for every plan; what a criterion reads, and the validation sensitivity for a searched allocation."""
        spec = self.targets.checked_spec(model, target)  # every file of a target follows from its plan: one check
        files = self.layout.model(model)
        inputs = files.files("layer_scores", "neuron_scores")
        if spec.allocation != THRESHOLD:
            inputs.update(self.criterion_inputs(model, spec.criterion))
        if spec.allocation == "searched":
            inputs["sensitivity"] = files.sensitivity(spec.criterion)
        if spec.allocation == SPEED:
            ffn, head = self.speed_criteria(model, spec)
            inputs.update(self.criterion_inputs(model, ffn))
            inputs.update(files.files(*SPEED_JOBS), speed_sensitivity=files.speed_sensitivity(ffn, head))
        return inputs

    def speed_criteria(self, model: str, spec: SpeedMethod) -> tuple[str, str]:
        """(FFN criterion, head criterion) of the cost table a speed target reads: its own, and for the structure it
        leaves alone (whose criterion does not change its costs) the model's speed criterion
        (`Targets.speed_criteria`), so heads and joint targets share one table."""
        ffn, head = self.targets.speed_criteria(model)
        return spec.ffn_criterion or ffn, spec.head_criterion or head

    def speed_params(self, model: str, target: str) -> dict | None:
        """What a speed target's plan reads besides its files (None for every other target): the cost table's
        criteria and objective, and the width grid the choices are made on."""
        spec = self.targets.checked_spec(model, target)
        if spec.allocation != SPEED:
            return None
        ffn, head = self.speed_criteria(model, spec)
        p = self.targets.pruning["speed"]
        return dict(ffn_criterion=ffn, head_criterion=head, objective=p["objective"], width_steps=p["width_steps"])

    def speed_sensitivity_inputs(self, model: str, ffn_criterion: str) -> dict[str, str]:
        """What rule speed_sensitivity reads besides the model and the validation split: the FFN criterion's
        statistics and the heads' calibration statistics and means."""
        return {**self.criterion_inputs(model, ffn_criterion), **self.layout.model(model).files("head_stats", "head_means")}

    def metrics_inputs(self, model: str, target: str, split: str = "test") -> dict[str, str]:
        """Every file one target's metrics.json is built from."""
        t = self.layout.target(model, target)
        return dict(plan=t.plan, random_plans=t.random_plans, pruned=self.layout.pruned(model, target),
                    dense_eval=self.layout.model(model).dense_eval(split), eval=t.eval(split),
                    baselines=t.baselines(split), timing=t.timing)

    def benchmark_inputs(self, model: str, target: str) -> dict[str, str]:
        """The benchmark records of what one point costs before evaluation: its plan and materialise jobs, and
        the per-model calibration passes it reads (shared by every point of the model)."""
        t, m = self.layout.target(model, target), self.layout.model(model)
        files = dict(plan=t.benchmark("plan"), materialise=t.benchmark("materialise"))
        inputs = self.plan_inputs(model, target)
        files.update({job: m.benchmark(job) for job in CALIBRATION_JOBS + SPEED_JOBS if job in inputs})
        if "sensitivity" in inputs:
            files["layer_sensitivity"] = m.benchmark(f"sensitivity_{self.targets.spec(model, target).criterion}")
        if "speed_sensitivity" in inputs:
            ffn, head = self.speed_criteria(model, self.targets.spec(model, target))
            files["speed_sensitivity"] = m.benchmark(f"speed_sensitivity_{ffn}+{head}")
        return {f"benchmark_{k}": v for k, v in files.items()}

    def config_metrics_inputs(self, name: str) -> list[str]:
        """The per-model metrics a named configuration's DVC metrics file gathers."""
        self.targets.check_config(name)
        return [self.layout.target(m, name).metrics for m in self.targets.models_for(name)]

    def report_inputs(self, split: str = "test") -> dict[str, list[str]]:
        """Every target's metrics and per-review logits (pruned model and baselines), in the same order."""
        targets = [self.layout.target(m, t) for m, t in self.targets.pairs()]
        return dict(metrics=[t.metrics for t in targets], evals=[t.eval(split) for t in targets],
                    baselines=[t.baselines(split) for t in targets])

    def pruned_dirs(self) -> list[str]:
        return [self.layout.pruned(m, t) for m, t in self.targets.pairs()]

    def choice_files(self) -> list[str]:
        """The validation-split evidence for FLAP's allocation, per model with FLAP points."""
        return [self.layout.model(m).flap_allocation for m in self.targets.models if self.targets.flap_fractions(m)]

    def prune_outputs(self) -> list[str]:
        """What `snakemake` builds for the prune stage: the DVC metrics per named configuration, every pruned
        folder, the validation evidence of the method settings, and the report."""
        return ([self.layout.config_metrics(c) for c in self.targets.named_with_models()] + self.pruned_dirs()
                + self.choice_files() + list(self.layout.report().values()))
