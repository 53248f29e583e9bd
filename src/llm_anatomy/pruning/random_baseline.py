"""The paper's random baseline: keep the high neurons, prune at random among the rest,
matching a structured run's per-layer counts."""
from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

log = logging.getLogger(__name__)


def random_masks(scores: Sequence[np.ndarray], counts: Sequence[int], seed: int, high: float) -> list[np.ndarray]:
    """Per layer, `counts[l]` neurons drawn without replacement from those with score <= `high`.

    One generator per (seed, layer), so a layer's draw does not depend on the other layers.
    """
    out = []
    for layer, (s, n) in enumerate(zip(scores, counts)):
        candidates = np.flatnonzero(~(np.asarray(s) > high))
        if n > len(candidates):
            log.warning("layer %d: %d neurons to prune but only %d are not high; pruning those", layer, n, len(candidates))
            n = len(candidates)
        rng = np.random.default_rng([int(seed), layer])
        out.append(np.sort(rng.choice(candidates, size=int(n), replace=False)))
    return out
