"""Mean ± std over seeds, the one way every study table and ``make claims`` report them."""

from __future__ import annotations

import statistics
from collections.abc import Sequence


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def cell(values: Sequence[float], scale: float = 1.0, digits: int = 1) -> str:
    """``"mean ± std"`` of ``values * scale``; ``"-"`` when empty."""
    if not values:
        return "-"
    m, s = mean_std([v * scale for v in values])
    return f"{m:.{digits}f} ± {s:.{digits}f}"
