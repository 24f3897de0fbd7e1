"""A user's own distortions, as docs/distortions.md shows them: registered by the tests that need them.

``pixelate`` is the documentation's example (deterministic, identity level 1); ``salt`` is a seeded
one (salt-and-pepper noise drawn from ``numpy.random.default_rng(seed)``).
"""

from __future__ import annotations

import numpy as np

PIXELATE = dict(
    parameter="block",
    unit="px",
    minimum=1,
    maximum=64,
    levels=(2, 4, 8, 16),
    integer=True,
    identity=1,
    id_format="{}px",
    code_version="1",
    description="each block x block square replaced by its mean colour, rounded",
)

SALT = dict(
    parameter="fraction",
    unit="fraction",
    minimum=0.0,
    maximum=1.0,
    levels=(0.01, 0.05, 0.1),
    stochastic=True,
    identity=0.0,
    code_version="1",
    description="that fraction of pixels set to black or white, chosen by the seed",
)


def pixelate(image: np.ndarray, level: float, seed) -> np.ndarray:
    """Replace each ``level x level`` block (cut at the right and bottom borders) by its mean colour,
    rounded to nearest; ``uint8 (H, W, 3)`` in and out."""
    size = int(level)
    height, width, _ = image.shape
    rows, cols = np.arange(0, height, size), np.arange(0, width, size)
    sums = np.add.reduceat(np.add.reduceat(image.astype(np.float64), rows, axis=0), cols, axis=1)
    row_sizes, col_sizes = np.diff(np.append(rows, height)), np.diff(np.append(cols, width))
    means = np.rint(sums / (row_sizes[:, None, None] * col_sizes[None, :, None])).astype(np.uint8)
    return np.repeat(np.repeat(means, row_sizes, axis=0), col_sizes, axis=1)


def salt(image: np.ndarray, level: float, seed) -> np.ndarray:
    """Set each pixel, with probability ``level``, to black or white (even odds), from
    ``numpy.random.default_rng(seed)``."""
    rng = np.random.default_rng(seed)
    out = image.copy()
    hit = rng.random(image.shape[:2]) < level
    out[hit] = np.where(rng.random(int(hit.sum())) < 0.5, 0, 255)[:, None].astype(np.uint8)
    return out
