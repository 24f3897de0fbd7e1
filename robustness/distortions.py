"""The five image-quality distortions of Dodge & Karam (2016) as pure functions.

Source: S. Dodge and L. Karam, "Understanding How Image Quality Affects Deep Neural Networks",
QoMEX 2016, arXiv:1604.04004, Section III ("Distortions") and Table I's level grids.

Every function takes and returns a ``numpy.ndarray`` of dtype ``uint8`` and shape ``(H, W, 3)``
(RGB, values 0-255) and never modifies its input. Float intermediate results are converted back by
rounding to nearest (``numpy.rint``, ties to even) and clipping to [0, 255]; nothing truncates or wraps.

The public entry point is :func:`distort`; :data:`DISTORTIONS` maps each name to its
:class:`Distortion` spec (parameter, unit, the paper's levels, valid range).
"""

from __future__ import annotations

import io
import math
import numbers
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Callable, Mapping

import numpy as np
from PIL import Image
from scipy import ndimage

__all__ = [
    "Distortion",
    "DISTORTIONS",
    "distort",
    "gaussian_blur",
    "gaussian_kernel",
    "gaussian_noise",
    "jpeg",
    "jpeg2000",
    "jpeg2000_with_psnr",
    "contrast",
    "psnr",
    "check_image",
]

#: Bumped whenever a distortion's output for the same input, level and seed changes. Caches of
#: predictions key on it.
DISTORTION_CODE_VERSION = "1"


def check_image(image: np.ndarray, name: str = "image") -> np.ndarray:
    """Validate a distortion input and return it unchanged.

    Args:
        image: array of dtype ``uint8`` and shape ``(H, W, 3)`` with ``H, W >= 1`` (RGB, 0-255).
        name: what to call the array in the error message.

    Raises:
        ValueError: if ``image`` is not a numpy array, not ``uint8``, or not of shape ``(H, W, 3)``.
    """
    if not isinstance(image, np.ndarray):
        raise ValueError(f"{name} must be a numpy.ndarray of dtype uint8, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ValueError(f"{name} must have dtype uint8 (RGB 0-255), got dtype {image.dtype}")
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"{name} must have shape (H, W, 3) with H, W >= 1, got shape {image.shape}")
    return image


def _to_uint8(values: np.ndarray) -> np.ndarray:
    """Round to nearest (ties to even) and clip to [0, 255]; the project's only float->uint8 path."""
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def psnr(reference: np.ndarray, distorted: np.ndarray, peak: float = 255.0) -> float:
    """Peak signal-to-noise ratio in dB, ``10 log10(peak^2 / MSE)`` over all pixels and channels.

    Args:
        reference, distorted: arrays of the same shape (any numeric dtype; 0-255 scale for uint8).
        peak: the maximum possible value (255 for 8-bit images).

    Returns:
        PSNR in dB as a float; ``math.inf`` when the arrays are identical.

    Raises:
        ValueError: if the shapes differ.
    """
    if reference.shape != distorted.shape:
        raise ValueError(f"PSNR needs arrays of the same shape, got {reference.shape} and {distorted.shape}")
    mse = np.mean((reference.astype(np.float64) - distorted.astype(np.float64)) ** 2)
    if mse == 0:
        return math.inf
    return float(10.0 * math.log10(peak**2 / mse))


# --------------------------------------------------------------------------------------------- blur


def gaussian_kernel(sigma: float) -> np.ndarray:
    """The 1-D blur kernel: Gaussian weights sampled at integer offsets, normalised to sum 1.

    The window covers +-2 sigma (the paper's "window size of 4 sigma"): radius ``r = ceil(2 sigma)``,
    so the window has the odd length ``2r + 1`` (``4 sigma + 1`` taps for integer sigma) and is
    centred on the pixel. Weights are ``exp(-x^2 / (2 sigma^2))`` for ``x = -r..r``, divided by their
    sum. Because the tails beyond 2 sigma are cut, the kernel's own standard deviation is about
    0.88 sigma, not sigma.

    Args:
        sigma: standard deviation in pixels, > 0.

    Returns:
        float64 array of shape ``(2 * ceil(2 sigma) + 1,)`` summing to 1.

    Raises:
        ValueError: if sigma is not a finite number > 0.
    """
    if not (isinstance(sigma, numbers.Real) and math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"blur sigma must be a finite number > 0, got {sigma!r}")
    radius = math.ceil(2.0 * sigma)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    weights = np.exp(-(x**2) / (2.0 * sigma**2))
    return weights / weights.sum()


def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur with exact Gaussian weights (Dodge & Karam 2016, Sec. III-A).

    Separable filtering with :func:`gaussian_kernel` along rows, then columns, of each channel
    independently, computed in float32 with :func:`scipy.ndimage.correlate1d`. Borders use
    scipy's ``mode="reflect"`` (half-sample symmetric: ``d c b a | a b c d | d c b a``), which also
    covers windows larger than the image. ``sigma == 0`` returns a copy of the input.

    Args:
        image: ``uint8`` array ``(H, W, 3)``, RGB 0-255.
        sigma: standard deviation in pixels, >= 0.

    Returns:
        ``uint8`` array of the same shape.

    Raises:
        ValueError: on a bad image or a negative / non-finite sigma.
    """
    check_image(image)
    if sigma == 0:
        return image.copy()
    kernel = gaussian_kernel(sigma).astype(np.float32)
    out = image.astype(np.float32)
    out = ndimage.correlate1d(out, kernel, axis=0, mode="reflect")
    out = ndimage.correlate1d(out, kernel, axis=1, mode="reflect")
    return _to_uint8(out)


# -------------------------------------------------------------------------------------------- noise


def gaussian_noise(image: np.ndarray, std: float, seed: int | np.random.SeedSequence = 0) -> np.ndarray:
    """Additive white Gaussian noise (Dodge & Karam 2016, Sec. III-B).

    ``out = clip(rint(image + N(0, std^2)), 0, 255)``, one independent normal draw per pixel and
    channel from ``numpy.random.default_rng(seed).normal(0.0, std, image.shape)`` (float64). The
    global numpy and torch random states are never touched; the same seed gives the same noise.

    Args:
        image: ``uint8`` array ``(H, W, 3)``, RGB 0-255.
        std: noise standard deviation on the 0-255 scale, >= 0 (0 returns a copy).
        seed: anything :func:`numpy.random.default_rng` accepts (int >= 0 or SeedSequence).

    Returns:
        ``uint8`` array of the same shape.
    """
    check_image(image)
    rng = np.random.default_rng(seed)
    noise = rng.normal(0.0, std, image.shape) if std > 0 else 0.0
    return _to_uint8(image.astype(np.float64) + noise)


# ---------------------------------------------------------------------------------------- contrast


def contrast(image: np.ndarray, weight: float) -> np.ndarray:
    """Contrast reduction by blending toward mid-grey (Dodge & Karam 2016, Sec. III-E).

    ``out = rint((1 - w) * image + w * 128)`` in float64; ``w = 0`` is the identity and ``w = 1``
    gives an image of constant 128.

    Args:
        image: ``uint8`` array ``(H, W, 3)``, RGB 0-255.
        weight: blend weight ``w`` toward grey, in [0, 1].

    Returns:
        ``uint8`` array of the same shape.
    """
    check_image(image)
    return _to_uint8((1.0 - weight) * image.astype(np.float64) + weight * 128.0)


# --------------------------------------------------------------------------------------------- JPEG


def jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    """JPEG compression round trip through Pillow's libjpeg (Dodge & Karam 2016, Sec. III-C).

    Encodes with ``Image.save(format="JPEG", quality=quality, subsampling=2)`` (4:2:0 chroma
    subsampling, libjpeg's default, baseline, standard IJG tables scaled by quality) and decodes
    back to RGB. Note: libjpeg's quality scaling clamps every table entry to 255 for baseline
    JPEG, so qualities 1, 2 and 3 produce identical tables and identical output.

    Args:
        image: ``uint8`` array ``(H, W, 3)``, RGB 0-255.
        quality: JPEG quality, an integer in [1, 100].

    Returns:
        ``uint8`` array of the same shape (the decoded image).
    """
    check_image(image)
    buffer = io.BytesIO()
    Image.fromarray(image, mode="RGB").save(buffer, format="JPEG", quality=int(quality), subsampling=2)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return np.asarray(decoded.convert("RGB"), dtype=np.uint8).copy()


# ---------------------------------------------------------------------------------------- JPEG 2000

#: Achieved PSNR must land within this many dB of the target (on natural images).
JPEG2000_PSNR_TOLERANCE_DB = 0.5
_JPEG2000_MAX_ENCODES = 8


def _jpeg2000_round_trip(image: np.ndarray, **options) -> tuple[np.ndarray, int]:
    height, width = image.shape[:2]
    # OpenJPEG needs every dimension >= 2**(resolutions - 1); Pillow's default is 6 resolutions.
    resolutions = max(1, min(6, int(math.log2(min(height, width))) + 1))
    buffer = io.BytesIO()
    Image.fromarray(image, mode="RGB").save(
        buffer, format="JPEG2000", irreversible=True, num_resolutions=resolutions, **options
    )
    size = buffer.tell()
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return np.asarray(decoded.convert("RGB"), dtype=np.uint8).copy(), size


def jpeg2000_with_psnr(image: np.ndarray, target_psnr: float) -> tuple[np.ndarray, float, int]:
    """JPEG 2000 round trip at a target PSNR; returns ``(decoded, achieved_psnr_db, encodes)``.

    OpenJPEG through Pillow, always lossy (irreversible 9/7 wavelet, one quality layer). The first
    encode asks OpenJPEG for the target directly (``quality_mode="dB"``); OpenJPEG's own PSNR
    allocation misses low targets by up to about 3 dB, so while the achieved PSNR is more than
    :data:`JPEG2000_PSNR_TOLERANCE_DB` off, the compression rate (``quality_mode="rates"``) is
    searched: PSNR is close to linear in log(rate), so each new rate is the secant (at first a
    6 dB-per-halving slope) step through the best bracketing encodes. At most 8 encodes; the
    encode closest to the target is returned. Constant images compress to within +-1 of the
    input and may come back unchanged (their PSNR is then ``inf``).

    Args:
        image: ``uint8`` array ``(H, W, 3)``, RGB 0-255.
        target_psnr: PSNR in dB against ``image``.

    Returns:
        ``(decoded uint8 (H, W, 3), achieved PSNR in dB, number of encodes made)``.
    """
    check_image(image)
    raw_bytes = image.size
    decoded, size = _jpeg2000_round_trip(image, quality_mode="dB", quality_layers=[float(target_psnr)])
    achieved = psnr(image, decoded)
    best = (abs(achieved - target_psnr), decoded, achieved)
    encodes = 1
    # Samples of (log2 rate, psnr); rate = compression ratio raw / coded.
    samples = [(math.log2(max(raw_bytes / max(size, 1), 1.0)), achieved)]
    while best[0] > JPEG2000_PSNR_TOLERANCE_DB and math.isfinite(achieved) and encodes < _JPEG2000_MAX_ENCODES:
        below = [s for s in samples if s[1] < target_psnr]
        above = [s for s in samples if s[1] >= target_psnr]
        if below and above:
            lo = min(below, key=lambda s: target_psnr - s[1])  # highest rate still below target
            hi = min(above, key=lambda s: s[1] - target_psnr)
            if hi[1] - lo[1] > 1e-6:
                t = (target_psnr - lo[1]) / (hi[1] - lo[1])
                log_rate = lo[0] + t * (hi[0] - lo[0])
            else:
                log_rate = 0.5 * (lo[0] + hi[0])
        else:
            anchor = samples[-1]
            # About 6 dB of PSNR per halving of the rate (1 bit more per sample).
            log_rate = anchor[0] + (anchor[1] - target_psnr) / 6.0
        log_rate = min(max(log_rate, 0.05), 16.0)
        decoded, _ = _jpeg2000_round_trip(image, quality_mode="rates", quality_layers=[2.0**log_rate])
        achieved = psnr(image, decoded)
        encodes += 1
        samples.append((log_rate, achieved))
        if abs(achieved - target_psnr) < best[0]:
            best = (abs(achieved - target_psnr), decoded, achieved)
    return best[1], best[2], encodes


def jpeg2000(image: np.ndarray, target_psnr: float) -> np.ndarray:
    """JPEG 2000 compression to a target PSNR (Dodge & Karam 2016, Sec. III-D).

    See :func:`jpeg2000_with_psnr` for the rate search; on natural images the achieved PSNR lands
    within 0.5 dB of ``target_psnr``.

    Args:
        image: ``uint8`` array ``(H, W, 3)``, RGB 0-255.
        target_psnr: target PSNR in dB, in [15, 60].

    Returns:
        ``uint8`` array of the same shape (the decoded image).
    """
    return jpeg2000_with_psnr(image, target_psnr)[0]


# ------------------------------------------------------------------------------------------ registry


@dataclass(frozen=True)
class Distortion:
    """Specification of one distortion.

    Attributes:
        name: registry key, also the pytest marker (``blur``, ``noise``, ...).
        parameter: what the level means (``sigma``, ``std``, ``quality``, ``psnr``, ``weight``).
        unit: the level's unit (``px``, ``0-255``, ``quality``, ``dB``, ``fraction``).
        levels: the paper's grid (Dodge & Karam 2016), mildest first.
        minimum, maximum: the valid level range (inclusive).
        integer: whether levels must be integers (JPEG quality).
        stochastic: whether the output depends on the seed.
        function: ``function(image, level, seed) -> image``.
        id_format: format for readable level ids, e.g. ``"s{:g}"`` gives ``blur-s3``.
        description: one-line definition.
    """

    name: str
    parameter: str
    unit: str
    levels: tuple[float, ...]
    minimum: float
    maximum: float
    function: Callable[[np.ndarray, float, object], np.ndarray] = field(repr=False)
    id_format: str = "{:g}"
    integer: bool = False
    stochastic: bool = False
    description: str = ""

    def check_level(self, level: float) -> float:
        """Return ``level`` if valid for this distortion, else raise ``ValueError`` naming it."""
        if isinstance(level, bool) or not isinstance(level, numbers.Real) or not math.isfinite(level):
            raise ValueError(f"{self.name} level must be a finite number ({self.parameter}), got {level!r}")
        if self.integer and level != int(level):
            raise ValueError(f"{self.name} level ({self.parameter}) must be an integer, got {level!r}")
        if not self.minimum <= level <= self.maximum:
            raise ValueError(
                f"{self.name} level {level!r} is outside the valid {self.parameter} range "
                f"[{self.minimum:g}, {self.maximum:g}] {self.unit}"
            )
        return level

    def level_id(self, level: float) -> str:
        """Readable id such as ``blur-s3``, ``noise-50``, ``jpeg-q10``, ``jpeg2000-30db``, ``contrast-0.8``."""
        return f"{self.name}-{self.id_format.format(level)}"

    def __call__(self, image: np.ndarray, level: float, seed: int = 0) -> np.ndarray:
        return distort(image, self.name, level, seed=seed)


def _levels(start: float, stop: float, step: float) -> tuple[float, ...]:
    count = int(round((stop - start) / step)) + 1
    values = (round(start + i * step, 10) for i in range(count))
    return tuple(int(v) if float(v).is_integer() and step >= 1 else float(v) for v in values)


_REGISTRY: dict[str, Distortion] = {
    d.name: d
    for d in (
        Distortion(
            "blur", "sigma", "px", _levels(1, 9, 1), 0.0, 100.0,
            lambda image, level, seed: gaussian_blur(image, level), id_format="s{:g}",
            description="Gaussian blur, exact weights over a +-2 sigma window, reflect borders",
        ),
        Distortion(
            "noise", "std", "0-255", _levels(10, 100, 10), 0.0, 255.0,
            lambda image, level, seed: gaussian_noise(image, level, seed), stochastic=True,
            description="additive N(0, std^2) per pixel and channel, rounded and clipped",
        ),
        Distortion(
            "jpeg", "quality", "quality", _levels(2, 20, 2), 1, 100,
            lambda image, level, seed: jpeg(image, int(level)), id_format="q{:g}", integer=True,
            description="Pillow/libjpeg round trip at that quality, 4:2:0",
        ),
        Distortion(
            "jpeg2000", "psnr", "dB", _levels(20, 40, 2), 15.0, 60.0,
            lambda image, level, seed: jpeg2000(image, level), id_format="{:g}db",
            description="OpenJPEG (Pillow) round trip searched to the target PSNR",
        ),
        Distortion(
            "contrast", "weight", "fraction", _levels(0.0, 1.0, 0.1), 0.0, 1.0,
            lambda image, level, seed: contrast(image, level),
            description="blend toward mid-grey: (1 - w) * image + w * 128",
        ),
    )
}

#: Read-only mapping from distortion name to its :class:`Distortion` spec, in the paper's order.
DISTORTIONS: Mapping[str, Distortion] = MappingProxyType(_REGISTRY)


def get_distortion(name: str) -> Distortion:
    """Return the spec for ``name``; raise ``ValueError`` listing the known names otherwise."""
    try:
        return DISTORTIONS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown distortion {name!r}; known: {', '.join(DISTORTIONS)}") from None


def distort(image: np.ndarray, distortion: str, level: float, *, seed: int = 0) -> np.ndarray:
    """Apply a distortion at a level: the library's one public entry point for distortions.

    Args:
        image: ``uint8`` array of shape ``(H, W, 3)``, RGB, 0-255. Not modified.
        distortion: a name in :data:`DISTORTIONS` (``blur``, ``noise``, ``jpeg``, ``jpeg2000``,
            ``contrast``).
        level: the distortion's parameter in its unit (see ``DISTORTIONS[name].parameter/unit``),
            within its valid range.
        seed: seed for stochastic distortions (``noise``); ignored by the others. Accepts what
            :func:`numpy.random.default_rng` accepts.

    Returns:
        ``uint8`` array of the same shape as ``image``.

    Raises:
        ValueError: on a wrong dtype or shape, an unknown distortion name, or a level outside the
            distortion's valid range; the message names the offending value.
    """
    spec = get_distortion(distortion)
    check_image(image)
    spec.check_level(level)
    return spec.function(image, level, seed)
