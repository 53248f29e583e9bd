"""Names of the prune targets: a named Figure-5a configuration, or a point of a curve.

sweep-<pct>  the paper rule, alpha bisected to prune pct% of all FFN neurons
flap-<pct>   FLAP at pct%
"""
from __future__ import annotations

import re

CURVES = ("sweep", "flap")
CURVE_ORDER = {"named": 0, "sweep": 1, "flap": 2}
DEFAULT_CALIBRATION_REVIEWS = 128  # train reviews for FLAP's statistics when a profile does not say


def curve_of(name: str) -> tuple[str, int | None]:
    """('sweep' | 'flap', target percentage) for a curve point's name, else ('named', None)."""
    m = re.fullmatch(r"(sweep|flap)-(\d+)", name)
    return (m.group(1), int(m.group(2))) if m else ("named", None)
