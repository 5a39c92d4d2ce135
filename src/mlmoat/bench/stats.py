"""Medians and percentiles over repetitions (nearest-rank, no interpolation)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence


def median(values: Sequence[float]) -> float:
    """The median of ``values``; NaN when there are none."""
    return statistics.median(values) if values else math.nan


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank ``q``-th percentile (0 < q <= 100) of ``values``; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[rank - 1]


def ratio(baseline: float, ours: float) -> float:
    """``baseline / ours``: above 1 means mlmoat is smaller or faster; NaN when undefined."""
    if math.isnan(baseline) or math.isnan(ours) or ours == 0:
        return math.nan
    return baseline / ours
