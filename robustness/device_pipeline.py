"""The opt-in device-side pipeline (issue 12, "A pipeline that can keep a GPU busy").

With ``evaluate(..., pipeline="device")`` the DataLoader workers only decode each image and run the
codec distortions (JPEG, JPEG 2000) and any registered distortion, exactly as the reference path does;
the rest runs here as torch ops on the model's device: Gaussian blur (at native resolution, as
:func:`robustness.distortions.gaussian_blur`), additive Gaussian noise (from a torch generator seeded
from the image's seed), contrast reduction, then the model's :class:`robustness.Preprocessing` (resize,
centre crop, channel order, normalisation), and the images are stacked into one batch.

How close it is to the reference (numpy / scipy / Pillow) path, tested in ``tests/test_device_pipeline.py``
and measured in ``docs/caching.md`` ("Device-side pipeline"):

* **contrast**: bit-identical (the reference's own 256-entry table, applied on the device);
* **blur**: within 1 grey level of :func:`robustness.distortions.distort` (float32 sums on the
  device, float64 sums stored as float32 in scipy: a value within rounding of ``x.5`` may round the
  other way); borders use the same half-sample symmetric reflection (``d c b a | a b c d | d c b a``);
* **noise**: statistically identical, not bit-identical: the same model ``clip(rint(x + N(0, std^2)))``
  with one independent normal draw per pixel and channel, from ``torch.randn`` with a generator
  seeded from the image's :class:`numpy.random.SeedSequence` (:func:`noise_seed`), so the same image
  gets the same noise whatever the batch composition, order or worker count;
* **resize**: Pillow's antialiased resampling done as Pillow does it, horizontal pass then vertical
  pass, each rounded and clipped to 0-255 (Pillow keeps 8-bit images as 8 bits between its passes),
  with ``torch.nn.functional.interpolate(..., antialias=True)`` (whose bilinear and bicubic kernels
  are Pillow's: bicubic with ``a = -0.5``); within 1 grey level of Pillow, on about 0.01-0.1 % of
  the pixels of the shared ImageNet images; crop and normalisation are then identical.

Only ``bilinear`` and ``bicubic`` interpolation are reproduced (torch has no antialiased Lanczos,
and its nearest-neighbour rule is not Pillow's); :func:`unsupported_reason` says why a model's
preprocessing cannot run here, and :func:`resolve_pipeline` falls back to the reference path (``auto``)
or refuses (``device``).

Layer 2 (beside ``distortions``): imports ``distortions`` and ``models`` only; torch at import, so
``import robustness`` never imports this module.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import fields

import numpy as np
import torch
import torch.nn.functional as F

from .distortions import contrast as _reference_contrast
from .distortions import gaussian_kernel
from .models import Preprocessing
from .settings import PIPELINES as _SETTINGS_PIPELINES

__all__ = [
    "PIPELINES",
    "DEVICE_PIPELINE_VERSION",
    "DEVICE_DISTORTIONS",
    "DEVICE_INTERPOLATIONS",
    "unsupported_reason",
    "resolve_pipeline",
    "runs_on_device",
    "noise_seed",
    "gaussian_blur",
    "gaussian_noise",
    "contrast",
    "preprocess",
    "device_stage",
    "DeviceInput",
    "NativeImage",
]

#: Bumped whenever the device pipeline's output for the same input changes; in the prediction cache's
#: condition key of every device-pipeline run (:meth:`robustness.cache.PredictionCache.condition_key`).
DEVICE_PIPELINE_VERSION = "1"
#: The values of the ``pipeline`` setting: ``auto`` (device on CUDA, else reference), ``device``, ``reference``.
PIPELINES = _SETTINGS_PIPELINES
#: The built-in distortions computed on the device; the others (JPEG, JPEG 2000, registered ones) run
#: in the workers as in the reference path.
DEVICE_DISTORTIONS = ("blur", "noise", "contrast")
#: The interpolations the device path reproduces (Pillow's antialiased filters of the same name).
DEVICE_INTERPOLATIONS = ("bilinear", "bicubic")
#: The :class:`Preprocessing` fields the device path knows how to apply; a new field refuses it.
_KNOWN_FIELDS = frozenset({"resize_size", "crop_size", "interpolation", "mean", "std", "channel_order"})

_NOTES: set[tuple[str, str]] = set()  # (model, reason) already announced in this process


def unsupported_reason(preprocessing) -> str | None:
    """Why the device path cannot reproduce ``preprocessing``, or ``None`` when it can.

    It can for a plain :class:`robustness.Preprocessing` (not a subclass, not another callable) whose
    fields are the six it knows and whose ``interpolation`` is in :data:`DEVICE_INTERPOLATIONS`.

    Returns:
        a short phrase (``"interpolation 'lanczos' (the device path has bilinear, bicubic)"``) or ``None``.
    """
    if type(preprocessing) is not Preprocessing:
        return f"a custom preprocessing ({type(preprocessing).__qualname__}, not robustness.Preprocessing)"
    unknown = sorted({f.name for f in fields(preprocessing)} - _KNOWN_FIELDS)
    if unknown:
        return f"preprocessing field(s) {unknown} it does not know"
    if preprocessing.interpolation not in DEVICE_INTERPOLATIONS:
        return f"interpolation {preprocessing.interpolation!r} (the device path has {', '.join(DEVICE_INTERPOLATIONS)})"
    return None


def resolve_pipeline(pipeline: str | None, device: str | torch.device, model) -> str:
    """The pipeline an evaluation of ``model`` on ``device`` uses: ``"device"`` or ``"reference"``.

    ``auto`` (or ``None``) is ``device`` when ``device`` is CUDA and the device path can reproduce the
    model's preprocessing (:func:`unsupported_reason`), else ``reference``; on CUDA a model it cannot
    reproduce gets one line on stderr saying so (once per model and reason per process).

    Raises:
        ValueError: ``pipeline`` is not one of :data:`PIPELINES`, or it is ``device`` and the model's
            preprocessing cannot be reproduced (the message names the model and the reason).
    """
    text = "auto" if pipeline is None or str(pipeline).strip() == "" else str(pipeline).strip().lower()
    if text not in PIPELINES:
        raise ValueError(f"pipeline must be one of {', '.join(PIPELINES)}, got {pipeline!r}")
    if text == "reference":
        return text
    name = getattr(model, "name", type(model).__name__)
    reason = unsupported_reason(getattr(model, "preprocessing", None))
    if text == "device":
        if reason is not None:
            raise ValueError(
                f"pipeline device: model {name} cannot use the device pipeline: {reason}; use --pipeline reference"
            )
        return text
    if torch.device(device).type != "cuda":
        return "reference"
    if reason is not None:
        if (name, reason) not in _NOTES:
            _NOTES.add((name, reason))
            print(f"robustness: model {name} uses the reference (CPU) pipeline: {reason}", file=sys.stderr)
        return "reference"
    return "device"


def runs_on_device(distortion: str) -> bool:
    """Whether the device pipeline computes ``distortion`` (``clean`` included) on the device."""
    return distortion == "clean" or distortion in DEVICE_DISTORTIONS


def noise_seed(seed: int | np.random.SeedSequence) -> int:
    """The torch generator seed of an image's noise: the first 63 bits of
    ``SeedSequence(seed).generate_state(1, uint64)`` (an int ``seed`` is wrapped in a SeedSequence), so
    it depends only on the seed that :func:`robustness.evaluation.image_seed` derives from (base seed,
    image id, distortion, level).

    Raises:
        ValueError: ``seed`` is neither an int >= 0 nor a SeedSequence.
    """
    if not isinstance(seed, np.random.SeedSequence):
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"noise seed must be an integer >= 0 or a numpy SeedSequence, got {seed!r}")
        seed = np.random.SeedSequence(int(seed))
    return int(seed.generate_state(1, dtype=np.uint64)[0]) & ((1 << 63) - 1)


def _check(image: torch.Tensor, name: str = "image") -> None:
    if not isinstance(image, torch.Tensor) or image.ndim != 3 or image.shape[0] != 3 or not image.is_floating_point():
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"{name} must be a floating tensor (3, H, W) on the 0-255 scale, got {shape}")


def _reflect_indices(size: int, radius: int, device) -> torch.Tensor:
    """Indices ``-radius .. size - 1 + radius`` folded half-sample symmetrically into ``0 .. size-1``
    (scipy.ndimage ``mode="reflect"``: ``d c b a | a b c d | d c b a``, repeated for windows longer than
    the image)."""
    index = torch.arange(-radius, size + radius, device=device) % (2 * size)
    return torch.where(index >= size, 2 * size - 1 - index, index)


def gaussian_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of one image on its device, as :func:`robustness.distortions.gaussian_blur`.

    The same kernel (:func:`robustness.distortions.gaussian_kernel`: radius ``ceil(2 sigma)``, sampled
    Gaussian normalised to 1), applied along rows then columns of each channel as a float32 weighted
    sum of shifted copies (no convolution library, so no TF32 and the same sums on every device), with
    the same half-sample symmetric borders, then rounded to nearest and clipped to [0, 255]. Within 1
    grey level of the reference (its float64 sums can round the other way at ``x.5``).

    Args:
        image: float tensor ``(3, H, W)``, integer values 0-255.
        sigma: standard deviation in pixels, >= 0 (0 returns the input).

    Returns:
        float32 tensor ``(3, H, W)`` of integer values 0-255.

    Raises:
        ValueError: a bad image, or sigma negative or not finite.
    """
    _check(image)
    if sigma == 0:
        return image.to(torch.float32)
    weights = [float(w) for w in gaussian_kernel(sigma)]  # raises ValueError on a bad sigma
    radius = len(weights) // 2
    out = image.to(torch.float32)
    for dim in (1, 2):  # rows (axis 0 of the H x W x 3 array), then columns, as the reference
        size = out.shape[dim]
        padded = out.index_select(dim, _reflect_indices(size, radius, out.device))
        total = torch.zeros_like(out)
        for offset, weight in enumerate(weights):
            total += weight * padded.narrow(dim, offset, size)
        out = total
    return out.round_().clamp_(0, 255)


def gaussian_noise(image: torch.Tensor, std: float, seed: int | np.random.SeedSequence) -> torch.Tensor:
    """Additive white Gaussian noise on the image's device: ``clip(rint(x + std * z), 0, 255)`` with
    ``z = torch.randn((3, H, W))`` (float32) from a ``torch.Generator`` on the image's device seeded with
    :func:`noise_seed` of ``seed``.

    Statistically identical to :func:`robustness.distortions.gaussian_noise` (one independent
    ``N(0, std^2)`` draw per pixel and channel, rounding and clipping the same), not bit-identical (a
    different generator); deterministic for a seed on a given device, whatever else is in the batch.

    Args:
        image: float tensor ``(3, H, W)``, integer values 0-255.
        std: noise standard deviation on the 0-255 scale, >= 0 (0 returns the input).
        seed: an int >= 0 or the image's :class:`numpy.random.SeedSequence`.

    Returns:
        float32 tensor ``(3, H, W)`` of integer values 0-255.

    Raises:
        ValueError: a bad image or seed, or std negative or not finite.
    """
    _check(image)
    if not (isinstance(std, (int, float, np.number)) and math.isfinite(std) and std >= 0):
        raise ValueError(f"noise std must be a finite number >= 0, got {std!r}")
    generator = torch.Generator(device=image.device)
    generator.manual_seed(noise_seed(seed))
    if std == 0:
        return image.to(torch.float32)
    noise = torch.randn(image.shape, generator=generator, device=image.device, dtype=torch.float32)
    return noise.mul_(float(std)).add_(image).round_().clamp_(0, 255)


def contrast(image: torch.Tensor, weight: float) -> torch.Tensor:
    """Contrast reduction on the image's device, bit-identical to :func:`robustness.distortions.contrast`:
    the reference's own 256-entry table ``rint((1 - w) * v + w * 128)`` (float64), looked up per value.

    Args:
        image: float tensor ``(3, H, W)``, integer values 0-255.
        weight: blend weight toward grey, in [0, 1].

    Returns:
        float32 tensor ``(3, H, W)`` of integer values 0-255.
    """
    _check(image)
    values = np.arange(256, dtype=np.uint8).reshape(1, 256, 1).repeat(3, axis=2)
    table = torch.as_tensor(_reference_contrast(values, weight)[0, :, 0], dtype=torch.float32, device=image.device)
    return table[image.to(torch.int64).clamp_(0, 255)]


def _resize_shorter(image: torch.Tensor, size: int, mode: str) -> torch.Tensor:
    """Shorter side to ``size`` (longer side ``int(size * long / short)``, as torchvision's resize),
    Pillow's way: horizontal pass, then vertical pass, each antialiased and rounded/clipped to 0-255."""
    height, width = image.shape[-2:]
    if height <= width:
        new_height, new_width = size, int(size * width / height)
    else:
        new_height, new_width = int(size * height / width), size
    out = image[None]
    if new_width != width:
        out = F.interpolate(out, size=(height, new_width), mode=mode, antialias=True, align_corners=False)
        out = out.round_().clamp_(0, 255)
    if new_height != height:
        out = F.interpolate(out, size=(new_height, new_width), mode=mode, antialias=True, align_corners=False)
        out = out.round_().clamp_(0, 255)
    return out[0]


def preprocess(image: torch.Tensor, preprocessing: Preprocessing) -> torch.Tensor:
    """The model's :class:`robustness.Preprocessing` on one image on its device.

    Resize so the shorter side is ``resize_size`` (:data:`DEVICE_INTERPOLATIONS` only, done as Pillow
    does: see the module docstring; within 1 grey level of Pillow), centre crop ``crop_size`` (the
    offsets of :func:`torchvision.transforms.functional.center_crop`), channel order, then
    ``(x - mean) / std`` in float32, as :meth:`robustness.Preprocessing.__call__`.

    Args:
        image: float tensor ``(3, H, W)``, integer values 0-255, RGB.
        preprocessing: the model's preprocessing.

    Returns:
        float32 tensor ``(3, crop_size, crop_size)``.

    Raises:
        ValueError: a bad image, or a preprocessing the device path cannot reproduce (:func:`unsupported_reason`).
    """
    _check(image)
    reason = unsupported_reason(preprocessing)
    if reason is not None:
        raise ValueError(f"the device pipeline cannot reproduce {reason}")
    out = _resize_shorter(image.to(torch.float32), preprocessing.resize_size, preprocessing.interpolation)
    crop = preprocessing.crop_size
    height, width = out.shape[-2:]
    top, left = int(round((height - crop) / 2.0)), int(round((width - crop) / 2.0))
    out = out[:, top : top + crop, left : left + crop]
    if preprocessing.channel_order == "BGR":
        out = out.flip(0)
    mean = torch.tensor(preprocessing.mean, dtype=torch.float32, device=out.device).view(3, 1, 1)
    std = torch.tensor(preprocessing.std, dtype=torch.float32, device=out.device).view(3, 1, 1)
    return ((out - mean) / std).contiguous()


def _distort(image: torch.Tensor, distortion: str, level: float, seed) -> torch.Tensor:
    if distortion == "blur":
        return gaussian_blur(image, level)
    if distortion == "noise":
        return gaussian_noise(image, level, seed)
    if distortion == "contrast":
        return contrast(image, level)
    raise ValueError(f"the device pipeline computes {', '.join(DEVICE_DISTORTIONS)} only, got {distortion!r}")


def device_stage(
    images: Sequence[np.ndarray | torch.Tensor],
    distortions: Sequence[tuple[str, float, int | np.random.SeedSequence] | None],
    preprocessing: Preprocessing,
    device: str | torch.device,
) -> torch.Tensor:
    """The device pipeline's work on one batch: per image, move it to ``device``, apply its device
    distortion at native resolution, then :func:`preprocess`; stack the results.

    Args:
        images: ``uint8`` ``(H, W, 3)`` RGB images (numpy arrays or CPU/device tensors), native sizes,
            already decoded and, for the codec distortions, already distorted (in the workers).
        distortions: per image ``(distortion, level, seed)`` for a distortion of
            :data:`DEVICE_DISTORTIONS` (``seed``: the image's seed, used by noise only), or ``None``
            (clean, or distorted already).
        preprocessing: the model's preprocessing (:func:`unsupported_reason` must be ``None``).
        device: where to compute (the model's device).

    Returns:
        float32 tensor ``(N, 3, crop_size, crop_size)`` on ``device``.

    Raises:
        ValueError: lengths differ, an image is not ``uint8`` ``(H, W, 3)``, a distortion the device
            path does not compute, or a preprocessing it cannot reproduce.
    """
    if len(images) != len(distortions):
        raise ValueError(f"device_stage needs one distortion entry per image, got {len(images)} and {len(distortions)}")
    out = []
    for index, (image, entry) in enumerate(zip(images, distortions)):
        tensor = torch.as_tensor(image)
        if tensor.dtype != torch.uint8 or tensor.ndim != 3 or tensor.shape[2] != 3:
            raise ValueError(f"image {index} must be uint8 (H, W, 3) RGB, got {tensor.dtype} {tuple(tensor.shape)}")
        tensor = tensor.to(device, non_blocking=True).permute(2, 0, 1).to(torch.float32)
        if entry is not None:
            tensor = _distort(tensor, *entry)
        out.append(preprocess(tensor, preprocessing))
    if not out:
        return torch.empty((0, *preprocessing.input_size), dtype=torch.float32, device=device)
    return torch.stack(out)


class NativeImage:
    """A ``uint8`` ``(H, W, 3)`` image at native size on its way from a DataLoader worker to the device
    stage (``array``); the engine's collate keeps these as a list instead of stacking them."""

    __slots__ = ("array",)

    def __init__(self, array: np.ndarray):
        self.array = array

    def __getstate__(self):
        return (self.array,)  # a tuple: pickle skips __setstate__ for a false state, and arrays have no truth value

    def __setstate__(self, state):
        (self.array,) = state


class DeviceInput:
    """The engine's preprocessing entry for a model on the device pipeline: in the worker it only wraps
    the (decoded, codec-distorted) image (:meth:`__call__`); :meth:`stage` does the rest on the device.

    Args:
        preprocessing: the model's :class:`robustness.Preprocessing` (:func:`unsupported_reason` must be ``None``).
    """

    def __init__(self, preprocessing: Preprocessing):
        self.preprocessing = preprocessing

    def __call__(self, image: np.ndarray) -> NativeImage:
        return NativeImage(image)

    def to_dict(self) -> dict:
        """What identifies it (the engine shares one worker output between equal entries)."""
        return {"device_pipeline": DEVICE_PIPELINE_VERSION, "preprocessing": self.preprocessing.to_dict()}

    def stage(
        self,
        images: Sequence[torch.Tensor],
        distortions: Sequence[tuple[str, float, int | np.random.SeedSequence] | None],
        device: str | torch.device,
    ) -> torch.Tensor:
        """:func:`device_stage` with this entry's preprocessing."""
        return device_stage(images, distortions, self.preprocessing, device)
