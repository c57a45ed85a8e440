"""Argument checks the parts share: the error names the argument and the value it got."""
from __future__ import annotations

import math
import numbers
from typing import Any


def check_number(name: str, value: Any, low: float, high: float = math.inf) -> float:
    """``value`` as a float if it is a finite real number in [low, high] (a bool is not a number);
    otherwise ValueError ``"<name>=<value> must be a finite number in [low, high]"``.

    ``name`` is how the caller's user wrote the argument, with any owner in front
    (``"Verbosity: slope"``, ``"base_pitch"``).
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) \
            or not low <= value <= high:
        bounds = f"in [{low}, {high}]" if high < math.inf else f">= {low}"
        raise ValueError(f"{name}={value!r} must be a finite number {bounds}")
    return float(value)
