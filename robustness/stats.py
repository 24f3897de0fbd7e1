"""Statistics for gate verdicts: Wilson intervals and the paired McNemar test.

* :func:`wilson_interval` — the 95% Wilson score interval of an accuracy measured on ``n`` images.
  It says how far the true accuracy on the image distribution may be from the measured one.
* :func:`mcnemar` — compares a candidate with a baseline **on the same images**: only the discordant
  images count (``b``: baseline right, candidate wrong; ``c``: baseline wrong, candidate right). The
  exact one-sided p-value is ``P(X >= b)`` for ``X ~ Binomial(b + c, 1/2)``: the chance of a drop at
  least this large if the two models were equally accurate. Pairing removes the between-image
  variance, so it detects much smaller regressions than comparing two intervals.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ._checks import is_number
from .names import TOPK_MAX, top_k

__all__ = ["Z95", "wilson_interval", "McNemarResult", "mcnemar", "correct"]

#: The two-sided 95% normal quantile.
Z95 = 1.959963984540054


def _count(value, name: str) -> int:
    """``value`` as a Python int; refuses bools, floats (even ``3.0``), strings and anything non-integral."""
    if not is_number(value, integer=True):
        raise TypeError(f"{name} must be an integer count, got {value!r} ({type(value).__name__})")
    return int(value)


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval (Wilson 1927) for ``successes`` out of ``n``; ``(0, 1)`` when ``n == 0``.

    Args:
        successes: correct images, an integer in ``[0, n]`` (Python or NumPy int; not a bool or float).
        n: images, an integer ``>= 0``.
        z: the normal quantile, finite and ``> 0`` (default :data:`Z95`, two-sided 95%).

    Returns:
        ``(low, high)``, fractions in ``[0, 1]`` with ``low <= successes / n <= high``.

    Raises:
        TypeError: ``successes`` or ``n`` is not an integer (``1.5``, ``3.0``, ``True``, ``"3"``).
        ValueError: ``n < 0``, ``successes`` outside ``[0, n]``, or ``z`` not finite and positive.
    """
    successes, n = _count(successes, "successes"), _count(n, "n")
    if n < 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n, got successes={successes}, n={n}")
    if not is_number(z) or not math.isfinite(z) or z <= 0:
        raise ValueError(f"z must be a finite number > 0, got {z!r}")
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    denominator = 1 + z**2 / n
    centre = (p + z**2 / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / denominator
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return (low, high)


def correct(predictions: np.ndarray, labels: np.ndarray, metric: str = "top1") -> np.ndarray:
    """Boolean ``(n,)``: whether each image is right under ``metric``, a top-k accuracy ``topK`` for
    K = 1..5 (the label is among the first K predictions).

    Args:
        predictions: integer ``(n, 5)`` top-5 class indices per image, best first (a model with
            fewer than 5 classes pads with -1, never a label).
        labels: integer ``(n,)`` true class indices.
        metric: ``top1`` ... ``top5``.

    Raises:
        ValueError: ``metric`` is not ``topK`` with 1 <= K <= 5 (the engine keeps the top-5
            predictions per image, :data:`robustness.names.TOPK_MAX`), or ``predictions`` has fewer
            than K columns or a row count other than ``labels``'.
    """
    k = top_k(metric)
    if k is None or k > TOPK_MAX:
        limit = (
            f": the engine keeps the top-{TOPK_MAX} predictions per image, so k <= {TOPK_MAX}" if k is not None else ""
        )
        raise ValueError(f"metric must be top1 ... top{TOPK_MAX}, got {metric!r}{limit}")
    predictions = np.asarray(predictions)
    labels = np.asarray(labels)
    if predictions.ndim != 2 or predictions.shape[1] < k or predictions.shape[0] != labels.shape[0]:
        raise ValueError(
            f"{metric} needs predictions of shape (n, >= {k}) for {labels.shape[0]} labels, got {predictions.shape}"
        )
    return (predictions[:, :k] == labels[:, None]).any(axis=1)


@dataclass(frozen=True)
class McNemarResult:
    """Outcome of :func:`mcnemar`.

    Attributes:
        n: paired images.
        baseline, candidate: their accuracies on those images.
        b: images the baseline got right and the candidate wrong (losses).
        c: images the baseline got wrong and the candidate right (gains).
        p_value: exact one-sided p-value for "the candidate is worse".
    """

    n: int
    baseline: float
    candidate: float
    b: int
    c: int
    p_value: float

    def significant_drop(self, alpha: float) -> bool:
        """True when the candidate is worse and ``p_value < alpha``.

        Raises:
            ValueError: ``alpha`` is not a number in ``(0, 1)`` (a NaN alpha would never fail).
        """
        if not is_number(alpha) or not 0 < alpha < 1:
            raise ValueError(f"alpha must be a number in (0, 1), got {alpha!r}")
        return self.b > self.c and self.p_value < alpha


def _paired(values, name: str) -> np.ndarray:
    """A 1-D boolean array from ``values``: bool dtype as is, an integer array only when it holds just 0 and 1."""
    array = np.asarray(values)
    if array.dtype == bool:
        return array
    if array.size and np.issubdtype(array.dtype, np.integer):
        bad = array[(array != 0) & (array != 1)]
        if bad.size:
            raise ValueError(f"{name} must say right (True/1) or wrong (False/0) per image, found {bad.flat[0]!r}")
        return array.astype(bool)
    if array.size == 0:
        return array.astype(bool)
    raise TypeError(
        f"{name} must be a boolean array (or integers 0/1), got dtype {array.dtype}: "
        "a float or NaN is not 'right or wrong'"
    )


def mcnemar(baseline_correct, candidate_correct) -> McNemarResult:
    """Exact one-sided McNemar test of "candidate is less accurate than baseline" on paired images.

    ``b`` = images the baseline gets right and the candidate wrong, ``c`` = the reverse; the p-value
    is ``P(X >= b)`` for ``X ~ Binomial(b + c, 1/2)`` (scipy.stats.binomtest, ``alternative="greater"``);
    1.0 when ``b + c == 0``.

    Args:
        baseline_correct, candidate_correct: ``(n,)`` arrays over the same images, same order, saying
            per image whether the model was right: bool dtype, or integers that are all 0 or 1.

    Raises:
        TypeError: an array of another dtype (float, object...): ``nan`` or ``0.5`` is not right-or-wrong.
        ValueError: integers other than 0/1 (e.g. ``2``), arrays that differ in shape or are not 1-D, or empty.
    """
    from scipy.stats import binomtest

    base = _paired(baseline_correct, "baseline_correct")
    cand = _paired(candidate_correct, "candidate_correct")
    if base.shape != cand.shape or base.ndim != 1:
        raise ValueError(f"paired arrays must have the same 1-D shape, got {base.shape} and {cand.shape}")
    if base.size == 0:
        raise ValueError("McNemar's test needs at least one paired image")
    b = int(np.sum(base & ~cand))
    c = int(np.sum(~base & cand))
    p = 1.0 if b + c == 0 else float(binomtest(b, b + c, 0.5, alternative="greater").pvalue)
    return McNemarResult(int(base.size), float(base.mean()), float(cand.mean()), b, c, p)
