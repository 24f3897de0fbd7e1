"""Hypothesis strategies for the distortion tests: images of any size and content, and levels.

Large arrays are built with numpy from a drawn seed (drawing 300x300x3 elements one by one through
hypothesis would be far too slow); the drawn parameters still shrink to small, readable cases.
"""

from __future__ import annotations

import math

import numpy as np
from hypothesis import settings
from hypothesis import strategies as st
from scipy import stats

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

colours = st.tuples(*[st.integers(0, 255)] * 3)
#: Colours with at least one channel saturated at 0 or 255.
saturated_colours = st.tuples(st.integers(0, 255), st.integers(0, 255), st.sampled_from([0, 255])).flatmap(
    lambda c: st.permutations(c).map(tuple)
)


@st.composite
def flat_colour_images(draw, max_side: int = 64) -> np.ndarray:
    """Few-colour images, JPEG 2000's hardest case: one colour, or two split along a row, a column
    or a diagonal, any colours (often with a channel saturated at 0 or 255), 1x1 to max_side."""
    height = draw(st.integers(1, max_side), label="height")
    width = draw(st.integers(1, max_side), label="width")
    first = draw(st.one_of(colours, saturated_colours), label="colour")
    image = np.empty((height, width, 3), dtype=np.uint8)
    image[:] = first
    split = draw(st.sampled_from(["none", "rows", "columns", "diagonal"]), label="split")
    if split != "none":
        second = draw(st.one_of(colours, saturated_colours), label="second colour")
        y, x = np.mgrid[:height, :width]
        if split == "rows":
            mask = y < draw(st.integers(0, height), label="row")
        elif split == "columns":
            mask = x < draw(st.integers(0, width), label="column")
        else:
            mask = y * width + x * height < draw(st.integers(0, 2 * height * width), label="offset")
        image[mask] = second
    return image


def thorough() -> bool:
    """True under the ``thorough`` hypothesis profile (more shared images in the slow checks)."""
    # settings.get_current_profile_name() exists only from hypothesis 6.117: compare the settings in
    # force (settings.default) with the registered profile instead, which every supported version has.
    return settings.default == settings.get_profile("thorough")


# ------------------------------------------------------------------ statistical assertions

#: Family-wise false-alarm rate of each statistical test function, per run, in either profile: the
#: chance that a correct implementation makes one of its statistical assertions fail, on any of
#: the examples hypothesis runs. Split evenly (Bonferroni, valid whatever the dependence between
#: assertions) over ``max_examples`` of the current profile (15 in ``ci``, 300 in ``thorough``:
#: hypothesis stops after that many passing examples) times the assertions per example.
FALSE_ALARM_RATE = 1e-6


#: Explicit ``@example`` cases a statistical test may add on top of ``max_examples``.
EXPLICIT_EXAMPLES = 1


def per_assertion_rate(assertions_per_example: int, rate: float = FALSE_ALARM_RATE) -> float:
    """False-alarm rate allowed to one statistical assertion on one example (Bonferroni).

    ``rate / ((max_examples + EXPLICIT_EXAMPLES) * assertions_per_example)``, with
    ``max_examples`` of the loaded hypothesis profile (``settings.default``), so the family-wise
    rate is at most ``rate`` in every profile.
    """
    return rate / ((settings.default.max_examples + EXPLICIT_EXAMPLES) * assertions_per_example)


def two_sided_z(assertions_per_example: int, rate: float = FALSE_ALARM_RATE) -> float:
    """Normal quantile ``z`` with ``P(|N(0, 1)| > z) = per_assertion_rate(...)``.

    ``scipy.stats.norm.isf(alpha / 2)``: 5.53 in ``ci`` and 6.03 in ``thorough`` for 2 assertions
    per example at the default rate 1e-6.
    """
    return float(stats.norm.isf(per_assertion_rate(assertions_per_example, rate) / 2))


def hoeffding_bound(n: int, assertions_per_example: int, value_range: float = 1.0) -> float:
    """Half-width ``t`` with ``P(|mean - E mean| >= t) <= alpha`` for ``n`` independent values.

    Hoeffding's inequality for values in an interval of width ``value_range``:
    ``P(|mean - E| >= t) <= 2 exp(-2 n t^2 / range^2)``, so ``t = range sqrt(ln(2 / alpha) / (2 n))``
    with ``alpha = per_assertion_rate(assertions_per_example)``. No normal approximation needed.
    """
    alpha = per_assertion_rate(assertions_per_example)
    return value_range * math.sqrt(math.log(2.0 / alpha) / (2.0 * n))
