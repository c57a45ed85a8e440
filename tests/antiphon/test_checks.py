"""The shared argument check names the argument and the value."""
from __future__ import annotations

import math

import numpy as np
import pytest

from antiphon.checks import check_number


@pytest.mark.parametrize("value, low, high, bounds", [
    (-0.1, 0.0, math.inf, ">= 0.0"), (1.5, 0.0, 1.0, "in [0.0, 1.0]"), (math.nan, 0.0, 1.0, "in"),
    (math.inf, 0.0, math.inf, ">= 0.0"), ("high", 0.0, 1.0, "in"), (True, 0.0, 1.0, "in"), (None, 0, 1, "in"),
])
def test_a_bad_value_is_named(value, low, high, bounds):
    with pytest.raises(ValueError) as e:
        check_number("Verbosity: slope", value, low, high)
    assert str(e.value).startswith(f"Verbosity: slope={value!r} must be a finite number {bounds}")


def test_a_good_value_comes_back_as_a_float():
    assert check_number("x", 3, 0, 5) == 3.0 and isinstance(check_number("x", np.int64(3), 0, 5), float)
    assert check_number("x", 0.0, 0.0, 0.0) == 0.0
