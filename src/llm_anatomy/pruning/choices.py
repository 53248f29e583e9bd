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

from ..batching import encode_reviews
from ..evaluate import predict_logits
from ..models import load_classifier, set_threads
from ..stats import FAMILIES, accuracy_interval, correct, judge, paired_difference
from .flap import ALLOCATIONS
from .materialise import pruned_copy
from .plan import plan_flap

log = logging.getLogger(__name__)


def allocation_choice(dense_dir, val: pd.DataFrame, stats_path, scores, fractions, bias_compensation: bool,
                      high: float, chosen: str, batch_size: int = 32, threads: int | None = None,
                      device: str = "auto") -> pd.DataFrame:
    """Validation accuracy of FLAP under each allocation at each fraction, paired (see module doc)."""
    set_threads(threads)
    start = time.perf_counter()
    model, tokenizer, meta = load_classifier(dense_dir, device)
    encoded = encode_reviews(tokenizer, meta, val["text"])
    kw = dict(batch_size=batch_size, precision=meta.get("precision", "fp32"),
              padding_side=meta.get("padding_side", "right"))
    rows = []
    for fraction in fractions:
        outcomes = {}
        for allocation in ALLOCATIONS:
            plan = plan_flap(dict(target=fraction, allocation=allocation, bias_compensation=bias_compensation),
                             stats_path, scores, high)
            pruned = pruned_copy(model, plan, "removed")
            logits = predict_logits(pruned, encoded, tokenizer.pad_token_id, **kw,
                                    desc=f"{allocation} {100 * fraction:g}% (validation)")
            del pruned
            outcomes[allocation] = correct(logits, val["label"])
        d = paired_difference(outcomes["global"], outcomes["uniform"])
        row = dict(target_pct=100 * fraction, reviews=len(val), bias_compensation=bias_compensation)
        for allocation in ALLOCATIONS:
            row.update(accuracy_interval(outcomes[allocation]).to_dict(f"accuracy_{allocation}"))
        row.update(d.to_dict("gap_global_minus_uniform"))
        row.update(chosen=chosen)
        rows.append(row)
        log.info("FLAP %.0f%% on %d validation reviews: uniform %.4f, global %.4f, gap %+.4f [%+.4f, %+.4f]",
                 100 * fraction, len(val), row["accuracy_uniform"], row["accuracy_global"], d.diff, d.lo, d.hi)
    log.info("allocation choice evaluated in %.0f s", time.perf_counter() - start)
    return judge(pd.DataFrame(rows), "gap_global_minus_uniform", FAMILIES["flap_allocation"], verdict_column="verdict")
