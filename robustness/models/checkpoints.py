"""Reading weight files: state dicts (``torch.load(..., weights_only=True)``, with numpy scalars
allowed and pickled code refused with a message naming it), TorchScript archives (``torch.jit.load``)
and the check that tells the two apart by content (:func:`_is_torchscript`); the models folder lookup
(:func:`_weights_file`)."""

from __future__ import annotations

import os
import re
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch

from ..weights import DEFAULT_MODELS_DIR, MODELS_ENV_VAR, resolve_models_dir
from .errors import ModelError

__all__: list[str] = []  # helpers of the loaders and the zoo

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
