"""Checks for your own distortion: the invariants every distortion of this package keeps.

:func:`check_distortion` runs them on a :class:`robustness.distortions.Distortion` (a built-in or one
added with :func:`robustness.register_distortion`) and raises ``AssertionError`` naming the first
broken one, so a single line in a test checks a user's distortion the way the package's own property
tests check the built-ins::

    from robustness.testing import check_distortion

    def test_my_distortion():
        check_distortion(my_spec)

Needs numpy only (no torch, no pytest, no hypothesis).
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Sequence

import numpy as np

from .distortions import Distortion, distort, get_distortion

__all__ = ["check_distortion", "AWKWARD_SIZES"]

#: Image sizes (H, W) every distortion must handle: 1x1, single rows and columns, odd, non-square,
#: 8/16-pixel block sizes +-1 (JPEG), and larger than a typical filter window.
AWKWARD_SIZES = ((1, 1), (1, 9), (9, 1), (2, 3), (7, 8), (15, 17), (16, 16), (33, 5), (48, 40))


def _test_images(sizes: Iterable[tuple[int, int]], seed: int) -> list[np.ndarray]:
    """Random, gradient and flat ``uint8 (H, W, 3)`` images of each size (seeded, so the check repeats)."""
    rng = np.random.default_rng(seed)
    out = []
    for k, (height, width) in enumerate(sizes):
        if k % 3 == 0:
            image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        elif k % 3 == 1:
            ramp = np.linspace(0, 255, height * width * 3).reshape(height, width, 3)
            image = np.rint(ramp).astype(np.uint8)
        else:
            image = np.full((height, width, 3), rng.integers(0, 256, 3, dtype=np.uint8), dtype=np.uint8)
        out.append(image)
    return out


def _levels_to_check(spec: Distortion, extra: Sequence[float]) -> list[float]:
    """Range ends, the default grid, a level between two grid levels, the identity level and ``extra``."""
    levels = [spec.minimum, spec.maximum, *spec.levels, *extra]
    if len(spec.levels) >= 2:
        low, high = sorted(spec.levels[:2])
        middle = (low + high) / 2
        levels.append(math.floor(middle) if spec.integer else middle)
    if spec.identity is not None:
        levels.append(spec.identity)
    return list(dict.fromkeys(int(v) if spec.integer else v for v in levels))


def _out_of_range(spec: Distortion) -> list[object]:
    """Levels :meth:`Distortion.check_level` must refuse: below, above, NaN, infinity, a non-number,
    a fraction for an integer distortion."""
    width = spec.maximum - spec.minimum
    bad: list[object] = [spec.minimum - max(1.0, width), spec.maximum + max(1.0, width), math.nan, math.inf, "1", None]
    if spec.integer:
        bad.append(spec.minimum + 0.5)
    return bad


def _random_states() -> tuple:
    numpy_state = np.random.get_state()
    return (numpy_state[0], numpy_state[1].tobytes(), *numpy_state[2:]), random.getstate()


def check_distortion(
    spec: Distortion | str,
    *,
    images: Sequence[np.ndarray] | None = None,
    levels: Sequence[float] = (),
    seeds: Sequence[int] = (0, 1, 2**40 + 7),
) -> None:
    """Check the invariants every distortion keeps; raise ``AssertionError`` naming the first broken one.

    For every image (default: random, gradient and flat images of :data:`AWKWARD_SIZES`) and every
    level (the range's ends, the default grid, one level between two grid levels, the identity level
    and ``levels``), through :func:`robustness.distort` (so also the checks it makes):

    1. shape and dtype kept: the result is a new, writable ``uint8`` array of the input's shape that
       shares no memory with it, and the input is left unchanged;
    2. deterministic for a seed: the same ``(image, level, seed)`` gives the same result, for an
       ``int`` seed and for a :class:`numpy.random.SeedSequence` (what the engine passes); the global
       numpy and Python random states are left untouched; a distortion that is not ``stochastic``
       gives the same result for every seed;
    3. levels in range accepted, levels out of range refused: the range's ends work, and
       :meth:`~robustness.distortions.Distortion.check_level` raises ``ValueError`` below the minimum,
       above the maximum, for NaN, infinity, a non-number, and a fraction for ``integer`` distortions;
       every level id reads back as its level (:meth:`~robustness.distortions.Distortion.level_from_id`);
    4. identity: at ``spec.identity`` (when declared) the result equals the input.

    Args:
        spec: the distortion or its registered name. It must be registered (:func:`distort` looks
            the name up), since that is how the engine and the gate call it.
        images: ``uint8 (H, W, 3)`` images to use instead of the default ones.
        levels: more levels to check, in range.
        seeds: integer seeds to check determinism with (each also as a ``SeedSequence``).

    Raises:
        AssertionError: an invariant does not hold (also: the function raised ``ValueError`` on a valid
            level, or returned anything but a ``uint8`` array of the input's shape); the message names
            the distortion, the invariant, the level and the image shape.
        ValueError: ``spec`` is not registered (:func:`robustness.distortions.get_distortion`).
    """
    name = spec if isinstance(spec, str) else spec.name
    registered = get_distortion(name)
    assert isinstance(spec, str) or registered is spec, (
        f"{name}: the Distortion given is not the one registered under that name"
    )
    spec = registered
    images = list(images) if images is not None else _test_images(AWKWARD_SIZES, seed=len(name))
    chosen = _levels_to_check(spec, levels)

    for level in chosen:  # 3. in range accepted; ids read back
        spec.check_level(level)
        back = spec.level_from_id(spec.level_id(level))
        assert back == level, f"{name}: level id {spec.level_id(level)!r} reads back as {back!r}, not {level!r}"
    for bad in _out_of_range(spec):  # 3. out of range refused
        try:
            spec.check_level(bad)
        except ValueError:
            continue
        raise AssertionError(f"{name}: level {bad!r} is outside {spec.range_text} but was accepted")

    def run(image: np.ndarray, level: float, seed) -> np.ndarray:
        try:
            return distort(image, name, level, seed=seed)
        except ValueError as error:  # e.g. a result of the wrong dtype or shape (distort checks it)
            raise AssertionError(f"{name} level {level!r}, image of shape {image.shape}: {error}") from error

    for image in images:
        where = f"image of shape {image.shape}"
        before = image.copy()
        for level in chosen:
            states = _random_states()
            first = run(image, level, seeds[0])
            assert _random_states() == states, (
                f"{name} level {level!r}, {where}: the global numpy or Python random state changed; draw from "
                "numpy.random.default_rng(seed) instead"
            )
            # 1. shape, dtype, a new array, input intact (distort() already refused a wrong dtype/shape)
            assert first.shape == image.shape and first.dtype == np.uint8, (
                f"{name} level {level!r}, {where}: returned {first.dtype} {first.shape}"
            )
            assert not np.shares_memory(first, image) and first.flags.writeable, (
                f"{name} level {level!r}, {where}: the result shares memory with the input or is read-only; "
                "return a new array (e.g. image.copy())"
            )
            np.testing.assert_array_equal(image, before, err_msg=f"{name} level {level!r}: the input was modified")
            # 2. deterministic for a seed
            for seed in seeds:
                for given in (seed, np.random.SeedSequence(seed)):
                    again = run(image, level, given)
                    twice = run(image, level, given)
                    np.testing.assert_array_equal(
                        again, twice, err_msg=f"{name} level {level!r}, {where}: not deterministic for seed {given!r}"
                    )
                    if not spec.stochastic:
                        np.testing.assert_array_equal(
                            again,
                            first,
                            err_msg=f"{name} level {level!r}, {where}: the result depends on the seed, "
                            "but the distortion is not declared stochastic",
                        )
        if spec.identity is not None:  # 4. identity
            np.testing.assert_array_equal(
                run(image, spec.identity, seeds[0]),
                image,
                err_msg=f"{name}: the identity level {spec.identity!r} changed the {where}",
            )
