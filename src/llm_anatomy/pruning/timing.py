"""Time a physically pruned classifier against its dense original, side by side in one process.

Dense, zeroed (the paper's way: same shapes, built in memory from the plan; timed where the
sizing asks for it) and removed (the materialised folder) run in alternating, rotating order
after a warm-up pass each, so drifts of a noisy machine hit them all alike. Reported: the median seconds per variant,
every repeat's seconds, and the spread (min, median, max) of the per-repeat ratios
dense/variant. Before timing, zeroed and removed logits are compared in float32: they must
compute the same function.
"""
from __future__ import annotations

import logging
import time

import numpy as np

from .. import roofline
from ..costs import count_parameters, ffn_macs, forward_macs
from ..data import read_split
from ..device import machine_info, model_device, synchronize
from ..inference import inference_model, loop_parts, predict_logits
from ..io import write_json
from ..logits import first_reviews
from ..models import load_classifier, open_checkpoint
from .materialise import pruned_copy, zeroed_like
from .metrics import Timing
from .plan import read_plan

log = logging.getLogger(__name__)

EQUALITY_TOLERANCE = 1e-4  # float32 logits; measured differences are around 1e-6


def time_variants(variants: dict, encoded, pad_id, batch_size: int, precision: str, padding_side: str,
                  repeats: int) -> dict[str, list[float]]:
    """Seconds per pass of each variant, `repeats` alternating passes in rotating order, after a warm-up.
    Each variant runs as `inference_model` makes it for `precision`, made here before the clock starts
    unless the caller already made it (so the copy, cast and fusion are never timed)."""
    variants = {name: inference_model(model, precision) for name, model in variants.items()}
    names = list(variants)
    kw = dict(batch_size=batch_size, precision=precision, padding_side=padding_side)
    device = model_device(next(iter(variants.values())))
    for name in names:  # warm-up: allocator, kernels for this variant's shapes
        predict_logits(variants[name], encoded[:batch_size], pad_id, **kw)
    times = {n: [] for n in names}
    for r in range(repeats):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            synchronize(device)
            start = time.perf_counter()
            predict_logits(variants[name], encoded, pad_id, **kw)  # returns host arrays: the work is done
            times[name].append(time.perf_counter() - start)
        log.info("repeat %d/%d: %s", r + 1, repeats, ", ".join(f"{n} {times[n][-1]:.2f}s" for n in names))
    return times


def ratio_spread(dense: list[float], other: list[float]) -> dict[str, float]:
    """min, median and max over repeats of dense/other (each repeat's pair ran back to back)."""
    r = np.asarray(dense) / np.asarray(other)
    return dict(min=float(r.min()), median=float(np.median(r)), max=float(r.max()))


def time_pruned(finetuned, pruned, plan, test, timing, time_limit: int, batch_size: int, repeats: int,
                time_zeroed: bool, equality_check_reviews: int, threads: int | None, device: str) -> None:
    """Rule time_pruned: the `timing` record of dense, zeroed and removed on the first `time_limit` test reviews."""
    start = time.perf_counter()
    ck = open_checkpoint(finetuned, device, threads)
    dense = ck.model
    removed, _, _ = load_classifier(pruned, device)
    the_plan = read_plan(plan)
    zeroed = zeroed_like(dense, removed, the_plan) if the_plan.needs_calibration else pruned_copy(dense, the_plan, "zeroed")
    reviews = first_reviews(read_split(test), time_limit, "time_limit")
    encoded = ck.encode(reviews["text"])
    pad_id, side, precision = ck.pad_id, ck.padding_side, ck.precision

    check = encoded[:equality_check_reviews]
    f32 = dict(batch_size=batch_size, precision="fp32", padding_side=side)
    max_diff = float(np.abs(predict_logits(zeroed, check, pad_id, **f32)
                            - predict_logits(removed, check, pad_id, **f32)).max())
    log.info("zeroed vs removed, float32, %d reviews: max |logit difference| %.2e", len(check), max_diff)
    if not max_diff <= EQUALITY_TOLERANCE:
        raise RuntimeError(f"{pruned}: zeroed and removed models disagree by {max_diff:.3g} in float32 "
                           f"(tolerance {EQUALITY_TOLERANCE}); the folder does not hold the plan {plan}")

    variants = {"dense": dense, "zeroed": zeroed, "removed": removed}
    if not time_zeroed:
        del variants["zeroed"]
    variants = {n: inference_model(m, precision) for n, m in variants.items()}  # cast once, outside the clock
    times = time_variants(variants, encoded, pad_id, batch_size, precision, side, repeats)
    median = {n: float(np.median(t)) for n, t in times.items()}
    lengths = [len(e) for e in encoded]
    macs = {n: forward_macs(m.adapter, lengths) for n, m in (("dense", dense), ("removed", removed))}
    out = Timing(
        machine=machine_info(model_device(dense)), timed_reviews=len(encoded), batch_size=batch_size,
        precision=precision, loop=loop_parts(variants["dense"]), repeats=repeats, times_s=times,
        time_dense_s=median["dense"], time_zeroed_s=median.get("zeroed"), time_removed_s=median["removed"],
        speedup_zeroed=median["dense"] / median["zeroed"] if time_zeroed else None,
        speedup_removed=median["dense"] / median["removed"],
        speedup_zeroed_spread=ratio_spread(times["dense"], times["zeroed"]) if time_zeroed else None,
        speedup_removed_spread=ratio_spread(times["dense"], times["removed"]),
        zeroed_vs_removed_max_abs_logit_diff_fp32=max_diff, equality_check_reviews=len(check),
        params_dense=count_parameters(dense), params_removed=count_parameters(removed),
        macs_dense=macs["dense"], macs_removed=macs["removed"],
        ffn_macs_dense=ffn_macs(dense.adapter, lengths), ffn_macs_removed=ffn_macs(removed.adapter, lengths),
        macs_ratio=macs["removed"] / macs["dense"], speedup_bound=1 / (macs["removed"] / macs["dense"]))
    if model_device(dense).type == "cpu":  # the ceiling is measured on CPU matmuls only
        out.roofline = roofline.measure(dense.adapter, precision, roofline.batch_rows(batch_size, lengths))
        for name in median:
            setattr(out, f"roofline_fraction_{name}", roofline.fraction(
                macs["dense" if name != "removed" else "removed"], median[name], out.roofline["attainable_gflops"]))
        log.info("roofline at %d rows, %s: %.0f GFLOP/s attainable; dense reached %.0f%%, removed %.0f%%",
                 out.roofline["tokens"], precision, out.roofline["attainable_gflops"],
                 100 * out.roofline_fraction_dense, 100 * out.roofline_fraction_removed)
    out.seconds = time.perf_counter() - start
    zeroed_note = f", zeroed {out.speedup_zeroed:.3f}x" if time_zeroed else " (zeroed not timed)"
    log.info("time dense %.2fs removed %.2fs: speedup removed %.3fx (repeats %.3f-%.3f)%s; multiply-add bound "
             "%.3fx", median["dense"], median["removed"], out.speedup_removed, out.speedup_removed_spread["min"],
             out.speedup_removed_spread["max"], zeroed_note, out.speedup_bound)
    write_json(timing, out.to_dict())
