"""How a model expects its input: :class:`Preprocessing`, the named presets and
:func:`parse_preprocessing` (preset names, ``"preset,key=value,..."`` strings, JSON, mappings).

Values are on the 0-255 scale; see :class:`Preprocessing` for the steps and
:data:`PREPROCESSING_PRESETS` for the sources of each preset's constants.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from .._checks import is_number
from .errors import ModelError

__all__ = ["Preprocessing", "PREPROCESSING_PRESETS", "parse_preprocessing"]


_INTERPOLATIONS = {
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
    "nearest": InterpolationMode.NEAREST,
    "lanczos": InterpolationMode.LANCZOS,
}


@dataclass(frozen=True)
class Preprocessing:
    """How a model expects its input, from a native-resolution RGB ``uint8`` image.

    Steps: resize so the shorter side is ``resize_size`` pixels (Pillow, ``interpolation``, with
    Pillow's antialiasing), centre-crop ``crop_size`` x ``crop_size``, reorder channels to
    ``channel_order``, then ``(x - mean) / std`` per channel with ``x`` on the 0-255 scale (so
    ``mean`` and ``std`` are on the 0-255 scale too, listed in ``channel_order``). A model trained on
    [0, 1] inputs with mean ``m`` and std ``s`` has ``mean = 255 m`` and ``std = 255 s``; a Caffe model
    fed raw 0-255 values minus a mean has ``std = 1`` (see :meth:`from_fields` for ``value_range``).

    Attributes:
        resize_size: shorter side after resizing, pixels.
        crop_size: side of the square centre crop, pixels (the network's input size).
        interpolation: ``bilinear``, ``bicubic``, ``nearest`` or ``lanczos``.
        mean: per-channel mean on the 0-255 scale, in ``channel_order``.
        std: per-channel std on the 0-255 scale, in ``channel_order`` (1.0 for Caffe models).
        channel_order: ``RGB`` or ``BGR``.
    """

    resize_size: int
    crop_size: int
    interpolation: str = "bilinear"
    mean: tuple[float, float, float] = (0.485 * 255, 0.456 * 255, 0.406 * 255)
    std: tuple[float, float, float] = (0.229 * 255, 0.224 * 255, 0.225 * 255)
    channel_order: str = "RGB"

    def __post_init__(self):
        if self.interpolation not in _INTERPOLATIONS:
            raise ValueError(
                f"preprocessing interpolation must be one of {sorted(_INTERPOLATIONS)}, got {self.interpolation!r}"
            )
        if self.channel_order not in ("RGB", "BGR"):
            raise ValueError(f"preprocessing channel_order must be 'RGB' or 'BGR', got {self.channel_order!r}")
        for key in ("resize_size", "crop_size"):
            value = getattr(self, key)
            if not is_number(value) or not float(value).is_integer():
                raise ValueError(f"preprocessing {key} must be an integer number of pixels, got {value!r}")
            object.__setattr__(self, key, int(value))
        if not (0 < self.crop_size <= self.resize_size):
            raise ValueError(
                f"preprocessing needs 0 < crop_size <= resize_size, got {self.crop_size}, {self.resize_size}"
            )
        for key in ("mean", "std"):
            value = getattr(self, key)
            if isinstance(value, (str, bytes)) or len(value) != 3:
                raise ValueError(f"preprocessing {key} needs 3 values, got {value!r}")
            object.__setattr__(self, key, tuple(float(v) for v in value))
        if any(s <= 0 for s in self.std):
            raise ValueError(f"preprocessing std must be > 0, got {self.std!r}")

    @property
    def input_size(self) -> tuple[int, int, int]:
        """The network input shape ``(3, crop_size, crop_size)``."""
        return (3, self.crop_size, self.crop_size)

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        """Turn a ``uint8`` ``(H, W, 3)`` RGB image into a float32 tensor ``(3, crop_size, crop_size)``."""
        pil = Image.fromarray(image, mode="RGB")
        pil = TF.resize(pil, self.resize_size, interpolation=_INTERPOLATIONS[self.interpolation])
        pil = TF.center_crop(pil, [self.crop_size, self.crop_size])
        array = np.asarray(pil, dtype=np.float32)
        if self.channel_order == "BGR":
            array = array[:, :, ::-1]
        array = (array - np.asarray(self.mean, dtype=np.float32)) / np.asarray(self.std, dtype=np.float32)
        return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))

    def to_dict(self) -> dict:
        """The fields as a JSON-able dict (mean/std as lists on the 0-255 scale)."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}

    def describe(self) -> str:
        """One line, e.g. ``resize 256 bilinear, crop 227, BGR, mean 104/117/123, std 1/1/1 (0-255 scale)``."""
        fmt = lambda values: "/".join(f"{v:g}" for v in values)  # noqa: E731
        return (
            f"resize {self.resize_size} {self.interpolation}, crop {self.crop_size}, {self.channel_order}, "
            f"mean {fmt(self.mean)}, std {fmt(self.std)} (0-255 scale)"
        )

    @classmethod
    def from_fields(cls, base: Preprocessing | str | None = None, **values: Any) -> Preprocessing:
        """Build a preprocessing from explicit fields, optionally on top of a preset.

        Args:
            base: a preset name or :class:`Preprocessing` whose fields are the defaults (the
                ``torchvision`` preset when ``None``).
            **values: any :class:`Preprocessing` field, plus
                ``input_size`` (alias of ``crop_size``),
                ``crop_pct`` (timm style: ``resize_size = round(crop_size / crop_pct)``),
                ``value_range`` (``255`` (default) or ``1``: the scale ``mean`` and ``std`` are given
                on; with ``1`` they are multiplied by 255).
                Fields not given keep the base's value, except that a ``crop_size`` larger than the
                base's ``resize_size`` (with no ``resize_size`` or ``crop_pct``) scales ``resize_size``
                by the base's ratio (``crop_size * base.resize_size / base.crop_size``, rounded).

        Raises:
            ModelError: an unknown field or preset, or a value of the wrong type; the message names it.
        """
        allowed = {f.name for f in fields(cls)} | {"input_size", "crop_pct", "value_range", "preset"}
        unknown = sorted(set(values) - allowed)
        if unknown:
            raise ModelError(f"unknown preprocessing field(s) {unknown}; known: {sorted(allowed)}")
        values = dict(values)
        if "preset" in values:
            if base is not None:
                raise ModelError("give the preprocessing preset either as base or as 'preset', not both")
            base = values.pop("preset")
        if isinstance(base, str):
            base = _preset(base)
        base = base or PREPROCESSING_PRESETS["torchvision"]
        if "input_size" in values:
            size = values.pop("input_size")
            if isinstance(size, (list, tuple)):  # timm style (3, H, W)
                if len(size) != 3 or size[0] != 3 or size[1] != size[2]:
                    raise ModelError(f"preprocessing input_size must be N or (3, N, N), got {size!r}")
                size = size[1]
            values.setdefault("crop_size", size)
        crop_pct = values.pop("crop_pct", None)
        value_range = float(values.pop("value_range", 255))
        if value_range not in (1.0, 255.0):
            raise ModelError(f"preprocessing value_range must be 1 or 255, got {value_range:g}")
        try:
            if "crop_size" in values:
                values["crop_size"] = int(values["crop_size"])
            if "resize_size" in values:
                values["resize_size"] = int(values["resize_size"])
            elif crop_pct is not None:
                if not 0 < float(crop_pct) <= 1:
                    raise ModelError(f"preprocessing crop_pct must be in (0, 1], got {crop_pct!r}")
                values["resize_size"] = int(round(values.get("crop_size", base.crop_size) / float(crop_pct)))
            elif "crop_size" in values and values["crop_size"] > base.resize_size:
                values["resize_size"] = int(round(values["crop_size"] * base.resize_size / base.crop_size))
            for key in ("mean", "std"):
                if key in values:
                    scalars = values[key]
                    if isinstance(scalars, (int, float)):
                        scalars = (scalars,) * 3
                    values[key] = tuple(float(v) * (255.0 if value_range == 1.0 else 1.0) for v in scalars)
            if "channel_order" in values:
                values["channel_order"] = str(values["channel_order"]).upper()
            return replace(base, **values)
        except ModelError:
            raise
        except (TypeError, ValueError) as error:
            raise ModelError(f"bad preprocessing {values!r}: {error}") from None


def _preset(name: str) -> Preprocessing:
    if name not in PREPROCESSING_PRESETS:
        raise ModelError(f"unknown preprocessing preset {name!r}; presets: {', '.join(sorted(PREPROCESSING_PRESETS))}")
    return PREPROCESSING_PRESETS[name]


#: Named preprocessing presets (values on the 0-255 scale).
PREPROCESSING_PRESETS: dict[str, Preprocessing] = {
    # torchvision's ImageNet classification weights (transforms.ImageClassification defaults):
    # RGB, resize 256 bilinear, crop 224, [0, 1] then mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225).
    "torchvision": Preprocessing(256, 224, "bilinear"),
    # Caffe reference models: BGR, 0-255 minus the per-channel ILSVRC mean (B 104, G 117, R 123), no
    # std; crop 227 for AlexNet/CaffeNet/SqueezeNet (use crop_size=224 for VGG/GoogLeNet).
    "caffe": Preprocessing(256, 227, "bilinear", mean=(104.0, 117.0, 123.0), std=(1.0, 1.0, 1.0), channel_order="BGR"),
    # Inception-style (TF-slim, Keras "tf" mode): 342 -> 299, scaled to [-1, 1].
    "inception": Preprocessing(342, 299, "bilinear", mean=(127.5,) * 3, std=(127.5,) * 3),
    # EfficientNet-Lite (TF reference): bicubic, (x - 127) / 128.
    "efficientnet_lite": Preprocessing(256, 224, "bicubic", mean=(127.0,) * 3, std=(128.0,) * 3),
}


def parse_preprocessing(description: Preprocessing | str | Mapping[str, Any]) -> Preprocessing:
    """Turn a preprocessing description into a :class:`Preprocessing`.

    Accepted forms:

    * a :class:`Preprocessing` (returned as is);
    * a preset name: ``"torchvision"``, ``"caffe"``, ``"inception"``, ``"efficientnet_lite"``;
    * ``"PRESET,key=value,..."`` or ``"key=value,..."`` (fields on top of the torchvision preset), with
      ``mean``/``std`` as ``a/b/c`` or one number, e.g. ``"caffe,crop_size=224"`` or
      ``"crop_size=240,interpolation=bicubic,mean=0.5/0.5/0.5,std=0.5,value_range=1"``;
    * a JSON object string or a mapping of fields (see :meth:`Preprocessing.from_fields`), with an
      optional ``"preset"`` key.

    Raises:
        ModelError: unknown preset or field, or a malformed value (the message names it).
    """
    if isinstance(description, Preprocessing):
        return description
    if isinstance(description, Mapping):
        return Preprocessing.from_fields(**dict(description))
    if not isinstance(description, str):
        raise ModelError(
            f"preprocessing must be a preset name, a 'key=value,...' string, a mapping or a Preprocessing, got {type(description).__name__}"
        )
    text = description.strip()
    if text.startswith("{"):
        try:
            mapping = json.loads(text)
        except json.JSONDecodeError as error:
            raise ModelError(f"preprocessing {text!r} is not valid JSON: {error}") from None
        return Preprocessing.from_fields(**mapping)
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
        raise ModelError("empty preprocessing description")
    base = None
    if "=" not in parts[0]:
        base = _preset(parts.pop(0))
    values: dict[str, Any] = {}
    for part in parts:
        if "=" not in part:
            raise ModelError(
                f"preprocessing item {part!r} in {text!r} is not key=value (a preset name can only come first)"
            )
        key, value = (s.strip() for s in part.split("=", 1))
        if key in ("mean", "std"):
            try:
                numbers = [float(v) for v in value.split("/")]
            except ValueError:
                raise ModelError(f"preprocessing {key}={value!r}: expected a number or a/b/c") from None
            values[key] = numbers[0] if len(numbers) == 1 else tuple(numbers)
        elif key in ("resize_size", "crop_size", "input_size"):
            try:
                values[key] = int(value)
            except ValueError:
                raise ModelError(f"preprocessing {key}={value!r}: expected an integer") from None
        elif key in ("crop_pct", "value_range"):
            try:
                values[key] = float(value)
            except ValueError:
                raise ModelError(f"preprocessing {key}={value!r}: expected a number") from None
        else:
            values[key] = value
    return Preprocessing.from_fields(base, **values)
