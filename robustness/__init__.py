"""robustness: measure and gate how image-quality distortions degrade ImageNet classifiers.

Reproduces Dodge & Karam, "Understanding How Image Quality Affects Deep Neural Networks"
(QoMEX 2016, arXiv:1604.04004). The plain API works without pytest::

    from robustness import distort, load_model, load_dataset, evaluate
"""

from .datasets import ImageDataset, load_dataset
from .distortions import DISTORTIONS, Distortion, distort, psnr
from .evaluation import Condition, ConditionResult, evaluate
from .images import ImageLoadError, load_image
from .models import Classifier, Preprocessing, list_models, load_model, register_model
from .thresholds import load_thresholds

__version__ = "0.1.0"

__all__ = [
    "DISTORTIONS", "Distortion", "distort", "psnr",
    "ImageDataset", "load_dataset", "load_image", "ImageLoadError",
    "Classifier", "Preprocessing", "list_models", "load_model", "register_model",
    "Condition", "ConditionResult", "evaluate", "load_thresholds",
]
