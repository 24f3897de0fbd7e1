"""Each distortion against an independent implementation, with the tolerance stated per test."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image
from scipy import ndimage
from strategies import images, levels, seeds
from torchvision.transforms.v2 import functional as tvf

from robustness import DISTORTIONS, distort, psnr


def blur_radius(sigma: float) -> int:
    return math.ceil(2 * sigma)


@given(image=images(max_side=160), sigma=levels("blur"))
def test_blur_matches_scipy_gaussian_filter(image, sigma):
    """scipy.ndimage.gaussian_filter, same sigma and +-ceil(2 sigma) window, reflect borders.

    Tolerance: at most 1 grey level anywhere (our intermediate is float32, scipy's float64, so a
    value within ~1e-5 of a .5 tie may round the other way), and on at most 0.1% of values.
    """
    radius = blur_radius(sigma)
    reference = ndimage.gaussian_filter(
        image.astype(np.float64), sigma=(sigma, sigma, 0), radius=(radius, radius, 0), mode="reflect"
    )
    reference = np.clip(np.rint(reference), 0, 255)
    diff = np.abs(distort(image, "blur", sigma).astype(np.float64) - reference)
    assert diff.max() <= 1
    assert np.mean(diff > 0) <= 1e-3


@given(image=images(min_side=40, max_side=160), sigma=st.sampled_from(DISTORTIONS["blur"].levels))
def test_blur_matches_torchvision_away_from_the_borders(image, sigma):
    """torchvision's gaussian_blur with kernel 2*ceil(2 sigma)+1 and the same sigma.

    torchvision pads with 'reflect' (d c b | a b c d), we with scipy's half-sample 'reflect'
    (c b a | a b c d), so only pixels at least one radius from every border are compared.
    Tolerance: at most 1 grey level (float32 arithmetic on both sides) on at most 0.1% of values.
    """
    radius = blur_radius(sigma)
    height, width = image.shape[:2]
    if min(height, width) <= 2 * radius + 1:  # torchvision cannot reflect-pad beyond the image
        return
    tensor = torch.from_numpy(image).permute(2, 0, 1)
    reference = tvf.gaussian_blur(tensor, [2 * radius + 1] * 2, [float(sigma)] * 2).permute(1, 2, 0).numpy()
    inner = np.s_[radius : height - radius, radius : width - radius]
    diff = np.abs(distort(image, "blur", sigma)[inner].astype(int) - reference[inner].astype(int))
    assert diff.max() <= 1
    assert np.mean(diff > 0) <= 1e-3


@given(image=images(max_side=200), quality=levels("jpeg"))
def test_jpeg_is_byte_identical_to_pillows_encoder(image, quality):
    """Pillow's own JPEG encoder at the same quality and 4:2:0 subsampling, decoded: no tolerance."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=int(quality), subsampling="4:2:0")
    buffer.seek(0)
    reference = np.asarray(Image.open(buffer).convert("RGB"))
    np.testing.assert_array_equal(distort(image, "jpeg", quality), reference)


@given(image=images(max_side=200), std=levels("noise"), seed=seeds)
def test_noise_matches_the_formula_with_the_same_generator(image, std, seed):
    """clip(rint(image + default_rng(seed).normal(0, std, shape)), 0, 255): no tolerance."""
    noise = np.random.default_rng(seed).normal(0.0, std, image.shape)
    reference = np.clip(np.rint(image.astype(np.float64) + noise), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(distort(image, "noise", std, seed=seed), reference)


def test_noise_accepts_the_evaluation_seed_sequence():
    """The engine passes a SeedSequence; it must behave like any other seed (reproducible)."""
    image = np.full((8, 8, 3), 128, np.uint8)
    seed = np.random.SeedSequence([0, 1, 2, 3])
    np.testing.assert_array_equal(
        distort(image, "noise", 30, seed=seed), distort(image, "noise", 30, seed=np.random.SeedSequence([0, 1, 2, 3]))
    )


@given(image=images(max_side=200), weight=levels("contrast"))
def test_contrast_matches_the_formula(image, weight):
    """rint((1 - w) * image + w * 128) computed per pixel in float64: no tolerance."""
    reference = np.clip(np.rint((1 - weight) * image.astype(np.float64) + weight * 128), 0, 255)
    np.testing.assert_array_equal(distort(image, "contrast", weight), reference.astype(np.uint8))


def independent_psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR from exact integer squared errors (Python ints, no numpy float reductions)."""
    total = sum(int(d) * int(d) for d in (a.astype(np.int64) - b.astype(np.int64)).ravel())
    if total == 0:
        return math.inf
    return 10 * math.log10(255**2 * a.size / total)


@given(a=images(max_side=24), b_seed=seeds)
def test_psnr_matches_an_independent_computation(a, b_seed):
    """Tolerance 1e-9 dB (both double precision)."""
    b = np.random.default_rng(b_seed).integers(0, 256, a.shape, dtype=np.uint8)
    assert psnr(a, b) == pytest.approx(independent_psnr(a, b), abs=1e-9)
    assert psnr(a, a) == math.inf


def test_psnr_known_values():
    """An error of 1 everywhere is 20 log10(255) = 48.1308 dB; of 255 everywhere, 0 dB."""
    black = np.zeros((5, 7, 3), np.uint8)
    assert psnr(black, black + 1) == pytest.approx(20 * math.log10(255), abs=1e-12)
    assert psnr(black, black + 255) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError):
        psnr(black, black[:4])


@given(image=images(max_side=64, kinds=("random", "gradient", "blocks")), target=levels("jpeg2000"))
def test_jpeg2000_reports_the_psnr_it_achieved(image, target):
    """The PSNR jpeg2000_with_psnr reports is the independent PSNR of what it returns."""
    from robustness.distortions import jpeg2000_with_psnr

    out, achieved, encodes = jpeg2000_with_psnr(image, target)
    assert achieved == pytest.approx(independent_psnr(image, out), abs=1e-9) or achieved == independent_psnr(image, out)
    assert encodes >= 1
    np.testing.assert_array_equal(out, distort(image, "jpeg2000", target))


@pytest.mark.parametrize("name", list(DISTORTIONS))
@given(image=images(max_side=48), data=st.data())
def test_distort_with_info_returns_distorts_image_and_its_independent_psnr(name, image, data):
    """Same image as ``distort``; ``achieved_psnr`` equals the exact integer PSNR (1e-9 dB); only
    JPEG 2000 has a target, a tolerance verdict (|achieved - target| <= 0.5 dB) and encodes."""
    from robustness.distortions import JPEG2000_PSNR_TOLERANCE_DB, distort_with_info

    level = data.draw(levels(name), label="level")
    seed = data.draw(seeds, label="seed")
    out, info = distort_with_info(image, name, level, seed=seed)
    np.testing.assert_array_equal(out, distort(image, name, level, seed=seed))
    exact = independent_psnr(image, out)
    assert info.achieved_psnr == exact or info.achieved_psnr == pytest.approx(exact, abs=1e-9)
    if name == "jpeg2000":
        assert info.target_psnr == level and info.encodes >= 1
        assert info.within_tolerance == (abs(info.achieved_psnr - level) <= JPEG2000_PSNR_TOLERANCE_DB)
    else:
        assert info.target_psnr is None and info.within_tolerance and info.encodes == 0


def test_distort_with_info_rejects_what_distort_rejects():
    from robustness.distortions import distort_with_info

    image = np.zeros((4, 4, 3), np.uint8)
    with pytest.raises(ValueError, match="unknown distortion"):
        distort_with_info(image, "sharpen", 1)
    with pytest.raises(ValueError, match="outside the valid range"):
        distort_with_info(image, "jpeg2000", 80)
    with pytest.raises(ValueError, match="dtype uint8"):
        distort_with_info(image.astype(np.float32), "jpeg2000", 30)
