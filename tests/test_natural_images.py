"""Checks that need natural images: the shared ImageNet validation JPEGs, at full size.

Default (``ci``) profile: 3 images spread over the set (~15 s on 2 cores); ``thorough``: 24.
"""

from __future__ import annotations

import numpy as np
import pytest
from strategies import thorough

from robustness import DISTORTIONS, distort, load_image, psnr
from robustness.distortions import JPEG2000_PSNR_TOLERANCE_DB, jpeg2000_with_psnr


@pytest.fixture(scope="module")
def natural_images(shared_image_paths):
    """A few full-size shared images, evenly spread over the (sorted) set: ``[(name, array)]``."""
    count = 24 if thorough() else 3
    step = max(1, len(shared_image_paths) // count)
    return [(path.name, load_image(path)) for path in shared_image_paths[::step][:count]]


def psnr_by_level(image: np.ndarray, name: str, levels) -> list[float]:
    return [psnr(image, distort(image, name, level, seed=0)) for level in levels]


@pytest.mark.parametrize("name", ["blur", "noise", "jpeg"])
def test_psnr_does_not_rise_as_the_distortion_gets_harsher(natural_images, name):
    """PSNR vs the clean image over the paper grid, mildest to harshest (JPEG: falling quality)."""
    spec = DISTORTIONS[name]
    harsher = sorted(spec.levels, reverse=(name == "jpeg"))
    for file, image in natural_images:
        values = psnr_by_level(image, name, harsher)
        assert all(b <= a for a, b in zip(values, values[1:])), (file, dict(zip(harsher, np.round(values, 2))))


@pytest.fixture(scope="module")
def jpeg2000_runs(natural_images):
    """``{(file, target): (achieved psnr, encodes, lossless)}`` for every paper target 20..40 dB."""
    runs = {}
    for file, image in natural_images:
        for target in DISTORTIONS["jpeg2000"].levels:
            out, achieved, encodes = jpeg2000_with_psnr(image, target)
            runs[file, target] = (achieved, encodes, np.array_equal(out, image))
    return runs


def test_jpeg2000_lands_within_half_a_db_of_every_target(jpeg2000_runs):
    misses = {
        key: round(run[0], 3) for key, run in jpeg2000_runs.items() if abs(run[0] - key[1]) > JPEG2000_PSNR_TOLERANCE_DB
    }
    assert not misses


def test_jpeg2000_psnr_rises_with_the_target_and_is_never_lossless(jpeg2000_runs):
    by_file: dict[str, list[float]] = {}
    for (file, target), (achieved, _, lossless) in sorted(jpeg2000_runs.items()):
        assert not lossless and np.isfinite(achieved), (file, target)
        by_file.setdefault(file, []).append(achieved)
    for file, values in by_file.items():
        assert all(b > a for a, b in zip(values, values[1:])), (file, values)


def test_jpeg2000_rate_search_needs_at_most_three_encodes_on_average(jpeg2000_runs):
    encodes = [run[1] for run in jpeg2000_runs.values()]
    assert np.mean(encodes) <= 3, np.mean(encodes)
