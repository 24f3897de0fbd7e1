"""Loading models: :func:`load_model` and the loaders it dispatches to (registered names,
torchvision architectures, state-dict and TorchScript files, ``module:function`` factories,
``nn.Module`` objects)."""

from __future__ import annotations

import importlib
import inspect
import os
import re
import sys
import warnings
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from ..weights import DEFAULT_MODELS_DIR, MODELS_ENV_VAR, OFFLINE_ENV_VAR, resolve_models_dir
from .classifier import Classifier, file_digest
from .errors import ModelError
from .preprocessing import _INTERPOLATIONS, PREPROCESSING_PRESETS, Preprocessing, parse_preprocessing
from .registry import MODELS, ModelSpec, list_models

__all__ = ["load_model"]

#: ANSI terminal escape sequences (torch's errors bold some words), stripped from messages.
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


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
    """Run one zero image through the network and check it gives 1000 logits (or 1001 with
    ``background_class``); sets ``classifier.background_class``."""
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
    else:
        raise ModelError(
            f"model {classifier.name} outputs {classes} classes; robustness scores the 1000 ImageNet-1k "
            "classes in sorted-wnid order (1001 with background_class=True is also accepted)"
        )
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
                digest = file_digest(path)
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
