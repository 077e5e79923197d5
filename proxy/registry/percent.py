"""Percentages as the registry stores them: integer basis points, so 0.01 % steps are exact.

Kept apart from ``models`` so that ``analysis_policy`` (which ``models`` imports) can use the
same rule for its ramp steps without an import cycle.
"""

from __future__ import annotations

import math

#: Assignment resolution: percentages are stored as basis points (0.01 % steps).
BASIS_POINTS = 10_000


def to_basis_points(percent: float) -> int:
    """``percent`` (0 to 100 in steps of 0.01) as basis points. ``ValueError`` otherwise,
    whose message reads on after the name of the value (``"percent " + str(exc)``)."""
    if not math.isfinite(percent) or not 0 <= percent <= 100:
        raise ValueError(f"must be between 0 and 100, got {percent}")
    points = round(percent * 100)
    # Floats cannot hold 0.01 steps exactly (12.34 * 100 == 1233.9999999999998).
    if abs(percent * 100 - points) > 1e-6:
        raise ValueError(f"moves in steps of 0.01, got {percent}")
    return points
