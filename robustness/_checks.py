"""Value checks shared by the modules that validate user input (no torch, no numpy import)."""

from __future__ import annotations

import numbers

__all__ = ["is_number"]


def is_number(value: object, *, integer: bool = False) -> bool:
    """Whether ``value`` is a real number (with ``integer=True``: an integer), booleans excluded.

    Python's and numpy's numeric scalars qualify (``numbers.Real`` / ``numbers.Integral``, the ABCs
    numpy registers its types with); ``bool`` and ``numpy.bool_`` do not: ``True`` is an ``int`` to
    Python, but never a count, a level, a seed or a fraction here. NaN and infinities are numbers;
    callers that need a finite value check ``math.isfinite`` too.
    """
    return not isinstance(value, bool) and isinstance(value, numbers.Integral if integer else numbers.Real)
