"""Where each setting comes from: one precedence for the CLI, the pytest plugin and the API.

First wins::

    command-line flag  >  environment variable  >  thresholds.yaml ``defaults``  >  pytest ini  >  built-in default

Each setting (pytest flag; environment variable; thresholds.yaml key; pytest ini key; built-in default):

* thresholds: ``--robustness-thresholds``; ``ROBUSTNESS_THRESHOLDS``; —; ``robustness_thresholds``; ``thresholds.yaml``
* data: ``--robustness-data``; ``ROBUSTNESS_DATA``; ``defaults.dataset``; ``robustness_data``; ``../shared/data/imagenet-val-1024``
* images: ``--robustness-images``; ``ROBUSTNESS_IMAGES``; ``defaults.images``; ``robustness_images``; all images
* device: ``--robustness-device``; ``ROBUSTNESS_DEVICE``; —; ``robustness_device``; cuda when available, else cpu
* cache_dir: ``--robustness-cache-dir``; ``ROBUSTNESS_CACHE_DIR``; —; ``robustness_cache_dir``; ``.robustness-cache``
* no_cache: ``--robustness-no-cache``; ``ROBUSTNESS_NO_CACHE``; —; ``robustness_no_cache``; false
* workers: ``--robustness-workers``; ``ROBUSTNESS_WORKERS``; —; ``robustness_workers``; min(2, cpus)
* batch_size: ``--robustness-batch-size``; ``ROBUSTNESS_BATCH_SIZE``; —; ``robustness_batch_size``; 32
* margin: ``--robustness-margin``; ``ROBUSTNESS_MARGIN``; —; ``robustness_margin``; 0.05

The CLI's flags drop the ``robustness-`` prefix (``--data``, ``--device``, ...). Relative paths:
flags and environment variables are relative to the working directory, ``defaults.dataset`` to the
thresholds file's folder, ini values (and, under pytest, the built-in defaults) to pytest's rootdir.

This module imports nothing heavy (no torch, numpy, Pillow): the pytest plugin uses it in every
pytest session. :func:`check_device` imports torch only when asked about a device.
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "Setting",
    "SETTINGS",
    "Resolved",
    "SettingError",
    "resolve",
    "positive_int",
    "non_negative_int",
    "margin_fraction",
    "boolean",
    "check_device",
    "BadValue",
    "DEFAULT_DATA_DIR",
    "DEFAULT_CACHE_DIR",
    "DEFAULT_THRESHOLDS",
]

#: Built-in default image folder (relative: to the working directory for the CLI, the rootdir under pytest).
DEFAULT_DATA_DIR = os.path.join("..", "shared", "data", "imagenet-val-1024")
#: Built-in default prediction cache folder (same anchoring as :data:`DEFAULT_DATA_DIR`).
DEFAULT_CACHE_DIR = ".robustness-cache"
#: Built-in default thresholds file.
DEFAULT_THRESHOLDS = "thresholds.yaml"


class SettingError(ValueError):
    """A setting's value is malformed; the message names the layer it came from (flag, variable, file, ini)."""


# ------------------------------------------------------------------------------------------ parsers


class BadValue(argparse.ArgumentTypeError, ValueError):
    """A value that does not parse: argparse shows it as a usage error, other callers catch ``ValueError``."""


def _integer_at_least(text: str | int, minimum: int) -> int:
    try:
        value = int(text)
    except (TypeError, ValueError):
        raise BadValue(f"must be an integer >= {minimum}, got {text!r}") from None
    if value < minimum:
        raise BadValue(f"must be an integer >= {minimum}, got {text}")
    return value


def positive_int(text: str | int) -> int:
    """An integer >= 1 (image counts, batch sizes). Raises :class:`BadValue`."""
    return _integer_at_least(text, 1)


def non_negative_int(text: str | int) -> int:
    """An integer >= 0 (seeds, worker counts). Raises :class:`BadValue`."""
    return _integer_at_least(text, 0)


def margin_fraction(text: str | float) -> float:
    """A calibration margin: a fraction in [0, 1) (0.05 = 5 points). Raises :class:`BadValue`."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise BadValue(f"must be a fraction in [0, 1), got {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise BadValue(f"must be a fraction in [0, 1), got {text}")
    return value


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")


def boolean(text: str | bool) -> bool:
    """``1/true/yes/on`` or ``0/false/no/off`` (any case). Raises :class:`BadValue`."""
    if isinstance(text, bool):
        return text
    value = str(text).strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise BadValue(f"must be one of 1/true/yes/on or 0/false/no/off, got {text!r}")


def _text(text: str) -> str:
    return str(text)


# ------------------------------------------------------------------------------------------ settings


@dataclass(frozen=True)
class Setting:
    """One setting and its names in every layer.

    Attributes:
        name: the key of :data:`SETTINGS` (``data``, ``images``, ...).
        flag: the pytest option (the CLI's drops ``robustness-``).
        env: the environment variable.
        defaults_key: the key under thresholds.yaml ``defaults`` (``None``: not settable there).
        ini: the pytest ini key.
        parse: turns a variable's or ini value's text into the value; raises ``ValueError``.
        default: the built-in default (``None``: decided downstream, e.g. all images, cuda when available).
    """

    name: str
    flag: str
    env: str
    defaults_key: str | None
    ini: str
    parse: Callable[[str], Any]
    default: Any


SETTINGS: Mapping[str, Setting] = {
    s.name: s
    for s in (
        Setting(
            "thresholds",
            "--robustness-thresholds",
            "ROBUSTNESS_THRESHOLDS",
            None,
            "robustness_thresholds",
            _text,
            DEFAULT_THRESHOLDS,
        ),
        Setting("data", "--robustness-data", "ROBUSTNESS_DATA", "dataset", "robustness_data", _text, DEFAULT_DATA_DIR),
        Setting(
            "images", "--robustness-images", "ROBUSTNESS_IMAGES", "images", "robustness_images", positive_int, None
        ),
        Setting("device", "--robustness-device", "ROBUSTNESS_DEVICE", None, "robustness_device", _text, None),
        Setting(
            "cache_dir",
            "--robustness-cache-dir",
            "ROBUSTNESS_CACHE_DIR",
            None,
            "robustness_cache_dir",
            _text,
            DEFAULT_CACHE_DIR,
        ),
        Setting(
            "no_cache", "--robustness-no-cache", "ROBUSTNESS_NO_CACHE", None, "robustness_no_cache", boolean, False
        ),
        Setting(
            "workers", "--robustness-workers", "ROBUSTNESS_WORKERS", None, "robustness_workers", non_negative_int, None
        ),
        Setting(
            "batch_size",
            "--robustness-batch-size",
            "ROBUSTNESS_BATCH_SIZE",
            None,
            "robustness_batch_size",
            positive_int,
            32,
        ),
        Setting("margin", "--robustness-margin", "ROBUSTNESS_MARGIN", None, "robustness_margin", margin_fraction, 0.05),
    )
}


@dataclass(frozen=True)
class Resolved:
    """A resolved setting: its ``value`` and the layer it came from.

    ``layer`` is one of ``flag``, ``env``, ``file``, ``ini``, ``default``; ``source`` names it for
    messages (``--robustness-data``, ``$ROBUSTNESS_DATA``, ``thresholds.yaml defaults.dataset``,
    ``ini robustness_data``, ``built-in default``).
    """

    value: Any
    layer: str
    source: str


def _unset(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.strip() == "")


def resolve(
    name: str,
    *,
    flag: Any = None,
    flag_name: str | None = None,
    environ: Mapping[str, str] | None = None,
    file: Any = None,
    file_name: str = "thresholds.yaml",
    ini: Any = None,
    default: Any = ...,
) -> Resolved:
    """Resolve setting ``name``: flag > environment variable > thresholds.yaml defaults > ini > default.

    Args:
        name: a key of :data:`SETTINGS`.
        flag: the command-line value, already parsed (``None``: not given).
        flag_name: how the caller spells the flag in messages (default the pytest option).
        environ: the environment (default ``os.environ``); an empty variable counts as unset.
        file: the thresholds file's ``defaults`` value (``None``: not set), already validated.
        file_name: the thresholds file, for messages.
        ini: the pytest ini value as text or parsed (``None`` or ``""``: not set); text is parsed.
        default: overrides the built-in default (e.g. anchored to pytest's rootdir).

    Returns:
        a :class:`Resolved` (value, layer, source).

    Raises:
        SettingError: an environment or ini value that does not parse, naming the variable or key.
        KeyError: ``name`` is not a setting.
    """
    setting = SETTINGS[name]
    environ = os.environ if environ is None else environ
    if not _unset(flag) and flag is not False:
        return Resolved(flag, "flag", flag_name or setting.flag)
    text = environ.get(setting.env)
    if not _unset(text):
        try:
            return Resolved(setting.parse(text), "env", f"${setting.env}")
        except ValueError as error:
            raise SettingError(f"${setting.env}={text!r}: {error}") from None
    if setting.defaults_key is not None and not _unset(file):
        return Resolved(file, "file", f"{file_name} defaults.{setting.defaults_key}")
    if not _unset(ini) and not (ini is False and setting.parse is boolean):
        try:
            value = setting.parse(ini) if isinstance(ini, str) else ini
        except ValueError as error:
            raise SettingError(f"ini {setting.ini} = {ini!r}: {error}") from None
        return Resolved(value, "ini", f"ini {setting.ini}")
    return Resolved(setting.default if default is ... else default, "default", "built-in default")


# ------------------------------------------------------------------------------------------ device

_DEVICE = re.compile(r"^(?P<type>[a-z_]+)(?::(?P<index>\d+))?$")
_DEVICE_TYPES = ("cpu", "cuda", "mps", "xpu")
_ALIASES = {"gpu": "cuda", "cude": "cuda", "nvidia": "cuda", "metal": "mps", "apple": "mps"}


def check_device(device: str | None, option: str = "--device") -> str | None:
    """Validate a torch device string and check that it is available here; returns it unchanged.

    Accepted: ``cpu``, ``cuda``, ``cuda:N`` (N < the number of CUDA devices), ``mps``, ``xpu[:N]``;
    ``None`` or ``""`` (automatic: cuda when available, else cpu) is returned as ``None``.
    The syntax is checked without torch; torch is imported only to ask what is available.

    Args:
        device: the device string.
        option: how the caller names the setting in messages (``--device``, ``--robustness-device``,
            ``$ROBUSTNESS_DEVICE``).

    Raises:
        ValueError: e.g. ``--device cuda: CUDA is not available on this machine (use cpu)``,
            ``--device gpu: not a torch device (did you mean 'cuda'?)``,
            ``--device cuda:3: this machine has 1 CUDA device (cuda:0)``.
    """
    if device is None or str(device).strip() == "":
        return None
    text = str(device).strip()
    match = _DEVICE.match(text.lower())
    kind = match.group("type") if match else None
    if kind not in _DEVICE_TYPES:
        guess = _ALIASES.get(kind or "") or next(
            iter(difflib.get_close_matches(kind or text.lower(), _DEVICE_TYPES, n=1)), None
        )
        suggestion = guess + text[len(kind) :] if guess and kind else guess
        hint = f" (did you mean {suggestion!r}?)" if guess else ""
        raise ValueError(f"{option} {text}: not a torch device{hint}; use cpu, cuda, cuda:N or mps")
    if kind == "cpu":
        if match.group("index") not in (None, "0"):
            raise ValueError(f"{option} {text}: not a torch device; use cpu")
        return text
    import torch

    index = None if match.group("index") is None else int(match.group("index"))
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{option} {text}: CUDA is not available on this machine (use cpu)")
        count = torch.cuda.device_count()
        if index is not None and index >= count:
            raise ValueError(
                f"{option} {text}: this machine has {count} CUDA device{'s' * (count != 1)} (cuda:0..cuda:{count - 1})"
            )
    elif kind == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ValueError(f"{option} {text}: Apple MPS is not available on this machine (use cpu)")
    else:
        backend = getattr(torch, kind, None)
        if backend is None or not backend.is_available():
            raise ValueError(f"{option} {text}: {kind.upper()} is not available on this machine (use cpu)")
    return text
