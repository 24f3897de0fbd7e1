"""robustness: measure and gate how image-quality distortions degrade image classifiers (ImageNet-1k by default, or your own classes).

Reproduces Dodge & Karam, "Understanding How Image Quality Affects Deep Neural Networks"
(QoMEX 2016, arXiv:1604.04004). The plain API works without pytest::

    from robustness import distort, load_model, load_dataset, evaluate

The names below are imported on first use (PEP 562), so ``import robustness`` — which pytest does
in every session through the plugin's entry point — loads neither torch nor scipy nor Pillow.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

#: public name -> the submodule that defines it
_EXPORTS = {
    "DISTORTIONS": "distortions",
    "Distortion": "distortions",
    "distort": "distortions",
    "register_distortion": "distortions",
    "unregister_distortion": "distortions",
    "psnr": "distortions",
    "ImageDataset": "datasets",
    "load_dataset": "datasets",
    "ClassList": "labels",
    "load_image": "images",
    "ImageLoadError": "images",
    "Classifier": "models",
    "Preprocessing": "models",
    "list_models": "models",
    "load_model": "models",
    "register_model": "models",
    "unregister_model": "models",
    "Condition": "evaluation",
    "ConditionResult": "evaluation",
    "evaluate": "evaluation",
    "load_thresholds": "thresholds",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'robustness' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
