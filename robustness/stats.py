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

__all__ = ["Z95", "wilson_interval", "McNemarResult", "mcnemar", "correct"]

#: The two-sided 95% normal quantile.
Z95 = 1.959963984540054


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval (Wilson 1927) for ``successes`` out of ``n``; ``(0, 1)`` when ``n == 0``.

    Raises:
        ValueError: ``successes`` outside ``[0, n]`` or ``n < 0``.
    """
    if n < 0 or not 0 <= successes <= max(n, 0):
        raise ValueError(f"need 0 <= successes <= n, got successes={successes}, n={n}")
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
    """Boolean ``(n,)``: whether each image is right under ``metric`` (``top1`` / ``top5``) given
    ``(n, 5)`` top-5 predictions (best first) and ``(n,)`` labels."""
    predictions = np.asarray(predictions)
    labels = np.asarray(labels)
    if metric == "top1":
        return predictions[:, 0] == labels
    if metric == "top5":
        return (predictions[:, :5] == labels[:, None]).any(axis=1)
    raise ValueError(f"metric must be 'top1' or 'top5', got {metric!r}")


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
        """True when the candidate is worse and ``p_value < alpha``."""
        return self.b > self.c and self.p_value < alpha


def mcnemar(baseline_correct, candidate_correct) -> McNemarResult:
    """Exact one-sided McNemar test of "candidate is less accurate than baseline" on paired images.

    Args:
        baseline_correct, candidate_correct: boolean arrays ``(n,)`` over the same images, same order.

    Raises:
        ValueError: the arrays differ in length or are empty.
    """
    from scipy.stats import binomtest

    base = np.asarray(baseline_correct, dtype=bool)
    cand = np.asarray(candidate_correct, dtype=bool)
    if base.shape != cand.shape or base.ndim != 1:
        raise ValueError(f"paired arrays must have the same 1-D shape, got {base.shape} and {cand.shape}")
    if base.size == 0:
        raise ValueError("McNemar's test needs at least one paired image")
    b = int(np.sum(base & ~cand))
    c = int(np.sum(~base & cand))
    p = 1.0 if b + c == 0 else float(binomtest(b, b + c, 0.5, alternative="greater").pvalue)
    return McNemarResult(int(base.size), float(base.mean()), float(cand.mean()), b, c, p)
