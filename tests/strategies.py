"""Hypothesis strategies for the distortion tests: images of any size and content, and levels.

Large arrays are built with numpy from a drawn seed (drawing 300x300x3 elements one by one through
hypothesis would be far too slow); the drawn parameters still shrink to small, readable cases.
"""

from __future__ import annotations

import numpy as np
from hypothesis import settings
from hypothesis import strategies as st

from robustness import DISTORTIONS

#: Kinds of image content: uniform noise, one constant colour, a smooth gradient, hard-edged blocks.
CONTENT_KINDS = ("random", "constant", "gradient", "blocks")


def make_image(height: int, width: int, kind: str, seed: int) -> np.ndarray:
    """A deterministic ``uint8`` ``(height, width, 3)`` test image of the given content kind."""
    rng = np.random.default_rng(seed)
    if kind == "random":
        return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    if kind == "constant":
        return np.broadcast_to(rng.integers(0, 256, 3, dtype=np.uint8), (height, width, 3)).copy()
    if kind == "gradient":
        y = np.linspace(0.0, 1.0, height)[:, None, None]
        x = np.linspace(0.0, 1.0, width)[None, :, None]
        a, b, c = rng.uniform(0, 255, (3, 1, 1, 3))
        return np.clip(np.rint(a + (b - a) * y + (c - a) * x * 0.5), 0, 255).astype(np.uint8)
    if kind == "blocks":
        block = int(rng.integers(1, 17))
        small = rng.integers(0, 256, (-(-height // block), -(-width // block), 3), dtype=np.uint8)
        return np.repeat(np.repeat(small, block, axis=0), block, axis=1)[:height, :width].copy()
    raise ValueError(kind)


@st.composite
def images(draw, max_side: int = 300, min_side: int = 1, kinds=CONTENT_KINDS) -> np.ndarray:
    """``uint8`` ``(H, W, 3)`` images with ``min_side <= H, W <= max_side`` (odd, non-square, 1x1)."""
    height = draw(st.integers(min_side, max_side))
    width = draw(st.integers(min_side, max_side))
    kind = draw(st.sampled_from(kinds))
    seed = draw(st.integers(0, 2**32 - 1))
    return make_image(height, width, kind, seed)


def levels(name: str):
    """A level of distortion ``name``: any value of its paper grid, or any valid value between.

    ``between`` spans the grid's own range (not the full valid range), so cost stays bounded.
    """
    spec = DISTORTIONS[name]
    low, high = min(spec.levels), max(spec.levels)
    if spec.integer:
        between = st.integers(int(low), int(high))
    else:
        between = st.floats(low, high, allow_nan=False, allow_infinity=False)
    return st.one_of(st.sampled_from(spec.levels), between)


seeds = st.integers(0, 2**63 - 1)


def thorough() -> bool:
    """True under the ``thorough`` hypothesis profile (more shared images in the slow checks)."""
    return settings.get_current_profile_name() == "thorough"
