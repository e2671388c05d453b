"""Small statistics shared by the evaluation scripts and benchmarks (numpy only)."""

from __future__ import annotations

import numpy as np

__all__ = ["wilson_interval", "paired_difference"]


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


def paired_difference(baseline, other) -> dict[str, float | int | bool]:
    """Mean paired difference ``other - baseline`` and its standard error.

    ``baseline`` and ``other`` are scores of the same runs (seeds, splits, folds) in the
    same order. The standard error is ``std(diff, ddof=1) / sqrt(n)`` (NaN for one pair).

    Returns
    -------
    dict
        ``n``, ``diff`` (mean), ``se``, ``beyond_2se`` (``|diff| > 2 se``; False when the
        SE is undefined).
    """
    a = np.asarray(baseline, dtype=np.float64)
    b = np.asarray(other, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired scores must be two 1-D arrays of one length, got {a.shape} and {b.shape}")
    diff = b - a
    se = float(diff.std(ddof=1) / np.sqrt(diff.size)) if diff.size > 1 else float("nan")
    mean = float(diff.mean()) if diff.size else float("nan")
    return {"n": int(diff.size), "diff": mean, "se": se,
            "beyond_2se": bool(np.isfinite(se) and abs(mean) > 2 * se)}
