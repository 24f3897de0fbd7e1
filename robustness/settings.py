"""Where each setting comes from: one precedence for the CLI, the pytest plugin and the API.

First wins::

    command-line flag  >  environment variable  >  thresholds.yaml ``defaults``  >  pytest ini  >  built-in default

Each concept has one name in every layer, in one table, :data:`SETTINGS`: the CLI flag (``--images``),
the pytest option (``--robustness-images``), the ini key (``robustness_images``), the thresholds.yaml
``defaults:`` key (``images``), the environment variable (``ROBUSTNESS_IMAGES``), the default, the parser
and the help. The CLI's options, the pytest options and ini keys and the docs' table
(:func:`settings_table`) are built from it. Old spellings (``run --limit``) are listed as ``aliases``
and accepted for one release with a note naming the new one.

Relative paths, one rule: flags and environment variables are relative to the working directory,
``defaults.dataset``, ``defaults.paired.baseline`` and the default baseline folder to the thresholds
file's folder, pytest ini values to pytest's rootdir; built-in
defaults (the image folder, the prediction cache ``.robustness-cache``) to the working directory for the
CLI and the API (:func:`robustness.cache.default_cache_dir`, used by ``evaluate(cache=True)``) and to
the rootdir under pytest (where pytest anchors everything it reads from its ini file). The API caches
only when asked (``evaluate(cache=...)``); the CLI and the gate cache unless ``no_cache`` is set.

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
from pathlib import Path
from typing import Any

__all__ = [
    "Setting",
    "SETTINGS",
    "settings_table",
    "COMMAND_ALIASES",
    "deprecated_spellings",
    "cli_flag_help",
    "pytest_option_help",
    "Resolved",
    "SettingError",
    "resolve",
    "positive_int",
    "non_negative_int",
    "margin_fraction",
    "boolean",
    "engine_name",
    "ENGINES",
    "check_cache_dir",
    "check_device",
    "CUBLAS_WORKSPACE_VARIABLE",
    "CUBLAS_DETERMINISTIC_CONFIGS",
    "set_cublas_workspace_config",
    "pipeline_choice",
    "PIPELINES",
    "BadValue",
    "DEFAULT_DATA_DIR",
    "DEFAULT_CACHE_DIR",
    "DEFAULT_THRESHOLDS",
    "DEFAULT_BASELINE_DIR",
]

#: Built-in default image folder (relative: to the working directory for the CLI, the rootdir under pytest).
DEFAULT_DATA_DIR = os.path.join("..", "shared", "data", "imagenet-val-1024")
#: Built-in default prediction cache folder (same anchoring as :data:`DEFAULT_DATA_DIR`).
DEFAULT_CACHE_DIR = ".robustness-cache"
#: Built-in default thresholds file.
DEFAULT_THRESHOLDS = "thresholds.yaml"
#: Built-in default baseline folder, relative to the thresholds file's folder.
DEFAULT_BASELINE_DIR = "robustness-baseline"


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


#: The values of the ``pipeline`` setting (:mod:`robustness.device_pipeline`).
PIPELINES = ("auto", "device", "reference")


def pipeline_choice(text: str) -> str:
    """One of :data:`PIPELINES` (any case, surrounding blanks ignored). Raises :class:`BadValue`."""
    value = str(text).strip().lower()
    if value not in PIPELINES:
        raise BadValue(f"must be one of {', '.join(PIPELINES)}, got {text!r}")
    return value


#: The engines :func:`robustness.evaluate` runs the work on: ``local`` (DataLoader workers on this
#: machine) and ``ray`` (a Ray cluster through Ray Data, :mod:`robustness.ray_engine`).
ENGINES = ("local", "ray")


def engine_name(text: str) -> str:
    """One of :data:`ENGINES` (any case, spaces stripped). Raises :class:`BadValue` naming them."""
    value = str(text).strip().lower()
    if value not in ENGINES:
        raise BadValue(f"must be one of {', '.join(ENGINES)}, got {text!r}")
    return value


def _text(text: str) -> str:
    return str(text)


# ------------------------------------------------------------------------------------------ settings


@dataclass(frozen=True)
class Setting:
    """One concept and its one name in every layer (``None``: the layer cannot set it).

    Attributes:
        name: the key of :data:`SETTINGS` and the ``argparse`` dest (``data``, ``images``, ...).
        label: what it is, in words (first column of the docs table).
        help: one line for ``--help`` (the sources and default are appended).
        cli: the ``robustness`` flag (``--images``).
        pytest: the pytest option (``--robustness-images``).
        ini: the pytest ini key (``robustness_images``).
        yaml: the key under thresholds.yaml ``defaults:`` (``images``).
        env: the environment variable (``ROBUSTNESS_IMAGES``).
        parse: turns a flag's, variable's or ini value's text into the value; raises ``ValueError``
            (:class:`BadValue`, which argparse shows as a usage error naming the flag).
        default: the built-in default (``None``: decided downstream, e.g. all images, cuda when available).
        default_text: the default in words, for help texts and the docs table.
        metavar: the flag's value in ``--help`` (``N``, ``DIR``); ``None`` for a switch.
        aliases: deprecated CLI spellings, accepted for one release with a note naming :attr:`cli`.
    """

    name: str
    label: str
    help: str
    cli: str | None
    pytest: str | None
    ini: str | None
    yaml: str | None
    env: str | None
    parse: Callable[[str], Any]
    default: Any
    default_text: str
    metavar: str | None = None
    aliases: tuple[str, ...] = ()

    @property
    def switch(self) -> bool:
        """A flag without a value (``--no-cache``)."""
        return self.metavar is None

    @property
    def text(self) -> bool:
        """The value is kept as text (a path, a device): no ``type=`` for argparse."""
        return self.parse is _text

    @property
    def flag(self) -> str | None:
        """The pytest option (kept for callers of the first version of this table)."""
        return self.pytest

    @property
    def defaults_key(self) -> str | None:
        """The thresholds.yaml ``defaults:`` key (kept for callers of the first version of this table)."""
        return self.yaml

    def sources(self, *, file: bool = True) -> str:
        """Where else the CLI takes it from, for help texts: ``$ROBUSTNESS_IMAGES, thresholds.yaml
        defaults.images, else all`` (``file=False``: a command that reads no thresholds file)."""
        parts = [
            f"${self.env}" if self.env else "",
            f"thresholds.yaml defaults.{self.yaml}" if self.yaml and file else "",
        ]
        return ", ".join(p for p in parts if p) + (", else " if any(parts) else "default ") + self.default_text


def _setting(name, label, help, cli, yaml=None, *, parse=_text, default=None, default_text="", metavar="X",
             aliases=(), gate=True):  # fmt: skip
    """A row whose pytest option, ini key and variable follow the one rule: ``robustness`` + the CLI name."""
    stem = cli[2:] if cli else name
    return Setting(
        name=name,
        label=label,
        help=help,
        cli=cli,
        pytest=f"--robustness-{stem}" if gate else None,
        ini=f"robustness_{stem.replace('-', '_')}" if gate else None,
        yaml=yaml,
        env=f"ROBUSTNESS_{stem.replace('-', '_').upper()}" if gate else None,
        parse=parse,
        default=default,
        default_text=default_text,
        metavar=metavar,
        aliases=tuple(aliases),
    )


#: One row per concept: the CLI's flags, the pytest options and ini keys, the thresholds.yaml
#: ``defaults:`` keys, the environment variables and the docs' settings table are all built from it.
SETTINGS: Mapping[str, Setting] = {
    s.name: s
    for s in (
        _setting(
            "thresholds",
            "thresholds file",
            "thresholds file",
            "--thresholds",
            default=DEFAULT_THRESHOLDS,
            default_text="thresholds.yaml",
            metavar="FILE",
        ),
        _setting(
            "data",
            "image folder",
            "image folder (<wnid>/<file> or <class name>/<file>)",
            "--data",
            "data",
            default=DEFAULT_DATA_DIR,
            default_text=DEFAULT_DATA_DIR.replace(os.sep, "/"),
            metavar="DIR",
        ),
        _setting(
            "classes",
            "class list",
            "class list file: one class name per line, in the model's output order",
            "--classes",
            "classes",
            default_text="classes.txt in the image folder, else ImageNet-1k (wnid folders) or the sorted folder names",
            metavar="FILE",
        ),
        _setting(
            "restrict_to_dataset_classes",
            "restrict to dataset classes",
            "score an ImageNet-1k model on a subset of its classes (ImageNet-R / ImageNet-A convention): its "
            "logits are restricted to the dataset's classes (wnids)",
            "--restrict-to-dataset-classes",
            "restrict_to_dataset_classes",
            parse=boolean,
            default=False,
            default_text="false",
            metavar=None,
        ),
        _setting(
            "images",
            "images per condition",
            "use the first N images in file-name order",
            "--images",
            "images",
            parse=positive_int,
            default_text="all",
            metavar="N",
            aliases=("--limit",),
        ),
        _setting(
            "device",
            "device",
            "torch device: cpu, cuda, cuda:N, mps",
            "--device",
            default_text="cuda when available, else cpu",
            metavar="DEVICE",
        ),
        _setting(
            "allow_tf32",
            "allow TF32",
            "on CUDA, allow TF32 matmuls and convolutions: faster on Ampere and later, but near-tied classes can "
            "swap (keyed in the cache); no effect on the CPU",
            "--allow-tf32",
            "allow_tf32",
            parse=boolean,
            default=False,
            default_text="false",
            metavar=None,
        ),
        _setting(
            "cache_dir",
            "prediction cache",
            "prediction cache folder",
            "--cache-dir",
            default=DEFAULT_CACHE_DIR,
            default_text=DEFAULT_CACHE_DIR,
            metavar="DIR",
        ),
        _setting(
            "no_cache",
            "no cache",
            "do not read or write the prediction cache",
            "--no-cache",
            parse=boolean,
            default=False,
            default_text="false",
            metavar=None,
        ),
        _setting(
            "workers",
            "DataLoader workers",
            "DataLoader worker processes (0: in-process)",
            "--workers",
            parse=non_negative_int,
            default_text="min(2, cpus) on cpu, max(that, cpus - 1) on cuda",
            metavar="N",
        ),
        _setting(
            "pipeline",
            "pipeline",
            "where blur, noise, contrast and the model's preprocessing run: device (batched torch ops on the "
            "inference device; workers only decode and run JPEG / JPEG 2000), reference (Pillow / numpy in "
            "the workers: the paper's numbers) or auto",
            "--pipeline",
            parse=pipeline_choice,
            default="auto",
            default_text="auto: device on cuda, else reference",
            metavar="MODE",
        ),
        _setting(
            "batch_size",
            "batch size",
            "images per forward pass (does not change the numbers)",
            "--batch-size",
            parse=positive_int,
            default=32,
            default_text="32",
            metavar="N",
        ),
        _setting(
            "baseline_dir",
            "baseline folder",
            "folder of the baseline predictions for the paired check (calibration writes them there)",
            "--baseline-dir",
            "paired.baseline",
            default_text=f"{DEFAULT_BASELINE_DIR} next to the thresholds file",
            metavar="DIR",
        ),
        _setting(
            "margin",
            "calibration margin",
            "subtracted from each measured accuracy when calibrating (fraction)",
            "--margin",
            parse=margin_fraction,
            default=0.05,
            default_text="0.05",
            metavar="M",
        ),
        _setting(
            "seed",
            "base seed",
            "base seed of the noise",
            "--seed",
            "seed",
            parse=non_negative_int,
            default=0,
            default_text="0",
            metavar="S",
            gate=False,
        ),
        _setting(
            "engine",
            "engine",
            "where the per-item work runs: local (DataLoader workers on this machine) or ray (a Ray cluster "
            "through Ray Data; pip install 'robustness[ray]')",
            "--engine",
            parse=engine_name,
            default="local",
            default_text="local",
            metavar="ENGINE",
            gate=False,
        ),
        _setting(
            "ray_address",
            "Ray cluster",
            "the Ray cluster to join with --engine ray: auto, HOST:6379, ray://HOST:10001",
            "--ray-address",
            default_text="$RAY_ADDRESS, else a local Ray instance",
            metavar="ADDR",
            gate=False,
        ),
    )
}


#: Deprecated spellings of command options that are not settings: ``{command: {old: new}}``
#: (accepted until the next release, with a note naming the new one; listed under the docs' table).
COMMAND_ALIASES: Mapping[str, Mapping[str, str]] = {"activations": {"--images": "--average-over"}}


def deprecated_spellings() -> list[tuple[str, str, str]]:
    """Every deprecated CLI spelling as ``(commands, old, new)``: the settings' aliases (every command
    that has the setting) and :data:`COMMAND_ALIASES`."""
    found = [(f"commands with {s.cli}", alias, s.cli) for s in SETTINGS.values() for alias in s.aliases]
    found += [(command, old, new) for command, aliases in COMMAND_ALIASES.items() for old, new in aliases.items()]
    return found


def cli_flag_help(setting: Setting, *, file: bool = False) -> str:
    """The ``--help`` line of a CLI flag: the setting's help, then its other sources and default
    (``file``: the command reads thresholds.yaml ``defaults``, as ``calibrate`` does)."""
    return f"{setting.help}; {setting.sources(file=file)}".replace("%", "%%")


def pytest_option_help(setting: Setting) -> str:
    """The ``--help`` line of a pytest option: the help, the variable, the YAML and ini keys, the default."""
    parts = [f"${setting.env}" if setting.env else "", f"defaults.{setting.yaml}" if setting.yaml else ""]
    parts.append(f"ini {setting.ini}" if setting.ini else "")
    anchored = " (relative to the rootdir)" if setting.metavar in ("DIR", "FILE") else ""
    return f"{setting.help}; " + ", ".join(p for p in parts if p) + f", default {setting.default_text}{anchored}"


def settings_table() -> str:
    """The docs' settings table (Markdown), one row per :data:`SETTINGS` entry; ``—``: not settable there.

    Columns: setting, CLI flag, pytest option, environment variable, thresholds.yaml ``defaults:`` key,
    pytest ini key, built-in default, deprecated spellings (accepted for one release).
    """

    def code(text: str | None, value: str = "") -> str:
        return f"`{text}{value}`" if text else "—"

    rows = [
        "| setting | CLI flag | pytest option | variable | thresholds.yaml | ini key | default | deprecated |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    literals = {DEFAULT_THRESHOLDS, DEFAULT_DATA_DIR.replace(os.sep, "/"), DEFAULT_CACHE_DIR, DEFAULT_BASELINE_DIR}
    for s in SETTINGS.values():
        value = "" if s.switch else f" {s.metavar}"
        default = s.default_text
        for literal in literals:  # paths and file names in code font
            default = re.sub(rf"(?<![\w/.-]){re.escape(literal)}(?![\w/-])", f"`{literal}`", default)
        rows.append(
            f"| {s.label} | {code(s.cli, value)} | {code(s.pytest, '' if s.switch else f'={s.metavar}')} | "
            f"{code(s.env, '=1' if s.switch else '')} | {code(s.yaml and f'defaults.{s.yaml}')} | {code(s.ini)} | "
            f"{default} | {', '.join(code(a) for a in s.aliases) or '—'} |"
        )
    notes = "; ".join(f"`{old}` → `{new}` ({where})" for where, old, new in deprecated_spellings())
    return "\n".join(rows) + f"\n\nDeprecated spellings, accepted until the next release with a note: {notes}.\n"


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
        return Resolved(flag, "flag", flag_name or setting.pytest or setting.cli)
    text = environ.get(setting.env) if setting.env else None
    if not _unset(text):
        try:
            return Resolved(setting.parse(text), "env", f"${setting.env}")
        except ValueError as error:
            raise SettingError(f"${setting.env}={text!r}: {error}") from None
    if setting.yaml is not None and not _unset(file):
        return Resolved(file, "file", f"{file_name} defaults.{setting.yaml}")
    if setting.ini is not None and not _unset(ini) and not (ini is False and setting.parse is boolean):
        try:
            value = setting.parse(ini) if isinstance(ini, str) else ini
        except ValueError as error:
            raise SettingError(f"ini {setting.ini} = {ini!r}: {error}") from None
        return Resolved(value, "ini", f"ini {setting.ini}")
    return Resolved(setting.default if default is ... else default, "default", "built-in default")


# ------------------------------------------------------------------------------------------ device

#: The environment variable that makes cuBLAS reproducible (NVIDIA cuBLAS documentation, "Results
#: reproducibility"; PyTorch documentation, "Reproducibility" and ``torch.use_deterministic_algorithms``).
#: PyTorch reads it once, at the process's first cuBLAS call, and with deterministic algorithms on it
#: refuses every cuBLAS operation unless it holds one of :data:`CUBLAS_DETERMINISTIC_CONFIGS`.
CUBLAS_WORKSPACE_VARIABLE = "CUBLAS_WORKSPACE_CONFIG"
#: The values PyTorch accepts as deterministic: 8 buffers of 4096 KiB (32 MiB per stream; PyTorch's own
#: default size on Hopper GPUs) or 8 of 16 KiB (less memory, possibly slower). The first is what robustness sets.
CUBLAS_DETERMINISTIC_CONFIGS = (":4096:8", ":16:8")


def set_cublas_workspace_config(environ: dict[str, str] | None = None) -> bool:
    """Set ``$CUBLAS_WORKSPACE_CONFIG`` to ``:4096:8`` when it is unset or empty; a value already there is
    left alone (:func:`robustness.evaluation.inference_settings` refuses one that is not deterministic).

    Called wherever robustness chooses a CUDA device (:func:`check_device`,
    :func:`robustness.evaluation.inference_device`), i.e. before robustness moves a model there, because
    PyTorch reads the variable once, at the process's first cuBLAS call; it stays set for the rest of the
    process (and its children), as an ``export`` would. Imports nothing.

    Args:
        environ: the environment to change (default ``os.environ``).

    Returns:
        True when this call set it, False when it was already set.
    """
    environ = os.environ if environ is None else environ
    if environ.get(CUBLAS_WORKSPACE_VARIABLE, "").strip():
        return False
    environ[CUBLAS_WORKSPACE_VARIABLE] = CUBLAS_DETERMINISTIC_CONFIGS[0]
    return True


_DEVICE = re.compile(r"^(?P<type>[a-z_]+)(?::(?P<index>\d+))?$")
_DEVICE_TYPES = ("cpu", "cuda", "mps", "xpu")
_ALIASES = {"gpu": "cuda", "cude": "cuda", "nvidia": "cuda", "metal": "mps", "apple": "mps"}


def check_cache_dir(path: str | os.PathLike, option: str = "--cache-dir") -> None:
    """Check that the prediction cache folder ``path`` is, or can become, a folder: the path itself and
    the nearest part of it that exists must be folders, not files (otherwise the first write fails
    with a bare ``[Errno 20] Not a directory``, naming neither the setting nor the path). Used by the
    CLI (exit 2) and the pytest plugin (one collection error).

    Raises:
        SettingError: ``path``, or a folder above it, is a file; the message names ``option`` (where the
            value came from: flag, variable, ini) and the path.
    """
    path = Path(path)
    for part in (path, *path.parents):
        if part.exists():
            if not part.is_dir():
                what = "is a file" if part == path else f"lies inside {part}, which is a file"
                raise SettingError(
                    f"{option} {path} {what}, not a folder: give the prediction cache folder "
                    "(created if missing), or turn the cache off"
                )
            return


def check_device(device: str | None, option: str = "--device") -> str | None:
    """Validate a torch device string and check that it is available here; returns it unchanged.

    Accepted: ``cpu``, ``cuda``, ``cuda:N`` (N < the number of CUDA devices), ``mps``, ``xpu[:N]``;
    ``None`` or ``""`` (automatic: cuda when available, else cpu) is returned as ``None``.
    The syntax is checked without torch; torch is imported only to ask what is available. A valid CUDA
    device also sets ``$CUBLAS_WORKSPACE_CONFIG`` when unset (:func:`set_cublas_workspace_config`).

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
        set_cublas_workspace_config()  # before anything runs there: see the function
    elif kind == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ValueError(f"{option} {text}: Apple MPS is not available on this machine (use cpu)")
    else:
        backend = getattr(torch, kind, None)
        if backend is None or not backend.is_available():
            raise ValueError(f"{option} {text}: {kind.upper()} is not available on this machine (use cpu)")
    return text
