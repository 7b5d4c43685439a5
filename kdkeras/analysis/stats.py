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


def format_mean_std(mean: float | None, std: float | None = None, signed: bool = False,
                    empty: str = "–") -> str:
    """Fractions shown as `mean ± std` in percent (or, `signed`, in +/- points)
    with two decimals, rounded first so that a tiny negative reads 0.00, not
    -0.00; `empty` when there is no mean, no `± ...` when there is no std."""
    if mean is None:
        return empty

    def shown(value: float) -> float:
        return round(100 * value, 2) + 0.0

    text = f"{shown(mean):+.2f}" if signed else f"{shown(mean):.2f}"
    return text + ("" if std is None else f" ± {shown(std):.2f}")
