"""robustness._checks.is_number: the one "number, but not a bool" check behind every validator."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from robustness._checks import is_number
from robustness.distortions import DISTORTIONS
from robustness.stats import wilson_interval


@pytest.mark.parametrize(
    "value, number, integer",
    [
        (3, True, True),
        (-2, True, True),
        (np.int64(4), True, True),
        (np.uint8(1), True, True),
        (2.5, True, False),
        (3.0, True, False),
        (np.float32(0.5), True, False),
        (math.nan, True, False),
        (Fraction(1, 2), True, False),
        (True, False, False),
        (False, False, False),
        (np.bool_(True), False, False),
        ("3", False, False),
        (None, False, False),
        (1 + 0j, False, False),
        ([1], False, False),
    ],
)
def test_is_number(value, number, integer):
    assert is_number(value) is number
    assert is_number(value, integer=True) is integer


def test_validators_refuse_bools_and_accept_numpy_numbers():
    """The checks that now call is_number: a bool is refused where a number was, numpy scalars pass."""
    with pytest.raises(ValueError, match="level must be a finite number"):
        DISTORTIONS["blur"].check_level(True)
    assert DISTORTIONS["blur"].check_level(np.float32(2.0)) == 2.0
    with pytest.raises(TypeError, match="n must be an integer count"):
        wilson_interval(1, True)
    assert wilson_interval(np.int64(5), np.int64(10)) == wilson_interval(5, 10)
