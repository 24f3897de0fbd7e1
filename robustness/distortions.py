"""The five image-quality distortions of Dodge & Karam (2016) as pure functions.

Source: S. Dodge and L. Karam, "Understanding How Image Quality Affects Deep Neural Networks",
QoMEX 2016, arXiv:1604.04004, Section III ("Distortions") and Table I's level grids.

Every function takes and returns a ``numpy.ndarray`` of dtype ``uint8`` and shape ``(H, W, 3)``
(RGB, values 0-255) and never modifies its input. Float intermediate results are converted back by
rounding to nearest (``numpy.rint``, ties to even) and clipping to [0, 255]; nothing truncates or wraps.

The public entry point is :func:`distort`; :data:`DISTORTIONS` maps each name to its
:class:`Distortion` spec (parameter, unit, the paper's levels, valid range).
:func:`register_distortion` adds a user's own distortion to that registry (the contract it must keep is
in its docstring; :func:`robustness.testing.check_distortion` checks it).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import io
import keyword
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np
from PIL import Image

from . import names as _names
from ._checks import is_number

__all__ = [
    "Distortion",
    "DISTORTIONS",
    "DISTORTION_CODE_VERSION",
    "register_distortion",
    "unregister_distortion",
    "get_distortion",
    "format_level",
    "distort",
    "distort_with_info",
    "DistortionInfo",
    "CODEC_DISTORTIONS",
    "codec_versions",
    "encode",
    "decode",
    "codec_round_trip",
    "jpeg_encode",
    "jpeg2000_encode",
    "JPEG2000_PSNR_TOLERANCE_DB",
    "gaussian_blur",
    "gaussian_kernel",
    "gaussian_noise",
    "jpeg",
    "jpeg2000",
    "jpeg2000_with_psnr",
    "jpeg2000_resolutions",
    "contrast",
    "psnr",
    "check_image",
]

#: Bumped whenever a built-in distortion's output for the same input, level and seed changes. Caches
#: of predictions key on it (a registered distortion keys on its own ``code_version`` instead).
DISTORTION_CODE_VERSION = "3"  # 3: JPEG 2000 on flat colour (past lossless encodes, 1-2 levels, dB requests)


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


def check_seed(seed) -> None:
    """Raise ``ValueError`` unless ``seed`` is an integer >= 0 or a :class:`numpy.random.SeedSequence`."""
    if isinstance(seed, np.random.SeedSequence):
        return
    if not is_number(seed, integer=True) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0 or a numpy SeedSequence, got {seed!r}")


def _to_uint8(values: np.ndarray) -> np.ndarray:
    """Round to nearest (ties to even) and clip to [0, 255]; the project's only float->uint8 path.

    ``values`` (any float array) is rounded and clipped *in place* when it is a float array, to
    save two full-image allocations; callers pass temporaries only.
    """
    if values.dtype.kind == "f":
        np.rint(values, out=values)
        np.clip(values, 0, 255, out=values)
        return values.astype(np.uint8)
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def _rgb_array(decoded: Image.Image) -> np.ndarray:
    """A decoded Pillow image as a fresh, writable ``uint8`` ``(H, W, 3)`` RGB array."""
    if decoded.mode != "RGB":
        decoded = decoded.convert("RGB")
    return np.array(decoded, dtype=np.uint8)


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
    sum. Because the tails beyond 2 sigma are cut, the kernel's own standard deviation is smaller
    than sigma: 0.96 sigma at sigma 1, 0.91 at 3, 0.89 at 9, tending to 0.88 sigma (the standard
    deviation of a continuous Gaussian cut at +-2 sigma) for large sigma.

    Args:
        sigma: standard deviation in pixels, > 0.

    Returns:
        float64 array of shape ``(2 * ceil(2 sigma) + 1,)`` summing to 1.

    Raises:
        ValueError: if sigma is not a finite number > 0.
    """
    if not (is_number(sigma) and math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"blur sigma must be a finite number > 0, got {sigma!r}")
    radius = math.ceil(2.0 * sigma)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    with np.errstate(over="ignore"):  # (x / sigma) first: no 0/0 for a subnormal sigma; inf -> weight 0
        weights = np.exp(-0.5 * (x / sigma) ** 2)
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
    from scipy import ndimage  # here, not at the top: scipy takes ~0.5 s to import and only blur needs it

    check_image(image)
    if sigma == 0:
        return image.copy()
    kernel = gaussian_kernel(sigma)
    # scipy accumulates in float64 internally; float32 storage of the intermediate (max 255, 24-bit
    # mantissa) changes nothing visible after rounding and halves memory traffic.
    out = ndimage.correlate1d(image, kernel, axis=0, mode="reflect", output=np.float32)
    ndimage.correlate1d(out, kernel, axis=1, mode="reflect", output=out)
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
    check_seed(seed)
    if std == 0:
        return image.copy()
    rng = np.random.default_rng(seed)
    # Bit-identical to ``image + rng.normal(0.0, std, image.shape)``: numpy's normal() is
    # ``loc + scale * standard_normal()``; done in place to avoid temporaries.
    values = rng.standard_normal(image.shape)
    values *= std
    values += image
    return _to_uint8(values)


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
    # The blend is per value, so a 256-entry lookup table gives bit-identical results to computing
    # it per pixel in float64, at a fraction of the cost.
    table = _to_uint8((1.0 - weight) * np.arange(256, dtype=np.float64) + weight * 128.0)
    return table[image]


# --------------------------------------------------------------------------------------------- JPEG


def decode(codestream: bytes) -> np.ndarray:
    """Decode a JPEG or JPEG 2000 stream made by :func:`encode` back to RGB.

    The decoding half of the codec distortions: ``jpeg(image, q) == decode(jpeg_encode(image, q))``
    and ``jpeg2000(image, t) == decode(jpeg2000_encode(image, t)[0])``, bit for bit (the same bytes
    through the same decoder, Pillow's libjpeg / OpenJPEG). Only those two formats are opened.

    Args:
        codestream: the encoded bytes (a JPEG file, or a JP2 file holding a JPEG 2000 codestream).

    Returns:
        a fresh ``uint8`` array ``(H, W, 3)``, RGB 0-255.

    Raises:
        ValueError: the bytes are not a JPEG or JPEG 2000 image Pillow can decode.
    """
    if not isinstance(codestream, (bytes, bytearray, memoryview)):
        raise ValueError(f"decode needs the encoded bytes, got {type(codestream).__name__}")
    try:
        with Image.open(io.BytesIO(codestream), formats=("JPEG", "JPEG2000")) as decoded:
            decoded.load()
            return _rgb_array(decoded)
    except (OSError, SyntaxError, ValueError) as error:  # Pillow's UnidentifiedImageError is an OSError
        raise ValueError(f"cannot decode a {len(codestream)}-byte JPEG / JPEG 2000 stream: {error}") from None


def jpeg_encode(image: np.ndarray, quality: int) -> bytes:
    """The encoding half of :func:`jpeg`: the JPEG file Pillow's libjpeg writes for ``image``.

    ``Image.save(format="JPEG", quality=quality, subsampling=2)``: 4:2:0 chroma subsampling,
    baseline, standard IJG tables scaled by quality (Dodge & Karam 2016, Sec. III-C).

    Args:
        image: ``uint8`` array ``(H, W, 3)``, RGB 0-255.
        quality: JPEG quality, an integer in [1, 100].

    Returns:
        the JPEG file's bytes (:func:`decode` turns them into the distorted image).
    """
    check_image(image)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=int(quality), subsampling=2)
    return buffer.getvalue()


def jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    """JPEG compression round trip through Pillow's libjpeg (Dodge & Karam 2016, Sec. III-C).

    Encodes with ``Image.save(format="JPEG", quality=quality, subsampling=2)`` (4:2:0 chroma
    subsampling, libjpeg's default, baseline, standard IJG tables scaled by quality) and decodes
    back to RGB: ``decode(jpeg_encode(image, quality))``. Note: libjpeg's quality scaling clamps
    every table entry to 255 for baseline JPEG, so qualities 1, 2 and 3 produce identical tables
    and identical output.

    Args:
        image: ``uint8`` array ``(H, W, 3)``, RGB 0-255.
        quality: JPEG quality, an integer in [1, 100].

    Returns:
        ``uint8`` array of the same shape (the decoded image).
    """
    return decode(jpeg_encode(image, quality))


# ---------------------------------------------------------------------------------------- JPEG 2000

#: Achieved PSNR must land within this many dB of the target (on natural images).
JPEG2000_PSNR_TOLERANCE_DB = 0.5
#: Most encodes per coder configuration (one ``dB``-mode encode, then ``rates``-mode search steps).
_JPEG2000_ENCODES_PER_CONFIG = 5
#: Extra encodes per configuration of the last pass (requested PSNR searched, ``quality_mode="dB"``).
_JPEG2000_DB_REQUESTS_PER_CONFIG = 2
#: Fewest wavelet resolution levels of the first fallback (as in version 2); 2 and 1 come last.
_JPEG2000_MIN_RESOLUTIONS = 3
#: First guess of how fast PSNR falls per doubling of the compression ratio (dB). Deliberately on
#: the low side of what natural images show (about 1.5-6 dB), so the first correction overshoots and
#: brackets the target rather than creeping up on it.
_JPEG2000_SLOPE_GUESS_DB = 2.0


def jpeg2000_resolutions(height: int, width: int) -> int:
    """Wavelet resolution levels used first: Pillow's default 6, fewer for images under 32 pixels.

    OpenJPEG needs every dimension >= ``2 ** (resolutions - 1)``, so this is
    ``min(6, floor(log2(min(height, width))) + 1)``.
    """
    return max(1, min(6, int(math.log2(min(height, width))) + 1))


def _jpeg2000_configurations(height: int, width: int) -> list[dict]:
    """Coder configurations in the order tried.

    First the historical order (``DISTORTION_CODE_VERSION`` 2, unchanged so that every image that
    landed within tolerance then gives the same bytes now): :func:`jpeg2000_resolutions` levels down
    to 3, then the same with the colour transform (``mct=1``). Then, for images none of those could
    bring within tolerance (flat or nearly flat colour, saturated channels, two-colour images), the
    levels below 3 down to 1 (no wavelet decomposition: every 64x64 code-block of the image is
    truncated on its own), without and then with the colour transform.
    """
    first = jpeg2000_resolutions(height, width)
    levels = range(first, min(first, _JPEG2000_MIN_RESOLUTIONS) - 1, -1)
    fewer = range(min(first, _JPEG2000_MIN_RESOLUTIONS) - 1, 0, -1)
    return (
        [{"resolutions": r} for r in levels]
        + [{"resolutions": r, "mct": 1} for r in levels]
        + [{"resolutions": r} for r in fewer]
        + [{"resolutions": r, "mct": 1} for r in fewer]
    )


def _jpeg2000_round_trip(image: np.ndarray, resolutions: int, **options) -> tuple[np.ndarray, int, bytes]:
    """Encode ``image`` with OpenJPEG (irreversible 9/7, one layer) and decode it; return
    ``(decoded, size in bytes, the encoded file)``."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG2000", irreversible=True, num_resolutions=resolutions, **options)
    size = buffer.tell()
    codestream = buffer.getvalue()
    return decode(codestream), size, codestream


def _search_one_configuration(
    image: np.ndarray, target: float, max_encodes: int, **config
) -> list[tuple[float, np.ndarray, float, bytes]]:
    """Encodes for one coder configuration: ``[(|psnr - target|, decoded, psnr, encoded file)]`` in
    order made.

    ``config`` holds ``resolutions`` and, optionally, Pillow's ``mct=1`` (colour transform) flag.

    The first encode asks OpenJPEG for the target PSNR (``quality_mode="dB"``). Then the
    compression ratio (``quality_mode="rates"``) is searched on ``x = log2(raw bytes / coded
    bytes)``, against which PSNR is close to linear: before the target is bracketed, one step from
    the nearest sample with the measured slope (2 dB per doubling at first, clamped to 0.5-8);
    once bracketed, Illinois-modified regula falsi (kept 5% inside the bracket), which cannot stall
    on one side. Stops early within tolerance, or when the coder keeps returning a size it returned
    before (no truncation point between the bracket's ends).

    A lossless encode (PSNR ``inf``: flat colour, where the coder's few truncation points lie
    several dB apart) is a sample above the target like any other, but has no finite distance for
    regula falsi: a bracket with a lossless end is bisected on ``x``, and when no lossy encode has
    been seen yet the next encode asks for the highest ratio (``2**20``, the coder's smallest
    codestream). If even that is lossless, no lossy encode exists in this configuration and the
    search stops.
    """
    raw_bytes = image.size
    made: list[tuple[float, np.ndarray, float, bytes]] = []
    below: list[float] | None = None  # [x, psnr - target] with psnr < target (ratio too high)
    above: list[float] | None = None  # [x, psnr - target] with psnr >= target (inf if lossless)
    last_side = ""
    sizes: set[int] = set()
    repeats = 0
    samples: list[tuple[float, float]] = []  # finite (x, psnr - target) only
    lossless_at_max_ratio = False
    for step in range(max_encodes):
        if step == 0:
            options = {"quality_mode": "dB", "quality_layers": [target]}
        else:
            if below is not None and above is not None:
                x_lo, f_lo = below
                x_hi, f_hi = above
                left, right = sorted((x_lo, x_hi))
                if math.isfinite(f_hi):
                    x = (x_lo * f_hi - x_hi * f_lo) / (f_hi - f_lo)
                    margin = 0.05 * (right - left)
                    x = min(max(x, left + margin), right - margin)
                else:
                    x = 0.5 * (left + right)
            elif samples:
                ordered = sorted(samples, key=lambda sample: abs(sample[1]))
                slope = _JPEG2000_SLOPE_GUESS_DB
                if len(ordered) >= 2 and abs(ordered[1][0] - ordered[0][0]) > 1e-6:
                    measured = -(ordered[1][1] - ordered[0][1]) / (ordered[1][0] - ordered[0][0])
                    slope = min(max(measured, 0.5), 8.0)
                x = ordered[0][0] + ordered[0][1] / slope
            elif lossless_at_max_ratio:
                break  # every encode this configuration can make is lossless
            else:
                x = 20.0  # only lossless encodes so far: ask for the smallest codestream
            options = {"quality_mode": "rates", "quality_layers": [2.0 ** min(max(x, 0.0), 20.0)]}
        decoded, size, codestream = _jpeg2000_round_trip(image, **config, **options)
        achieved = psnr(image, decoded)
        made.append((abs(achieved - target), decoded, achieved, codestream))
        if made[-1][0] <= JPEG2000_PSNR_TOLERANCE_DB:
            break
        lossless_at_max_ratio = step > 0 and not samples and not math.isfinite(achieved)
        if size in sizes:
            repeats += 1
            if repeats >= 2:
                break
        sizes.add(size)
        x = math.log2(max(raw_bytes / max(size, 1), 1.0))
        f = achieved - target
        if math.isfinite(f):
            samples.append((x, f))
        if f < 0:
            if last_side == "below" and above is not None:
                above[1] /= 2.0  # Illinois: the retained end's weight halves (inf stays inf)
            below, last_side = [x, f], "below"
        elif above is None or math.isfinite(f) or not math.isfinite(above[1]):
            # (a lossless sample never replaces a lossy one above the target: it is farther)
            if last_side == "above" and below is not None:
                below[1] /= 2.0
            above, last_side = [x, f], "above"
    return made


def _search_requested_psnr(
    image: np.ndarray, target: float, first_psnr: float, max_encodes: int, **config
) -> list[tuple[float, np.ndarray, float, bytes]]:
    """Encodes asking OpenJPEG for other PSNRs than the target: ``[(|psnr - target|, decoded, psnr,
    encoded file)]``.

    OpenJPEG's ``quality_mode="dB"`` allocation picks other truncation points than its
    ``"rates"`` allocation, so on flat colour a request off the target can land where no rate
    does. Secant steps on the requested PSNR ``q``, starting from the configuration's first encode
    (``q = target`` gave ``first_psnr``): ``q`` moves by the remaining miss (by -6 dB after a
    lossless encode), kept within ``target +- 20`` dB and above 1 dB.
    """
    made: list[tuple[float, np.ndarray, float, bytes]] = []
    points = [(target, first_psnr)]
    for _ in range(max_encodes):
        (q0, p0), (q1, p1) = points[-2] if len(points) > 1 else points[-1], points[-1]
        if not math.isfinite(p1):
            q = q1 - 6.0
        elif len(points) > 1 and math.isfinite(p0) and abs(p1 - p0) > 1e-9:
            q = q1 + (target - p1) * (q1 - q0) / (p1 - p0)
        else:
            q = q1 + (target - p1)
        q = min(max(q, target - 20.0, 1.0), target + 20.0)
        if any(abs(q - seen) < 1e-6 for seen, _ in points):
            break
        decoded, _, codestream = _jpeg2000_round_trip(image, **config, quality_mode="dB", quality_layers=[q])
        achieved = psnr(image, decoded)
        made.append((abs(achieved - target), decoded, achieved, codestream))
        if made[-1][0] <= JPEG2000_PSNR_TOLERANCE_DB:
            break
        points.append((q, achieved))
    return made


def jpeg2000_with_psnr(image: np.ndarray, target_psnr: float) -> tuple[np.ndarray, float, int]:
    """JPEG 2000 round trip at a target PSNR; returns ``(decoded, achieved_psnr_db, encodes)``.

    OpenJPEG through Pillow, lossy wherever a lossy encode exists: irreversible 9/7 wavelet, one
    quality layer, 64x64 code blocks, R, G and B coded as separate components (Pillow's default
    ``mct=0``, no colour transform), decoded back to RGB. The rate is chosen per image:

    1. The first encode uses :func:`jpeg2000_resolutions` levels and asks OpenJPEG for the target
       directly (``quality_mode="dB"``). On the shared ImageNet images this lands within
       :data:`JPEG2000_PSNR_TOLERANCE_DB` (0.5 dB) about 99% of the time (average 1.01 encodes
       per image over 440 image-target pairs).
    2. Otherwise the compression ratio (``quality_mode="rates"``) is searched, up to
       :data:`_JPEG2000_ENCODES_PER_CONFIG` encodes for this configuration (see
       :func:`_search_one_configuration`: slope step, then Illinois regula falsi on log2 ratio).
    3. Very smooth images at low targets (a few hundred coded bytes, under 0.02 bit per pixel)
       can have PSNR steps of several dB between neighbouring truncation points, so no rate lands
       within tolerance. Then steps 1-2 are repeated with one resolution level fewer (a larger
       low-pass band gives finer steps), down to 3 levels, and then again at each level count
       with the irreversible colour transform (``mct=1``), whose truncation points differ. Such
       images are rare (about 1 in 100 at 20-24 dB) and can take up to about 20 encodes.
    4. Flat or nearly flat colour (one colour, two colours, a channel saturated at 0 or 255, tiny
       images) leaves the coder only a handful of truncation points: the DC of each channel is
       refined one bit-plane at a time, so the PSNR jumps by several dB between them (e.g. 64x80
       of RGB (17, 200, 99): 23.6 dB at the smallest codestream, then lossless, at 6 levels).
       Lossless encodes do not end the search (they bracket the target from above), and if
       steps 1-3 still miss, 2 and 1 resolution levels are tried (1 = no wavelet transform, each
       64x64 code-block truncated on its own), without and then with ``mct=1``: up to 5 encodes
       per configuration.
    5. If no configuration landed, each is tried again in the same order with up to 2 requests
       for other PSNRs than the target (:func:`_search_requested_psnr`): OpenJPEG's dB-mode
       allocation reaches truncation points its rate mode does not. At most
       ``(5 + 2) * 2 * jpeg2000_resolutions(H, W)`` (84) encodes in all.

    The encode whose PSNR is closest to the target among all those made is returned (ties: the
    earliest; a lossy encode is always closer than a lossless one). It can still miss the
    tolerance on such images: some targets lie between two truncation points of every
    configuration. The caller sees that as ``abs(achieved_psnr - target_psnr) >
    JPEG2000_PSNR_TOLERANCE_DB``; :func:`distort_with_info` returns it as
    ``DistortionInfo.within_tolerance``. Where no lossy encode exists at all (mid-grey 128 on
    every channel, which the level shift maps to zero coefficients) the input comes back
    unchanged with PSNR ``inf``.

    Args:
        image: ``uint8`` array ``(H, W, 3)``, RGB 0-255.
        target_psnr: PSNR in dB against ``image`` (as computed by :func:`psnr`).

    Returns:
        ``(decoded uint8 (H, W, 3), achieved PSNR in dB (``inf`` if unchanged), number of encodes
        made)``.

    Raises:
        ValueError: if ``image`` is not a ``uint8`` ``(H, W, 3)`` array.
    """
    check_image(image)
    _, decoded, achieved, encodes = _jpeg2000_search(image, target_psnr)
    return decoded, achieved, encodes


def jpeg2000_encode(image: np.ndarray, target_psnr: float) -> tuple[bytes, float, int]:
    """The encoding half of :func:`jpeg2000_with_psnr`: the JPEG 2000 file it decodes.

    The same rate search (:func:`jpeg2000_with_psnr`); ``decode(jpeg2000_encode(image, t)[0])`` is
    bit-identical to ``jpeg2000(image, t)``.

    Args:
        image: ``uint8`` array ``(H, W, 3)``, RGB 0-255.
        target_psnr: PSNR in dB against ``image`` (as computed by :func:`psnr`).

    Returns:
        ``(the encoded file (JP2 holding the codestream; for mid-grey images with no lossy encode a
        lossless one), achieved PSNR in dB (``inf`` if lossless), number of encodes made)``.

    Raises:
        ValueError: if ``image`` is not a ``uint8`` ``(H, W, 3)`` array.
    """
    check_image(image)
    codestream, _, achieved, encodes = _jpeg2000_search(image, target_psnr)
    return codestream, achieved, encodes


def _jpeg2000_search(image: np.ndarray, target_psnr: float) -> tuple[bytes, np.ndarray, float, int]:
    """The search of :func:`jpeg2000_with_psnr`: ``(encoded file, decoded, achieved PSNR, encodes)``."""
    target = float(target_psnr)
    made: list[tuple[float, np.ndarray, float, bytes]] = []
    configurations = _jpeg2000_configurations(*image.shape[:2])
    first_psnrs = []  # PSNR of each configuration's first encode (asked for the target in dB)
    for config in configurations:
        searched = _search_one_configuration(image, target, _JPEG2000_ENCODES_PER_CONFIG, **config)
        made += searched
        first_psnrs.append(searched[0][2])
        if min(m[0] for m in made) <= JPEG2000_PSNR_TOLERANCE_DB:
            break
    else:  # step 5: no configuration landed
        for config, first_psnr in zip(configurations, first_psnrs):
            made += _search_requested_psnr(image, target, first_psnr, _JPEG2000_DB_REQUESTS_PER_CONFIG, **config)
            if min(m[0] for m in made) <= JPEG2000_PSNR_TOLERANCE_DB:
                break
    best = min(made, key=lambda m: m[0])  # min() keeps the earliest of equals
    return best[3], best[1], best[2], len(made)


def jpeg2000(image: np.ndarray, target_psnr: float) -> np.ndarray:
    """JPEG 2000 compression to a target PSNR (Dodge & Karam 2016, Sec. III-D).

    See :func:`jpeg2000_with_psnr` for the rate search; on natural images the achieved PSNR lands
    within 0.5 dB of ``target_psnr``. On flat colour it may not: use :func:`distort_with_info` to
    learn whether it did.

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
        levels: the default grid (for the built-ins the paper's, Dodge & Karam 2016), mildest first.
            Any level in ``[minimum, maximum]`` is accepted everywhere; these are used when none are given.
        minimum, maximum: the valid level range (inclusive).
        integer: whether levels must be integers (JPEG quality).
        stochastic: whether the output depends on the seed.
        function: ``function(image, level, seed) -> image`` (the contract: :func:`register_distortion`).
        id_format: how a level id is written: ``"s{}"`` gives ``blur-s3``, ``blur-s0.5``; ``{}`` is
            replaced by :func:`format_level` of the level, the text around it is letters only.
        description: one-line definition.
        identity: the level at which the output equals the input (blur, noise and contrast 0), or
            ``None`` when there is none (JPEG, JPEG 2000).
        code_version: the version the prediction cache keys on; ``None`` (the built-ins) means
            :data:`DISTORTION_CODE_VERSION`.
    """

    name: str
    parameter: str
    unit: str
    levels: tuple[float, ...]
    minimum: float
    maximum: float
    function: Callable[[np.ndarray, float, object], np.ndarray] = field(repr=False)
    id_format: str = "{}"
    integer: bool = False
    stochastic: bool = False
    description: str = ""
    identity: float | None = None
    code_version: str | None = None

    @property
    def label(self) -> str:
        """The parameter with its unit for people: ``sigma (px)``, ``std (0-255)``, ``quality``."""
        return self.parameter if self.unit == self.parameter else f"{self.parameter} ({self.unit})"

    @property
    def range_text(self) -> str:
        """The valid range for messages: ``[0, 100]``, ``[1, 100] (integers)``."""
        return f"[{format_level(self.minimum)}, {format_level(self.maximum)}]" + (" (integers)" * self.integer)

    @property
    def cache_version(self) -> str:
        """What the prediction cache keys on: ``code_version``, else :data:`DISTORTION_CODE_VERSION`."""
        return DISTORTION_CODE_VERSION if self.code_version is None else self.code_version

    def check_level(self, level: float) -> float:
        """Return ``level`` if valid for this distortion, else raise ``ValueError`` naming the
        distortion, the value and the valid range."""
        if not is_number(level) or not math.isfinite(level):
            raise ValueError(
                f"{self.name} level must be a finite number ({self.label}, valid range {self.range_text}), "
                f"got {level!r}"
            )
        if self.integer and level != int(level):
            raise ValueError(f"{self.name} level ({self.parameter}) must be an integer, got {level!r}")
        if not self.minimum <= level <= self.maximum:
            raise ValueError(
                f"{self.name} level {level!r} is outside the valid range "
                f"[{self.minimum:g}, {self.maximum:g}] of {self.label}"
            )
        return level

    def parse_level(self, value: float | str) -> float:
        """A level from a number or its text (``"0.5"``, ``"75"``), checked and in canonical form.

        Canonical form: the default grid's own value when the level is on it (so ``"3"`` is the
        grid's ``3`` and ``"0.1"`` contrast's ``0.1``: ids, cache keys and results as for the
        grid); else an ``int`` when integral; else the ``float``.

        Raises:
            ValueError: not a number, or not a valid level (:meth:`check_level`); the message names
                the distortion, the value and the valid range.
        """
        if isinstance(value, str):
            try:
                number = float(value.strip())
                number = int(number) if number.is_integer() else number  # "101" is named 101, not 101.0
            except (ValueError, OverflowError):
                raise ValueError(
                    f"{self.name} level {value!r} is not a number ({self.label}, valid range {self.range_text})"
                ) from None
        else:
            number = value
        self.check_level(number)
        for level in self.levels:
            if level == number:
                return level
        number = float(number)
        return int(number) if number.is_integer() else number

    def level_id(self, level: float) -> str:
        """Readable id such as ``blur-s3``, ``blur-s0.5``, ``noise-50``, ``jpeg-q75``, ``jpeg2000-30db``,
        ``contrast-0.25``: ``name-`` and :attr:`id_format` filled with :func:`format_level`."""
        return f"{self.name}-{self.id_format.format(format_level(level))}"

    def level_from_id(self, level_id: str) -> float:
        """The level a :meth:`level_id` names (its inverse: ``level_from_id(level_id(x)) == x``).

        Raises:
            ValueError: ``level_id`` is not an id of this distortion, or its level is not valid.
        """
        prefix, suffix = self.id_format.split("{}")
        head = f"{self.name}-{prefix}"
        if not (level_id.startswith(head) and level_id.endswith(suffix) and len(level_id) > len(head) + len(suffix)):
            raise ValueError(f"{level_id!r} is not a level id of {self.name} (like {self.level_id(self.levels[0])!r})")
        return self.parse_level(level_id[len(head) : len(level_id) - len(suffix)])

    def __call__(self, image: np.ndarray, level: float, seed: int = 0) -> np.ndarray:
        return distort(image, self.name, level, seed=seed)


def format_level(level: float) -> str:
    """A level as text (ids, thresholds.yaml keys): :func:`robustness.names.format_level`, the shortest
    decimal that reads back as the same float (``3``, ``0.5``, ``0.00001``)."""
    return _names.format_level(level)


def _levels(start: float, stop: float, step: float) -> tuple[float, ...]:
    count = int(round((stop - start) / step)) + 1
    values = (round(start + i * step, 10) for i in range(count))
    return tuple(int(v) if float(v).is_integer() and step >= 1 else float(v) for v in values)


_REGISTRY: dict[str, Distortion] = {
    d.name: d
    for d in (
        Distortion(
            "blur",
            "sigma",
            "px",
            _levels(1, 9, 1),
            0.0,
            100.0,
            lambda image, level, seed: gaussian_blur(image, level),
            id_format="s{}",
            description="Gaussian blur, exact weights over a +-2 sigma window, reflect borders",
            identity=0,
        ),
        Distortion(
            "noise",
            "std",
            "0-255",
            _levels(10, 100, 10),
            0.0,
            255.0,
            lambda image, level, seed: gaussian_noise(image, level, seed),
            stochastic=True,
            description="additive N(0, std^2) per pixel and channel, rounded and clipped",
            identity=0,
        ),
        Distortion(
            "jpeg",
            "quality",
            "quality",
            _levels(2, 20, 2),
            1,
            100,
            lambda image, level, seed: jpeg(image, int(level)),
            id_format="q{}",
            integer=True,
            description="Pillow/libjpeg round trip at that quality, 4:2:0",
        ),
        Distortion(
            "jpeg2000",
            "psnr",
            "dB",
            _levels(20, 40, 2),
            15.0,
            60.0,
            lambda image, level, seed: jpeg2000(image, level),
            id_format="{}db",
            description="OpenJPEG (Pillow) round trip searched to the target PSNR",
        ),
        Distortion(
            "contrast",
            "weight",
            "fraction",
            _levels(0.0, 1.0, 0.1),
            0.0,
            1.0,
            lambda image, level, seed: contrast(image, level),
            description="blend toward mid-grey: (1 - w) * image + w * 128",
            identity=0,
        ),
    )
}
_BUILT_IN = frozenset(_REGISTRY)

#: Read-only mapping from distortion name to its :class:`Distortion` spec: the paper's five in the
#: paper's order, then those added with :func:`register_distortion`, in registration order.
DISTORTIONS: Mapping[str, Distortion] = MappingProxyType(_REGISTRY)

#: A distortion name: a marker ``pytest -m`` can select, and one word in ids and thresholds.yaml.
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
#: Names a distortion may not take: the clean condition, keys of a thresholds.yaml model entry, the
#: gate's own markers, and the words of ``-m`` expressions.
_RESERVED = frozenset({_names.CLEAN, "source", "robustness", "xdist_group", "and", "or", "not"})
#: The text around ``{}`` in an ``id_format``: letters and underscores only, so the id reads back.
_ID_FORMAT = re.compile(r"([A-Za-z_]*)\{\}([A-Za-z_]*)\Z")


def register_distortion(
    name: str,
    function: Callable[[np.ndarray, float, object], np.ndarray] | None = None,
    *,
    parameter: str,
    unit: str,
    minimum: float,
    maximum: float,
    levels: Sequence[float],
    code_version: str,
    id_format: str = "{}",
    integer: bool = False,
    stochastic: bool = False,
    identity: float | None = None,
    description: str = "",
):
    """Add a distortion of your own to :data:`DISTORTIONS`, beside the paper's five.

    Once registered, it works everywhere a built-in does: :func:`distort`, ``evaluate``,
    thresholds.yaml (``models.<model>.<name>.<level>``), the gate's test ids and its pytest marker
    (``pytest -m NAME``), ``robustness calibrate --import MODULE --distortion NAME=1,2``, the report.
    Use it as a function, ``register_distortion("gamma", gamma, ...)``, or as a decorator,
    ``@register_distortion("gamma", ...)`` over ``def gamma(image, level, seed)``; either way it
    returns the :class:`Distortion` (which is callable as ``spec(image, level, seed=0)``).

    The contract ``function`` must keep (:func:`robustness.testing.check_distortion` checks it):

    * ``function(image, level, seed) -> numpy.ndarray``, called positionally. ``image`` is ``uint8``
      of shape ``(H, W, 3)`` (RGB 0-255, any ``H, W >= 1``) and must not be modified; the result is
      a new ``uint8`` array of the same shape (convert float results by rounding to nearest and
      clipping to [0, 255], never by truncating or wrapping).
    * ``level`` is a number in ``[minimum, maximum]`` (an ``int`` for ``integer`` distortions),
      already checked; out-of-range levels never reach ``function``.
    * Deterministic for a seed: ``seed`` is an ``int >= 0`` (from ``distort(..., seed=S)``) or a
      :class:`numpy.random.SeedSequence` (the engine passes one per image and condition, from the base
      seed, the image id, the distortion and the level: ``robustness.evaluation.image_seed``). Draw
      all randomness from ``numpy.random.default_rng(seed)``, never from the global numpy, Python or
      torch random state. A function that ignores ``seed`` must say ``stochastic=False`` (the default).
    * Pure: the result depends only on ``(image, level, seed)``; the engine may call it in worker
      processes and in any order, and caches predictions per (image, distortion, level, seed,
      ``code_version``).

    Args:
        name: the registry key, marker and id prefix: letters, digits and ``_``, not starting with a
            digit; not ``clean``, ``source``, ``robustness``, ``and``, ``or`` or ``not``.
        function: the distortion (omit to use the decorator form).
        parameter, unit: what the level means and its unit (``unit == parameter`` for unitless).
        minimum, maximum: the valid level range, inclusive, finite, ``minimum < maximum``.
        levels: the default grid (used when no levels are given), mildest first; non-empty, each in
            range, no repeats.
        code_version: any non-empty text; change it whenever ``function``'s output changes for the
            same input, level and seed, so that cached predictions of the old code are not reused.
        id_format: the level id's form, ``{}`` standing for the level (:func:`format_level`) with
            letters or ``_`` around it: ``"s{}"`` -> ``name-s0.5``, ``"{}db"`` -> ``name-30db``.
        integer: levels must be integers (like JPEG quality).
        stochastic: the output depends on ``seed``.
        identity: a level at which the output equals the input (``None``: there is none).
        description: one line saying what it does (the docs and ``robustness list`` show it).

    Returns:
        the :class:`Distortion` (or, with ``function`` omitted, a decorator returning it).

    Raises:
        ValueError: a bad or taken name (the built-ins cannot be replaced; registering the same name
            again is allowed only for the same definition, e.g. a conftest.py imported twice), a
            ``function`` that cannot be called as ``function(image, level, seed)``, a bad range, a
            default level or identity level out of range, an empty grid, a bad ``id_format`` or
            ``code_version``; the message names the value.
    """
    if function is None:
        options = dict(
            parameter=parameter,
            unit=unit,
            minimum=minimum,
            maximum=maximum,
            levels=levels,
            code_version=code_version,
            id_format=id_format,
            integer=integer,
            stochastic=stochastic,
            identity=identity,
            description=description,
        )
        return lambda f: register_distortion(name, f, **options)

    where = f"register_distortion({name!r})"
    if not isinstance(name, str) or not _NAME.match(name) or name in _RESERVED or keyword.iskeyword(name):
        raise ValueError(
            f"{where}: a distortion name must be letters, digits and '_' not starting with a digit (a pytest "
            f"marker), and not one of {', '.join(sorted(_RESERVED))} or a Python keyword"
        )
    if name in _BUILT_IN:
        raise ValueError(f"{where}: {name!r} is a built-in distortion and cannot be replaced; choose another name")
    _check_signature(where, function)
    for label, text in (("parameter", parameter), ("unit", unit), ("code_version", code_version)):
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"{where}: {label} must be a non-empty string, got {text!r}")
    if not isinstance(description, str):
        raise ValueError(f"{where}: description must be a string, got {description!r}")
    for label, flag in (("integer", integer), ("stochastic", stochastic)):
        if not isinstance(flag, bool):
            raise ValueError(f"{where}: {label} must be True or False, got {flag!r}")
    for label, bound in (("minimum", minimum), ("maximum", maximum)):
        if not is_number(bound) or not math.isfinite(bound) or (integer and bound != int(bound)):
            kind = "an integer" if integer else "a finite number"
            raise ValueError(f"{where}: {label} must be {kind}, got {bound!r}")
    if not minimum < maximum:
        raise ValueError(f"{where}: the valid range needs minimum < maximum, got [{minimum!r}, {maximum!r}]")
    if not isinstance(id_format, str) or not _ID_FORMAT.match(id_format):
        raise ValueError(
            f"{where}: id_format must be '{{}}' with letters or '_' around it (like 's{{}}' or '{{}}db'), "
            f"got {id_format!r}"
        )
    if isinstance(levels, (str, bytes)) or not isinstance(levels, Sequence) or not levels:
        raise ValueError(f"{where}: levels (the default grid) must be a non-empty sequence of numbers, got {levels!r}")
    spec = Distortion(
        name,
        parameter,
        unit,
        (),
        minimum,
        maximum,
        function,
        id_format=id_format,
        integer=integer,
        stochastic=stochastic,
        description=description,
        code_version=code_version,
    )
    grid = []
    for level in levels:
        try:
            spec.check_level(level)
        except ValueError as error:
            raise ValueError(f"{where}: default level {level!r}: {error}") from None
        if level in grid:
            raise ValueError(f"{where}: default level {level!r} is listed twice")
        grid.append(int(level) if integer else level)
    if identity is not None:
        try:
            spec.check_level(identity)
        except ValueError as error:
            raise ValueError(f"{where}: identity level {identity!r}: {error}") from None
    spec = dataclasses.replace(spec, levels=tuple(grid), identity=identity)
    old = _REGISTRY.get(name)
    if old is not None and not _same_definition(old, spec):
        raise ValueError(
            f"{where}: a different distortion named {name!r} is already registered "
            f"({_qualified(old.function)}); call unregister_distortion({name!r}) first, or choose another name"
        )
    _REGISTRY[name] = spec
    _names.add_distortion_name(name, parameter, unit)
    return spec


def unregister_distortion(name: str) -> Distortion:
    """Remove a distortion added with :func:`register_distortion` and return it (for tests and notebooks).

    Raises:
        ValueError: ``name`` is a built-in distortion or not registered.
    """
    if name in _BUILT_IN:
        raise ValueError(f"unregister_distortion({name!r}): the built-in distortions cannot be removed")
    spec = get_distortion(name)
    del _REGISTRY[name]
    _names.remove_distortion_name(name)
    return spec


def _check_signature(where: str, function) -> None:
    """Raise ``ValueError`` unless ``function(image, level, seed)`` binds (three positional arguments)."""
    if not callable(function):
        raise ValueError(f"{where}: function must be callable as function(image, level, seed), got {function!r}")
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):  # some builtins have none: trust them
        return
    try:
        signature.bind(None, None, None)
    except TypeError as error:
        raise ValueError(
            f"{where}: function must accept (image, level, seed) positionally, but "
            f"{_qualified(function)}{signature} does not ({error})"
        ) from None


def _qualified(function) -> str:
    return f"{getattr(function, '__module__', '?')}.{getattr(function, '__qualname__', repr(function))}"


def _same_definition(old: Distortion, new: Distortion) -> bool:
    """The same registration made again (a module imported twice): every field equal and a function of
    the same module and qualified name."""
    same = all(
        getattr(old, f.name) == getattr(new, f.name) for f in dataclasses.fields(Distortion) if f.name != "function"
    )
    return same and _qualified(old.function) == _qualified(new.function)


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
            ``contrast``, or one added with :func:`register_distortion`).
        level: the distortion's parameter in its unit (see ``DISTORTIONS[name].parameter/unit``),
            any value within its valid range (not only the paper's levels).
        seed: seed for stochastic distortions (``noise``); ignored by the others. Accepts what
            :func:`numpy.random.default_rng` accepts.

    Returns:
        ``uint8`` array of the same shape as ``image``.

    Raises:
        ValueError: on a wrong dtype or shape, an unknown distortion name, or a level outside the
            distortion's valid range; the message names the offending value. Also when a registered
            distortion's function returns anything but a ``uint8`` array of the input's shape.
    """
    spec = get_distortion(distortion)
    check_image(image)
    spec.check_level(level)
    check_seed(seed)
    out = spec.function(image, level, seed)
    if spec.name not in _BUILT_IN:
        _check_output(spec, image, level, out)
    return out


def _check_output(spec: Distortion, image: np.ndarray, level: float, out) -> None:
    """A registered distortion's result must be a ``uint8`` array of the input's shape."""
    if not isinstance(out, np.ndarray) or out.dtype != np.uint8 or out.shape != image.shape:
        got = f"{out.dtype} array of shape {out.shape}" if isinstance(out, np.ndarray) else f"a {type(out).__name__}"
        raise ValueError(
            f"distortion {spec.name!r} ({_qualified(spec.function)}) at level {level!r} returned {got}; "
            f"it must return a uint8 array of the input's shape {image.shape}"
        )


@dataclass(frozen=True)
class DistortionInfo:
    """What :func:`distort_with_info` measured about one distorted image.

    Attributes:
        achieved_psnr: PSNR of the output against the input in dB (:func:`psnr`; ``math.inf``
            when the output equals the input). Computed for every distortion.
        target_psnr: the requested PSNR in dB for ``jpeg2000`` (the level), else ``None``.
        within_tolerance: ``False`` only for ``jpeg2000`` when no encode landed within
            :data:`JPEG2000_PSNR_TOLERANCE_DB` (0.5 dB) of the target, i.e. when
            ``abs(achieved_psnr - target_psnr) > 0.5``; the output is then the closest encode the
            search made (see :func:`jpeg2000_with_psnr`). Always ``True`` for the other
            distortions, which have no target to miss.
        encodes: JPEG 2000 encodes made for this image (0 for the other distortions).
    """

    achieved_psnr: float
    target_psnr: float | None = None
    within_tolerance: bool = True
    encodes: int = 0


def distort_with_info(
    image: np.ndarray, distortion: str, level: float, *, seed: int = 0
) -> tuple[np.ndarray, DistortionInfo]:
    """:func:`distort`, and a :class:`DistortionInfo` saying what it achieved.

    The image is bit-identical to ``distort(image, distortion, level, seed=seed)``; the extra cost
    is one PSNR computation (JPEG 2000 reuses the one its search made). Meant for the evaluation
    engine to count, per (image, level), the JPEG 2000 encodes that missed the 0.5 dB tolerance:
    ``not info.within_tolerance``.

    Args, Raises: as :func:`distort`.

    Returns:
        ``(uint8 array of the input's shape, DistortionInfo)``.
    """
    spec = get_distortion(distortion)
    check_image(image)
    spec.check_level(level)
    check_seed(seed)
    if spec.name == "jpeg2000":
        out, achieved, encodes = jpeg2000_with_psnr(image, level)
        within = abs(achieved - float(level)) <= JPEG2000_PSNR_TOLERANCE_DB
        return out, DistortionInfo(achieved, float(level), within, encodes)
    out = spec.function(image, level, seed)
    if spec.name not in _BUILT_IN:
        _check_output(spec, image, level, out)
    return out, DistortionInfo(psnr(image, out))


#: The distortions whose output is a codec stream: :func:`encode` makes it, :func:`decode` turns it
#: into the distorted image (what :mod:`robustness.distortion_store` keeps on disk).
CODEC_DISTORTIONS = frozenset({"jpeg", "jpeg2000"})


def codec_versions() -> dict[str, str | None]:
    """The codec libraries whose output the codec distortions are: ``{"pillow", "libjpeg", "openjpeg"}``
    -> version text (``PIL.__version__``, ``PIL.features.version("jpg")`` and ``("jpg_2000")``); a
    library Pillow was built without is ``None``. Keyed by the distortion store
    (:mod:`robustness.distortion_store`) and the prediction cache (:mod:`robustness.cache`)."""
    return dict(_codec_versions())


@functools.lru_cache(maxsize=1)
def _codec_versions() -> tuple[tuple[str, str | None], ...]:
    import PIL
    from PIL import features

    return (
        ("pillow", PIL.__version__),
        ("libjpeg", features.version("jpg")),
        ("openjpeg", features.version("jpg_2000")),
    )


def encode(image: np.ndarray, distortion: str, level: float) -> tuple[bytes, DistortionInfo | None]:
    """The encoding half of a codec distortion (:data:`CODEC_DISTORTIONS`: ``jpeg``, ``jpeg2000``).

    ``decode(encode(image, d, level)[0])`` is bit-identical to ``distort(image, d, level)``: the
    codec distortions are deterministic in (image, level, :data:`DISTORTION_CODE_VERSION`, the
    Pillow / libjpeg / OpenJPEG versions) and ignore the seed, so the bytes can be stored and
    decoded later instead of encoding again.

    Args:
        image: ``uint8`` array ``(H, W, 3)``, RGB 0-255. Not modified.
        distortion: ``"jpeg"`` or ``"jpeg2000"``.
        level: JPEG quality (integer in [1, 100]) or JPEG 2000 target PSNR in dB ([15, 60]).

    Returns:
        ``(encoded file, info)``: the JPEG file (:func:`jpeg_encode`) with ``info`` ``None``, or
        the JPEG 2000 file (:func:`jpeg2000_encode`) with the :class:`DistortionInfo` that
        :func:`distort_with_info` returns for it (achieved and target PSNR, within tolerance,
        encodes made).

    Raises:
        ValueError: ``distortion`` is not a codec distortion, the level is outside its valid range,
            or the image is not ``uint8`` ``(H, W, 3)``; the message names the value.
    """
    codestream, _, info = codec_round_trip(image, distortion, level)
    return codestream, info


def codec_round_trip(
    image: np.ndarray, distortion: str, level: float
) -> tuple[bytes, np.ndarray, DistortionInfo | None]:
    """:func:`encode` and the image its bytes decode to, without decoding them a second time.

    ``(encoded, decoded, info)`` with ``encoded, info == encode(image, distortion, level)`` and
    ``decoded == decode(encoded) == distort(image, distortion, level)`` (the JPEG 2000 search has
    already decoded its chosen encode to measure its PSNR).

    Args, Raises: as :func:`encode`.
    """
    if distortion not in CODEC_DISTORTIONS:
        raise ValueError(
            f"encode: {distortion!r} is not a codec distortion; only {', '.join(sorted(CODEC_DISTORTIONS))} "
            "have an encoded form"
        )
    spec = get_distortion(distortion)
    check_image(image)
    spec.check_level(level)
    if distortion == "jpeg":
        codestream = jpeg_encode(image, int(level))
        return codestream, decode(codestream), None
    codestream, decoded, achieved, encodes = _jpeg2000_search(image, level)
    within = abs(achieved - float(level)) <= JPEG2000_PSNR_TOLERANCE_DB
    return codestream, decoded, DistortionInfo(achieved, float(level), within, encodes)
