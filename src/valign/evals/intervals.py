"""Confidence intervals for the rates the suites and the calibration report.

Example:
    >>> wilson_interval(8, 10)
    (0.4902, 0.9433)
"""

from __future__ import annotations

import math

__all__ = ["wilson_interval"]


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float] | None:
    """Wilson score interval for k successes in n trials, rounded to 4 places (None
    when n is 0). Unlike the normal interval it stays inside [0, 1] and is not empty at
    0 or n successes, which small evaluation sets hit often.

    Example:
        >>> wilson_interval(0, 10), wilson_interval(10, 10), wilson_interval(0, 0)
        ((0.0, 0.2775), (0.7225, 1.0), None)
    """
    if n == 0:
        return None
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (round(max(0.0, centre - half), 4), round(min(1.0, centre + half), 4))
