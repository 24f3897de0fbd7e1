"""Model registry and user models: every model carries the preprocessing it was trained with.

A :class:`Classifier` wraps a ``torch.nn.Module`` together with its :class:`Preprocessing` (in the
spirit of timm's ``pretrained_cfg``), so callers hand it native-resolution ``uint8`` RGB images and
never choose resize, crop, value scale, mean/std or channel order themselves.

:func:`load_model` reads one scheme from the spec's spelling (:func:`model_scheme`; never by trying
each kind in turn; an ambiguous or unknown spec is an error listing :data:`MODEL_SCHEMES`):

* ``torchvision:ARCH[:WEIGHTS]``: torchvision's architecture with its weights enum (``DEFAULT`` when
  ``WEIGHTS`` is omitted) and the preprocessing of that enum, or with a state dict of yours;
* ``timm:NAME[.TAG]``: ``timm.create_model`` with the preprocessing of timm's own data config
  (:mod:`robustness.models.timm_models`; the optional ``timm`` extra);
* a registered name (:func:`list_models`): ``efficientnet_lite0``, ``squeezenet1_0_caffe``, ...; a
  bare torchvision architecture name (``resnet18``) when it is not registered;
* ``package.module:function``, a factory returning an ``nn.Module`` (or a ready :class:`Classifier`);
* a path to a TorchScript file, or to a state dict together with ``arch=`` (a torchvision name),
  told apart by the file's content;
* a ``torch.nn.Module`` object (e.g. from your conftest.py), or a :class:`Classifier` (returned as is).

User models must say how they were trained: ``preprocessing=`` a preset name
(:data:`PREPROCESSING_PRESETS`: ``torchvision``, ``caffe``, ``inception``, ``efficientnet_lite``), a
``"preset,key=value,..."`` string, a mapping of fields, or a :class:`Preprocessing`.

Weight files the registry needs (SqueezeNet, MobileNetV2, VGG-CNN-S) are looked up in the models
folder: the ``models_dir`` argument, else ``$ROBUSTNESS_MODELS``, else ``../shared/models`` next to the
working directory (:func:`resolve_models_dir`). Checkpoints are always read with
``torch.load(..., weights_only=True)``.

The package's modules, bottom to top (each imports only those above it, plus :mod:`robustness.weights`,
:mod:`robustness._checks`): :mod:`~robustness.models.errors` (:class:`ModelError`),
:mod:`~robustness.models.preprocessing`, :mod:`~robustness.models.classifier`,
:mod:`~robustness.models.registry` (:func:`register_model`, :func:`unregister_model`),
:mod:`~robustness.models.checkpoints` (reading state dicts and TorchScript),
:mod:`~robustness.models.timm_models` (imported for a ``timm:`` spec only),
:mod:`~robustness.models.loaders` (:func:`load_model`) and :mod:`~robustness.models.zoo` (the
built-in registrations, made on import of this package).
"""

from __future__ import annotations

# The models folder and the weight files' names live in the torch-free module that `robustness list` reads.
from ..weights import MODELS_ENV_VAR, OFFLINE_ENV_VAR, resolve_models_dir
from .classifier import Classifier
from .errors import ModelError
from .loaders import MODEL_SCHEMES, load_model, model_scheme
from .preprocessing import PREPROCESSING_PRESETS, Preprocessing, parse_preprocessing
from .registry import MODELS, ModelSpec, list_models, register_model, unregister_model
from .zoo import VGGCNNS  # importing the zoo registers the built-in models

__all__ = [
    "Preprocessing",
    "PREPROCESSING_PRESETS",
    "parse_preprocessing",
    "Classifier",
    "ModelSpec",
    "MODELS",
    "ModelError",
    "register_model",
    "unregister_model",
    "list_models",
    "load_model",
    "model_scheme",
    "MODEL_SCHEMES",
    "resolve_models_dir",
    "MODELS_ENV_VAR",
    "OFFLINE_ENV_VAR",
    "VGGCNNS",
]
