"""The prune chain outside Snakemake (`llm-anatomy prune`, the tests): the calibration passes a method reads, its
plan and its pruned folder, by the stage functions the rules call, in the order the workflow runs them."""
from __future__ import annotations

from collections.abc import Sequence

from ..layout import ModelFiles, TargetFiles
from .calibration import ffn_stats
from .criteria import criterion_inputs
from .gradients import mask_gradients
from .materialise import materialise
from .obs import obs_scores
from .plan import prune_plan
from .sensitivity import layer_sensitivity
from .spec import THRESHOLD, MethodSpec


def prune_model(finetuned, scores: ModelFiles, spec: MethodSpec, train, pruned, work, *, calibration_reviews: int,
                batch_size: int, calibration_batch_size: int, ridge: float, high_threshold: float, average_over: str,
                val=None, search_reviews: int | None = None, search_fractions: Sequence[float] = (),
                seeds: Sequence[int] = (0,), threads: int | None = None, device: str = "cpu") -> TargetFiles:
    """The `pruned` folder of `spec` on the classifier `finetuned`, whose anatomy tables are in `scores`; the
    calibration passes (on `train`) and the sensitivity (on `val`, for a searched allocation) are written to the
    model folder `work`, the plan to its target folder work/prune, whose files are returned. `ridge` is the OBS
    order's (`pruning.methods.ridge`)."""
    work = ModelFiles(work)
    run = dict(finetuned=finetuned, threads=threads, device=device)
    passes = dict(run, train=train, reviews=calibration_reviews)
    inputs = {}
    if spec.allocation != THRESHOLD:
        ffn_stats(**passes, ffn_stats=work.ffn_stats, batch_size=batch_size)
        inputs["ffn_stats"] = work.ffn_stats
        needs = criterion_inputs(spec.criterion)
        if "mask_gradients" in needs:
            mask_gradients(**passes, mask_gradients=work.mask_gradients, batch_size=calibration_batch_size)
        if "obs_scores" in needs:
            obs_scores(**passes, obs_scores=work.obs_scores, ridge=ridge, batch_size=calibration_batch_size)
        inputs.update({k: (scores if k == "contributions" else work).files(k)[k] for k in needs})
    if spec.allocation == "searched":
        if val is None:
            raise ValueError(f"{spec.name}: the searched allocation measures each layer's sensitivity on validation "
                             "reviews; give the validation split")
        layer_sensitivity(**run, val=val, sensitivity=work.sensitivity(spec.criterion), criterion=spec.criterion,
                          reviews=search_reviews, fractions=search_fractions, batch_size=calibration_batch_size,
                          neuron_scores=scores.neuron_scores, **inputs)
        inputs["sensitivity"] = work.sensitivity(spec.criterion)
    target = TargetFiles(work("prune"))
    prune_plan(scores.layer_scores, scores.neuron_scores, target.plan, target.random_plans, spec, list(seeds),
               high_threshold, average_over, **inputs)
    fit = dict(reviews=calibration_reviews, batch_size=calibration_batch_size) if spec.fitted else None
    materialise(finetuned, target.plan, pruned, spec.name, fit, train)
    return target
