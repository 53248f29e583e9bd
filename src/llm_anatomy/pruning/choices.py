"""Method settings chosen on the validation split, never on test.

FLAP's allocation across layers (`pruning.flap.allocation`): uniform and global plans at the
profile's FLAP sparsities, applied in memory to the dense model and evaluated on the validation
split, paired on the same reviews. choices/flap_allocation.csv, one row per sparsity:
  target_pct, accuracy_uniform, accuracy_global (+ _lo/_hi), gap = global - uniform (+ _lo, _hi,
  _p: exact McNemar, _p_adj: adjusted over the sparsities, stats.FAMILIES["flap_allocation"]), verdict
  (by the adjusted test), reviews, chosen (the params value; the table is the evidence for it)
"""
from __future__ import annotations

import logging
import time

import pandas as pd

from ..data import read_split
from ..inference import predict_logits
from ..io import write_csv
from ..models import open_checkpoint
from ..scores import mean_neuron_scores
from ..stats import FAMILIES, accuracy_interval, correct, judge, paired_difference
from .criteria import NeuronStats
from .materialise import pruned_copy
from .plan import make_plan
from .spec import MethodSpec

log = logging.getLogger(__name__)

ALLOCATIONS = ("uniform", "global")  # FLAP's two


def flap_allocation_choice(finetuned, val, ffn_stats, neuron_scores, choice, fractions, flap: dict,
                           high_threshold: float, batch_size: int, threads: int | None, device: str) -> None:
    """Rule flap_allocation_choice: validation accuracy of FLAP (`flap`: pruning.flap) under each allocation at
    each fraction, paired, to the `choice` table (see module doc)."""
    start = time.perf_counter()
    ck = open_checkpoint(finetuned, device, threads)
    val = read_split(val)
    scores = mean_neuron_scores(neuron_scores)
    stats = NeuronStats.from_files(ffn_stats, cosine=scores)
    encoded = ck.encode(val["text"])
    kw = dict(batch_size=batch_size, precision=ck.precision, padding_side=ck.padding_side)
    rows = []
    for fraction in fractions:
        outcomes = {}
        for allocation in ALLOCATIONS:
            spec = MethodSpec.flap(fraction, allocation, flap["bias_compensation"])
            pruned = pruned_copy(ck.model, make_plan(spec, None, scores, high_threshold, stats), "removed")
            logits = predict_logits(pruned, encoded, ck.pad_id, **kw, desc=f"{allocation} {100 * fraction:g}% (validation)")
            del pruned
            outcomes[allocation] = correct(logits, val["label"])
        d = paired_difference(outcomes["global"], outcomes["uniform"])
        row = dict(target_pct=100 * fraction, reviews=len(val), bias_compensation=flap["bias_compensation"])
        for allocation in ALLOCATIONS:
            row.update(accuracy_interval(outcomes[allocation]).to_dict(f"accuracy_{allocation}"))
        row.update(d.to_dict("gap_global_minus_uniform"), chosen=flap["allocation"])
        rows.append(row)
        log.info("FLAP %.0f%% on %d validation reviews: uniform %.4f, global %.4f, gap %+.4f [%+.4f, %+.4f]",
                 100 * fraction, len(val), row["accuracy_uniform"], row["accuracy_global"], d.diff, d.lo, d.hi)
    write_csv(judge(pd.DataFrame(rows), "gap_global_minus_uniform", FAMILIES["flap_allocation"], verdict_column="verdict"),
              choice)
    log.info("allocation choice evaluated in %.0f s", time.perf_counter() - start)
