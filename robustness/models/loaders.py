"""Loading models: :func:`load_model` and the loaders it dispatches to (registered names,
torchvision architectures, state-dict and TorchScript files, ``module:function`` factories,
``nn.Module`` objects)."""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch

from ..settings import check_device
from ..weights import OFFLINE_ENV_VAR
from .checkpoints import _is_torchscript, _load_into, _load_torchscript
from .classifier import Classifier, file_digest
from .errors import ModelError
from .preprocessing import _INTERPOLATIONS, PREPROCESSING_PRESETS, Preprocessing, parse_preprocessing
from .registry import MODELS, ModelSpec, list_models

__all__ = ["load_model", "model_scheme", "MODEL_SCHEMES"]


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


def _net_device(net: torch.nn.Module) -> torch.device:
    """The device of the network's first parameter (else first buffer), CPU for a network with neither."""
    for tensor in (*net.parameters(), *net.buffers()):
        return tensor.device
    return torch.device("cpu")


def _check_output(classifier: Classifier, background_class: bool | None) -> Classifier:
    """Run one zero image through the network, on the network's own device (:func:`_net_device`; issue
    12: a network already on CUDA got a CPU probe, and the error blamed the crop size), and check it
    gives logits ``(1, C)``: any width C (the dataset's class count, checked by
    :func:`robustness.labels.check_output_width`), 1001 only with ``background_class``; sets
    ``classifier.background_class`` and ``classifier.num_classes``."""
    device = _net_device(classifier.net)
    probe = torch.zeros((1, *classifier.preprocessing.input_size), device=device)
    with torch.inference_mode():
        try:
            out = classifier.net(probe)
        except Exception as error:  # noqa: BLE001 - a user's network may raise anything on a wrong input
            raise ModelError(
                f"model {classifier.name}: a (1, {', '.join(map(str, classifier.preprocessing.input_size))}) float32 "
                f"input on {device} (its preprocessing's crop_size) fails: {type(error).__name__}: {error}"
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


#: The schemes of a model spec, in the order :func:`model_scheme` tests a string (for docs and errors).
MODEL_SCHEMES: dict[str, str] = {
    "torchvision": "torchvision:ARCH[:WEIGHTS], a torchvision architecture and its weights enum (DEFAULT when omitted)",
    "timm": "timm:NAME[.TAG], a timm model with timm's own preprocessing (pip install '.[timm]')",
    "registered": "NAME, a registered model (robustness list / list_models()); a bare torchvision "
    "architecture name (resnet18) when it is not registered",
    "factory": "package.module:function, an importable factory returning an nn.Module or a Classifier",
    "file": "PATH, a TorchScript file, or a state dict with arch= (CLI --arch); "
    "a spec with a '/' (./net.pt) is a path unless it is a registered name",
    "object": "an nn.Module or Classifier object (Python API)",
}

#: Suffixes that make a bare spec a file path even when the file is missing (so the error is "not found").
_WEIGHT_SUFFIXES = (".pt", ".pth", ".pth.tar", ".ckpt", ".bin", ".ts", ".jit", ".zip")


def _schemes_text() -> str:
    return "; ".join(MODEL_SCHEMES.values())


def _is_factory_spelling(text: str) -> bool:
    """``package.module:function``: dotted identifiers before the first ``:``, something after it."""
    head, colon, tail = text.partition(":")
    return bool(colon and tail) and all(part.isidentifier() for part in head.split("."))


def model_scheme(spec: str | os.PathLike | torch.nn.Module) -> tuple[str, Any]:
    """Which way :func:`load_model` loads ``spec``, decided from its spelling alone (one file-existence
    check, no loading, never by trying each kind in turn).

    Rules, in order:

    1. an ``nn.Module`` / :class:`Classifier` object: ``object``; an ``os.PathLike`` (``Path``): ``file``;
    2. ``torchvision:`` or ``timm:`` prefix: that scheme (the rest of the string is returned);
    3. a registered name: ``registered``;
    4. a spec with a ``/`` (or the OS separator), starting with ``~``, or ending in a weights suffix
       (``.pt``, ``.pth``, ``.ckpt``, ...): ``file``, whether or not it exists;
    5. ``package.module:function``: ``factory``; else a bare torchvision architecture name
       (``resnet18``): ``torchvision``;
    6. an existing file: ``file``.

    A name of rule 3 or 5 that is also an existing file (relative to the working directory) is
    ambiguous: an error says how to write each.

    Returns:
        ``(scheme, target)``: a key of :data:`MODEL_SCHEMES` and what that scheme loads (the object,
        a ``Path``, the name, the ``module:function`` text, or the part after ``torchvision:`` / ``timm:``).

    Raises:
        ModelError: an unknown or ambiguous spec, or one of another type; the message lists the schemes.
        FileNotFoundError: a spec spelled as a path (rule 3) names no file.
    """
    if isinstance(spec, (Classifier, torch.nn.Module)):
        return "object", spec
    if isinstance(spec, os.PathLike) and not isinstance(spec, str):
        return "file", Path(spec).expanduser()
    if not isinstance(spec, str):
        raise ModelError(
            f"load_model needs a model spec (a string), a path, an nn.Module or a Classifier, got "
            f"{type(spec).__name__}; model specs: {_schemes_text()}"
        )
    for prefix in ("torchvision", "timm"):
        if spec.startswith(f"{prefix}:"):
            return prefix, spec[len(prefix) + 1 :]
    path = Path(spec).expanduser()
    separators = {"/", os.sep} | ({os.altsep} if os.altsep else set())
    spelled_as_path = (
        any(s in spec for s in separators) or spec.startswith("~") or spec.lower().endswith(_WEIGHT_SUFFIXES)
    )
    named = None
    if spec in MODELS:
        named = ("registered", spec, f"the registered model {spec!r}")
    elif spelled_as_path:
        if not path.is_file():
            raise FileNotFoundError(f"model file {path} not found (the spec {spec!r} is spelled as a path)")
        return "file", path
    elif _is_factory_spelling(spec):
        named = ("factory", spec, f"the factory {spec!r}")
    elif spec.isidentifier() and _is_torchvision_arch(spec):
        named = ("torchvision", spec, f"the torchvision architecture (torchvision:{spec})")
    if named is not None:
        if path.is_file():
            hint = f"./{spec}" if not spelled_as_path else str(path.resolve())
            raise ModelError(
                f"model spec {spec!r} is ambiguous: it names {named[2]} and the file {path.resolve()}; write "
                f"{hint} for the file"
                + (f" or torchvision:{spec} for the architecture" if named[0] == "torchvision" else "")
                + f", or rename the file. Model specs: {_schemes_text()}"
            )
        return named[0], named[1]
    if path.is_file():
        return "file", path
    raise ModelError(
        f"unknown model {spec!r}: not a registered model ({', '.join(list_models())}), not a torchvision "
        f"architecture, not an existing file and not a module:function factory. Model specs: {_schemes_text()}"
    )


class _Loaded(NamedTuple):
    """What a scheme's loader returns to :func:`load_model`."""

    net: torch.nn.Module
    preprocessing: Preprocessing
    name: str
    digest: str | None = None
    background_class: bool | None = None


def _from_registry(name: str, weights, preprocessing, model_name: str | None) -> _Loaded:
    spec = MODELS[name]
    net = _call_builder(spec, weights)
    pre = parse_preprocessing(preprocessing) if preprocessing is not None else spec.preprocessing
    # A registered model run with other preprocessing is another model: say so in its name,
    # so results, reports and thresholds never credit the override to the registered model.
    resolved = model_name or (spec.name if pre == spec.preprocessing else f"{spec.name}+custom-preprocessing")
    return _Loaded(net, pre, resolved, getattr(net, "_robustness_digest", None))


def _from_torchvision(target: str, weights, preprocessing, model_name: str | None) -> _Loaded:
    arch_name, _, enum_name = target.partition(":")
    net, tv_pre = _torchvision_model(arch_name, enum_name or "DEFAULT", weights)
    resolved = model_name or target.replace(":", "-")
    if weights in ("default", None):
        pre = parse_preprocessing(preprocessing) if preprocessing is not None else tv_pre
    else:
        pre = _need_preprocessing(preprocessing, resolved)
    return _Loaded(net, pre, resolved)


def _from_file(path: Path, weights, preprocessing, arch: str | None, model_name: str | None) -> _Loaded:
    """A TorchScript archive or a state dict, told apart by the file's content (:func:`_is_torchscript`)."""
    resolved = model_name or path.stem
    digest = None
    if _is_torchscript(path):
        if weights not in ("default", None):
            raise ModelError(f"model {resolved}: {path} is TorchScript; it carries its own weights (drop weights=)")
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
    return _Loaded(net, _need_preprocessing(preprocessing, resolved), resolved, digest)


def _from_factory(text: str, weights, preprocessing, model_name: str | None, background_class) -> _Loaded:
    built = _import_factory(text)()
    resolved = model_name or text.split(":", 1)[1]
    if isinstance(built, Classifier):
        if preprocessing is not None:
            built.preprocessing = parse_preprocessing(preprocessing)
        built.name = model_name or built.name
        net, pre, resolved = built.net, built.preprocessing, built.name
        if background_class is None:
            background_class = built.background_class or None
    elif isinstance(built, torch.nn.Module):
        net = built
        pre = _need_preprocessing(preprocessing, resolved)
    else:
        raise ModelError(f"model factory {text!r} returned {type(built).__name__}, not a torch.nn.Module")
    if weights not in ("default", None):
        _load_into(net, weights, resolved)
    return _Loaded(net, pre, resolved, None, background_class)


def _from_object(net: torch.nn.Module, weights, preprocessing, model_name: str | None) -> _Loaded:
    resolved = model_name or type(net).__name__
    pre = _need_preprocessing(preprocessing, resolved)
    if weights not in ("default", None):
        _load_into(net, weights, resolved)
    return _Loaded(net, pre, resolved)


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

    The spec ``name`` is read by :func:`model_scheme` (one scheme, decided from the spelling):

    * ``NAME``: a registered model (:func:`list_models`), or a bare torchvision architecture name
      (``resnet18``) that is not registered;
    * ``torchvision:ARCH[:WEIGHTS]``: torchvision's ``ARCH`` with its weights enum member (``DEFAULT``
      when omitted) and the preprocessing of that enum (``weights_enum.transforms()``);
    * ``timm:NAME[.TAG]``: ``timm.create_model(NAME, pretrained=...)`` with the preprocessing of timm's
      own data config (:func:`robustness.models.timm_models.timm_preprocessing`); needs the ``timm``
      extra;
    * ``package.module:function``: a factory returning an ``nn.Module`` (or a ready :class:`Classifier`);
    * a path (``str`` with a ``/`` or a weights suffix, an existing file, or a ``Path``): a TorchScript
      archive or a state dict, told apart by reading the file: a TorchScript archive is a zip holding
      ``*/constants.pkl`` or ``*/code/`` (what ``torch.jit.save`` writes) and is loaded with
      ``torch.jit.load``; anything else is read as a ``torch.save`` checkpoint with
      ``weights_only=True`` and needs ``arch=`` (a torchvision architecture);
    * an ``nn.Module`` object (e.g. from your conftest.py), or a :class:`Classifier` (returned as is).

    Args:
        name: the model spec (above).
        device: where to put it (default: where the network already is; CPU for built-in models);
            checked by :func:`robustness.settings.check_device` and against the devices the model
            declares (:attr:`Classifier.devices`).
        weights: ``"default"`` (the model's own weights; for ``timm:`` the pretrained weights from the
            Hugging Face cache, downloaded when online), ``None`` (random initialisation, for tests of
            code paths; CLI ``--weights random``), or the path of a state dict loaded with
            ``weights_only=True`` (CLI ``--weights FILE``).
        preprocessing: how the model was trained (see :func:`parse_preprocessing`). Required for
            user models; for registered, torchvision and timm models it overrides the built-in one (a
            registered model with other preprocessing is named ``NAME+custom-preprocessing``).
        arch: torchvision architecture of a state-dict file given as ``name``.
        model_name: the name used in results (default: derived from ``name``: the registered name, the
            torchvision architecture, ``timm-NAME``, the factory's function, the file's stem or the
            module's class).
        background_class: the model outputs 1001 logits with a background class at index 0; drop it.

    Returns:
        a :class:`Classifier` in eval mode whose output is ``(N, 1000)`` (checked with one probe
        forward pass at load time, on the device the network's parameters are on).

    Raises:
        ModelError (a ``ValueError``): unknown or ambiguous spec (the message lists the schemes), bad
            spec, missing preprocessing, bad output shape, a device the model does not support.
        ValueError: ``device`` is not a torch device or not available here (``check_device``).
        FileNotFoundError / ImportError: the weights, the file or the package providing them are missing
            (``timm:`` without timm names the ``timm`` extra).
    """
    if device is not None:
        device = check_device(str(device), "device") or None
    scheme, target = model_scheme(name)
    if scheme == "object" and isinstance(target, Classifier):
        if preprocessing is not None:
            target.preprocessing = parse_preprocessing(preprocessing)
        _check_supports(target, device)
        return target.to(device) if device is not None else target
    if scheme == "object":
        loaded = _from_object(target, weights, preprocessing, model_name)
    elif scheme == "registered":
        loaded = _from_registry(target, weights, preprocessing, model_name)
    elif scheme == "torchvision":
        loaded = _from_torchvision(target, weights, preprocessing, model_name)
    elif scheme == "timm":
        from .timm_models import timm_model  # imports timm: only for a timm: spec

        net, timm_pre = timm_model(target, weights)
        pre = parse_preprocessing(preprocessing) if preprocessing is not None else timm_pre
        loaded = _Loaded(net, pre, model_name or f"timm-{target}")
    elif scheme == "factory":
        loaded = _from_factory(target, weights, preprocessing, model_name, background_class)
    else:
        loaded = _from_file(target, weights, preprocessing, arch, model_name)
    if loaded.background_class is not None:
        background_class = loaded.background_class
    classifier = Classifier(loaded.net, loaded.preprocessing, loaded.name, loaded.digest)
    _check_output(classifier, background_class)
    _check_supports(classifier, device)
    return classifier.to(device) if device is not None else classifier


def _check_supports(classifier: Classifier, device: str | None) -> None:
    """Raise :class:`ModelError` when ``classifier`` declares its devices and ``device`` is not one."""
    if device is not None and not classifier.supports(device):
        raise ModelError(
            f"model {classifier.name} cannot run on {device}: it supports {', '.join(classifier.devices)} only"
        )


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
