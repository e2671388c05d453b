"""Small statistics shared by the evaluation scripts and benchmarks (numpy only)."""

from __future__ import annotations

import numpy as np

__all__ = ["wilson_interval"]


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion ``k / n`` (95% for ``z = 1.96``).

    Returns ``(nan, nan)`` for ``n == 0``; the bounds are clipped to ``[0, 1]`` against
    rounding.
    """
    if n == 0:
        return float("nan"), float("nan")
    p = k / n
    den = 1 + z ** 2 / n
    mid = (p + z ** 2 / (2 * n)) / den
    half = z * np.sqrt(p * (1 - p) / n + z ** 2 / (4 * n * n)) / den
    return max(0.0, float(mid - half)), min(1.0, float(mid + half))
