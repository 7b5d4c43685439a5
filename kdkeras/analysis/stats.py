"""Summary statistics of repeated runs (seeds) for results tables."""

from __future__ import annotations

import math
from typing import Iterable


def mean_std(values: Iterable[float | None]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (n - 1) of the values that are not None:
    (None, None) for none, std None for one (a single seed has no spread)."""
    values = [float(v) for v in values if v is not None]
    if not values:
        return None, None
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else None
    return mean, std
