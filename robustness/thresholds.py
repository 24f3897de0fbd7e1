"""``thresholds.yaml``: the accuracy a model must keep, per distortion level.

Schema (validated on load with :mod:`jsonschema`, see :func:`thresholds_schema`)::

    version: 1                  # optional; the schema version
    defaults:                   # optional shared settings
      images: 100               # images per condition: the first N of the dataset, in its order
      allow_fewer_images: false # true: judge on fewer (missing or unreadable images) instead of failing
      seed: 0                   # base seed for noise
      data: ../data/val         # image folder, relative to this file (pytest/CLI options override);
                                # `dataset:` is its deprecated spelling (warns; removed in the next release)
      classes: classes.txt      # optional class list (one name per line, the model's output order), relative to this file
      restrict_to_dataset_classes: false  # true: score an ImageNet-1k model on the dataset's classes only
      allow_tf32: false         # true: allow TF32 on CUDA (faster, less exact; keyed in the cache)
      paired:                   # optional paired regression check against a stored baseline
        alpha: 0.05             # fail only on a drop significant at this level (one-sided McNemar)
        metric: top1            # top1 (default) ... top5 (not balanced_accuracy: not a count of images)
        baseline: robustness-baseline   # folder of baseline predictions, relative to this file
    models:
      efficientnet_lite0:       # a registered model (robustness.list_models())
        clean: {top1: 0.70, top5: 0.88}
        blur:
          1: {top1: 0.60}                   # absolute: top-1 >= 60%
          3: {top1_of_clean: 0.80}          # relative: top-1 >= 80% of the measured clean top-1
          5: {top1: 0.30, top5_of_clean: 0.6}
      my_model:
        source: fixture         # not registered: your conftest.py's robustness_model fixture supplies it

Conventions:

* Accuracies are **fractions in [0, 1]** (72% is ``0.72``), never percent.
* Metrics: top-k accuracy ``top1``, ``top2``, ``top3``, ``top4``, ``top5`` and ``balanced_accuracy``
  (mean per-class top-1 recall); ``topK`` (K >= 2) needs a dataset of more than K classes
  (:func:`check_metrics`, run when the dataset is known). K is at most 5 (``top10`` is refused):
  the engine and the prediction cache keep the top-5 predictions per image, from which every
  top-k with k <= 5 is computed exactly.
* ``top1`` / ``top5`` are absolute minimums; ``top1_of_clean`` / ``top5_of_clean`` are minimums
  relative to the same run's clean accuracy of that model (``0.8`` = keep 80% of clean). A level may
  combine them; every bar given must hold. A result equal to its bar passes. A relative bar needs an
  absolute ``clean`` bar for its metric in the same model (otherwise a model with clean accuracy 0%
  would pass it), and the file is refused without one.
* A level is any number in the distortion's valid range (``robustness.DISTORTIONS[name].minimum`` to
  ``.maximum``; integers for JPEG quality), not only the paper's grid: ``jpeg: {50: ..., 75: ...}``,
  ``blur: {0.5: ...}``, ``contrast: {0.25: ...}``. Keys are compared as numbers (``1`` and ``1.0`` are
  the same level, refused as a duplicate). Distortions added with
  :func:`robustness.register_distortion` (e.g. in ``conftest.py``) are accepted like the built-ins.
* The file is read as YAML 1.2 (core schema, ruamel.yaml): ``5e-1`` is the number 0.5, ``010`` is
  the decimal 10 (JPEG quality 10, not octal 8), ``yes``/``no`` are strings. NaN and infinity
  (``.nan``, ``.inf``) are refused for every bar and for ``paired.alpha``.
* A model name must be registered (:func:`robustness.register_model`, e.g. in ``conftest.py``)
  unless its entry says ``source: fixture``: then the pytest fixture ``robustness_model`` (overridden
  in your ``conftest.py``) supplies the model and the name is only a label. Registered names always
  run as themselves, also under a conftest.py that overrides ``robustness_model``.

A wrong file raises :class:`ThresholdsError` listing every problem as ``file:line: key.path: what``
(unknown keys come with a did-you-mean suggestion).
"""

from __future__ import annotations

import difflib
import io
import math
import os
import re
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema

from .conditions import CLEAN, Condition
from .distortions import DISTORTIONS
from .names import METRICS as _NAMES_METRICS
from .names import TOPK_MAX, format_level, top_k

__all__ = [
    "Threshold",
    "Thresholds",
    "PairedSettings",
    "ThresholdsError",
    "Problem",
    "load_thresholds",
    "parse_thresholds",
    "parse_thresholds_text",
    "thresholds_schema",
    "calibrated_bars",
    "update_thresholds_file",
    "METRICS",
    "RELATIVE_METRICS",
    "PAIRED_METRICS",
    "check_metrics",
]

SCHEMA_VERSION = 1
#: The gateable metrics (:data:`robustness.names.METRICS`): top-1 ... top-5 and balanced accuracy.
METRICS = _NAMES_METRICS
#: Each metric as a fraction of the same run's clean value.
RELATIVE_METRICS = tuple(f"{m}_of_clean" for m in METRICS)
#: The metrics the paired McNemar check applies to: per-image right/wrong (not balanced accuracy,
#: which is a mean of per-class recalls, not a count of images).
PAIRED_METRICS = tuple(m for m in METRICS if top_k(m) is not None)
_BAR_KEYS = METRICS + RELATIVE_METRICS
_MODEL_SOURCES = ("registry", "fixture")


# ------------------------------------------------------------------------------------------ errors


@dataclass(frozen=True)
class Problem:
    """One validation problem: ``line`` (1-based, ``None`` when unknown), dotted ``key`` path, ``message``."""

    line: int | None
    key: str
    message: str


class ThresholdsError(ValueError):
    """thresholds.yaml is missing or malformed.

    Attributes:
        path: the file (``None`` when parsed from data).
        problems: every :class:`Problem` found, in line order. ``line`` and ``key`` are the first one's.
    """

    def __init__(self, path: str | os.PathLike | None, problems: list[Problem] | str):
        if isinstance(problems, str):
            problems = [Problem(None, "", problems)]
        self.path = None if path is None else str(path)
        self.problems = problems
        first = problems[0] if problems else Problem(None, "", "")
        self.line, self.key = first.line, first.key
        source = self.path or "thresholds"
        lines = []
        for p in problems:
            where = source if p.line is None else f"{source}:{p.line}"
            lines.append(f"{where}: {p.key}: {p.message}" if p.key else f"{where}: {p.message}")
        header = (
            f"invalid thresholds file ({len(problems)} problem{'s' * (len(problems) != 1)}):\n  "
            if len(problems) > 1
            else ""
        )
        super().__init__(header + "\n  ".join(lines))


# ------------------------------------------------------------------------------------------ schema


#: A level key: a decimal number (YAML numbers arrive as :func:`robustness.names.format_level` text).
LEVEL_PATTERN = r"^[-+]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?$"


def _level_key(level: float) -> str:
    """The canonical text of a level key: ``3``, ``0.5``, ``10`` (:func:`robustness.names.format_level`)."""
    return format_level(level)


def thresholds_schema(known_models: Iterable[str] = (), *, allow_unregistered: bool = False) -> dict:
    """The JSON Schema (draft 2020-12) of a thresholds document whose mapping keys are strings.

    Level keys must be decimal numbers (:data:`LEVEL_PATTERN`); whether each lies in its distortion's
    valid range is checked after the schema (a range on a key is beyond JSON Schema), with the same
    file:line errors. ``known_models`` are the names accepted without
    ``source: fixture``; ``allow_unregistered`` accepts any name (e.g. a report over results of
    models that are not registered here).
    """
    bars = {
        "type": "object",
        "minProperties": 1,
        "propertyNames": {"enum": list(_BAR_KEYS)},
        "additionalProperties": {"type": "number", "minimum": 0, "maximum": 1},
    }
    clean_bars = dict(bars, propertyNames={"enum": list(METRICS)})
    model_props: dict[str, Any] = {CLEAN: clean_bars, "source": {"enum": list(_MODEL_SOURCES)}}
    for name, spec in DISTORTIONS.items():
        model_props[name] = {
            "type": "object",
            "description": f"levels: {spec.label} in {spec.range_text}; paper levels "
            + ", ".join(_level_key(v) for v in spec.levels),
            "minProperties": 1,
            "propertyNames": {"pattern": LEVEL_PATTERN},
            "additionalProperties": bars,
        }
    model = {
        "type": "object",
        "minProperties": 1,
        "propertyNames": {"enum": list(model_props)},
        "properties": model_props,
    }
    unregistered = {"allOf": [model, {"required": ["source"], "properties": {"source": {"const": "fixture"}}}]}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "robustness thresholds.yaml",
        "type": "object",
        "required": ["models"],
        "propertyNames": {"enum": ["version", "defaults", "models"]},
        "properties": {
            "version": {"const": SCHEMA_VERSION},
            "defaults": {
                "type": "object",
                "propertyNames": {
                    "enum": [
                        "images",
                        "seed",
                        "data",
                        "dataset",
                        "classes",
                        "restrict_to_dataset_classes",
                        "paired",
                        "allow_fewer_images",
                        "allow_tf32",
                    ]
                },
                "properties": {
                    "images": {"type": "integer", "minimum": 1},
                    "allow_fewer_images": {"type": "boolean"},
                    "seed": {"type": "integer", "minimum": 0},
                    "data": {"type": "string", "minLength": 1},
                    "dataset": {"type": "string", "minLength": 1, "deprecated": True},
                    "classes": {"type": "string", "minLength": 1},
                    "restrict_to_dataset_classes": {"type": "boolean"},
                    "allow_tf32": {"type": "boolean"},
                    "paired": {
                        "type": "object",
                        "propertyNames": {"enum": ["alpha", "metric", "baseline"]},
                        "properties": {
                            "alpha": {"type": "number", "exclusiveMinimum": 0, "maximum": 0.5},
                            "metric": {"enum": list(PAIRED_METRICS)},
                            "baseline": {"type": "string", "minLength": 1},
                        },
                    },
                },
            },
            "models": {
                "type": "object",
                "minProperties": 1,
                "properties": {name: model for name in known_models},
                "additionalProperties": model if allow_unregistered else unregistered,
            },
        },
    }


# ------------------------------------------------------------------------ YAML with line numbers


class _Document:
    """A YAML document as JSON-like data (string keys) plus the line of every key and value."""

    def __init__(self):
        self.key_lines: dict[tuple, int] = {}
        self.value_lines: dict[tuple, int] = {}
        self.problems: list[Problem] = []

    def line(self, path: tuple) -> int | None:
        while True:
            if path in self.key_lines:
                return self.key_lines[path]
            if path in self.value_lines:
                return self.value_lines[path]
            if not path:
                return None
            path = path[:-1]

    def convert(self, value: Any, path: tuple = (), line: int | None = None) -> Any:
        """Plain data from ruamel.yaml's round-trip objects, recording 1-based lines (``lc`` is 0-based)."""
        from ruamel.yaml.comments import CommentedMap, CommentedSeq

        if line is not None:
            self.value_lines[path] = line
        if isinstance(value, CommentedMap):
            self.value_lines.setdefault(path, value.lc.line + 1)
            out: dict[str, Any] = {}
            for key, item in value.items():
                text = _key_text(key)
                child = path + (text,)
                position = value.lc.data.get(key)  # None for a key merged in with `<<: *anchor`
                key_line = value.lc.line + 1 if position is None else position[0] + 1
                value_line = key_line if position is None else position[2] + 1
                if text in out:  # e.g. `1` and `1.0`: different YAML keys, the same level
                    self.problems.append(
                        Problem(key_line, _dotted(child), f"duplicate key (first on line {self.key_lines[child]})")
                    )
                    continue
                self.key_lines[child] = key_line
                out[text] = self.convert(item, child, value_line)
            return out
        if isinstance(value, CommentedSeq):
            return [self.convert(item, path + (i,), value.lc.item(i)[0] + 1) for i, item in enumerate(value)]
        if isinstance(value, bool) or value is None:
            return value
        if isinstance(value, int):
            return int(value)
        if isinstance(value, float):
            return float(value)
        if isinstance(value, str):
            return str(value)
        return value  # dates, tagged scalars: left for the schema to refuse


def _key_text(key: Any) -> str:
    """A mapping key as text: numbers in canonical ``%g`` form (``3``, ``0.5``), anything else ``str()``."""
    if isinstance(key, bool) or not isinstance(key, (str, int, float)):
        return str(key)
    if isinstance(key, (int, float)):
        return _level_key(key) if math.isfinite(key) else str(float(key))
    return str(key)


def _dotted(path: Iterable) -> str:
    return ".".join(str(p) for p in path)


def _yaml_reader():
    """ruamel.yaml's round-trip loader: YAML 1.2 core schema (``5e-1`` is 0.5, ``010`` is 10, ``yes``
    is a string), every key and value with its line."""
    from ruamel.yaml import YAML

    return YAML(typ="rt")


def _duplicate_problem(text: str, error) -> Problem:
    """A :class:`Problem` for ruamel.yaml's ``DuplicateKeyError``: the duplicate's line and key path,
    and the line of the first occurrence."""
    import re

    line = error.problem_mark.line + 1
    reader = _yaml_reader()
    reader.allow_duplicate_keys = True  # documented switch: keeps the first occurrence
    match = re.search(r'duplicate key "(.*?)" with value', str(error.problem or ""))
    try:
        data = reader.load(text)
    except Exception:  # noqa: BLE001 - only refines the message
        data = None
    mark = error.context_mark

    def find(node, path):
        from ruamel.yaml.comments import CommentedMap, CommentedSeq

        if isinstance(node, CommentedMap):
            if mark is not None and (node.lc.line, node.lc.col) == (mark.line, mark.column):
                return node, path
            items = [(_key_text(k), v) for k, v in node.items()]
        elif isinstance(node, CommentedSeq):
            items = list(enumerate(node))
        else:
            return None
        for key, child in items:
            found = find(child, path + (key,))
            if found:
                return found
        return None

    found = find(data, ()) if match else None
    if found:
        mapping, path = found
        wanted = match.group(1)
        try:  # ruamel names the key as Python prints it: "1.0" for a key equal to 1
            numeric = _key_text(float(wanted))
        except ValueError:
            numeric = None
        for key in mapping:
            if str(key) == wanted or (
                numeric is not None
                and not isinstance(key, (bool, str))
                and isinstance(key, (int, float))
                and _key_text(key) == numeric
            ):
                return Problem(
                    line,
                    _dotted(path + (_key_text(key),)),
                    f"duplicate key (first on line {mapping.lc.key(key)[0] + 1})",
                )
    return Problem(line, "", f"duplicate key: {error.problem}")


def _compose(text: str, source: str) -> tuple[Any, _Document]:
    from ruamel.yaml.constructor import DuplicateKeyError
    from ruamel.yaml.error import MarkedYAMLError, YAMLError

    document = _Document()
    try:
        loaded = _yaml_reader().load(text)
    except DuplicateKeyError as error:
        raise ThresholdsError(source, [_duplicate_problem(text, error)]) from None
    except YAMLError as error:
        mark = getattr(error, "problem_mark", None) if isinstance(error, MarkedYAMLError) else None
        line = None if mark is None else mark.line + 1
        what = " ".join(
            str(part) for part in (getattr(error, "context", None), getattr(error, "problem", None)) if part
        )
        raise ThresholdsError(source, [Problem(line, "", f"invalid YAML: {what or error}")]) from None
    data = None if loaded is None else document.convert(loaded, (), 1)
    return data, document


def _non_finite(data: Any, document: _Document, path: tuple = ()) -> list[Problem]:
    """Every NaN or infinite number in ``data`` (JSON Schema's ``minimum``/``maximum`` let NaN through)."""
    if isinstance(data, dict):
        return [p for key, value in data.items() for p in _non_finite(value, document, path + (key,))]
    if isinstance(data, list):
        return [p for i, value in enumerate(data) for p in _non_finite(value, document, path + (i,))]
    if isinstance(data, float) and not math.isfinite(data):
        what = "a fraction in [0, 1]" if path and path[-1] in _BAR_KEYS else "a finite number"
        return [Problem(document.line(path), _dotted(path), f"must be {what}, got {data!r} (not a finite number)")]
    return []


def _suggest(word: str, options: Iterable[str]) -> str:
    close = difflib.get_close_matches(str(word), [str(o) for o in options], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _topk_limit_message(key: str) -> str:
    """Why a ``topK`` with K > :data:`TOPK_MAX` is refused (a key or ``paired.metric``)."""
    return (
        f"{key!r}: top-k accuracy is available for k <= {TOPK_MAX} only: the engine keeps the top-{TOPK_MAX} "
        f"predictions per image (the prediction cache and predictions.npz store {TOPK_MAX} class indices), so "
        f"use top1 ... top{TOPK_MAX}"
    )


def _explain(error: jsonschema.ValidationError, document: _Document, known_models: list[str]) -> Problem:
    """Turn a jsonschema error into a :class:`Problem` naming the offending key and its line."""
    path = tuple(error.absolute_path)
    schema_path = list(error.absolute_schema_path)
    if "propertyNames" in schema_path:  # an unknown key: error.instance is the key itself
        key = str(error.instance)
        child = path + (key,)
        options = error.validator_value if error.validator == "enum" else []
        line = document.key_lines.get(child, document.line(path))
        k = top_k(key.removesuffix("_of_clean"))
        if k is not None and k > TOPK_MAX and len(path) >= 3 and path[0] == "models":
            return Problem(line, _dotted(child), _topk_limit_message(key))
        if len(path) == 3 and path[0] == "models" and path[2] in DISTORTIONS:
            spec = DISTORTIONS[path[2]]
            return Problem(
                line,
                _dotted(child),
                f"{spec.name} level {key!r} is not a number ({spec.label}, valid range {spec.range_text})",
            )
        if len(path) == 2 and path[0] == "models":
            message = f"unknown distortion {key!r}{_suggest(key, options)}; expected one of {', '.join(options)}"
        else:
            message = f"unknown key {key!r}{_suggest(key, options)}; expected one of {', '.join(map(str, options))}"
        return Problem(line, _dotted(child), message)
    line = document.line(path)
    if path == ("defaults", "paired", "metric") and error.validator == "enum":
        k = top_k(error.instance) if isinstance(error.instance, str) else None
        if k is not None and k > TOPK_MAX:
            return Problem(line, _dotted(path), _topk_limit_message(error.instance))
    if (
        len(path) == 2
        and path[0] == "models"
        and path[1] not in known_models
        and (
            error.validator in ("required", "const")
            and "source" in (error.validator_value if error.validator == "required" else ["source"])
        )
    ):
        name = path[1]
        registered = ", ".join(known_models) or "none"
        return Problem(
            document.key_lines.get(path, line),
            _dotted(path),
            f"unknown model {name!r}{_suggest(name, known_models)}; registered: {registered}. "
            "Register it with robustness.register_model (e.g. in conftest.py), or supply it "
            "from a robustness_model fixture in conftest.py (and mark the entry 'source: fixture')",
        )
    if error.validator in ("minimum", "maximum") and path and path[-1] in RELATIVE_METRICS:
        # a share of the clean accuracy, not a percentage: never "1.5% is 0.015"
        return Problem(
            line,
            _dotted(path),
            f"must be a fraction of the clean accuracy in [0, 1] (0.8 = keep 80% "
            f"of it, 1 = all of it), got {error.instance!r}",
        )
    if error.validator in ("minimum", "maximum") and path and path[-1] in METRICS:
        value = error.instance
        hint = f" (accuracies are fractions: {value:g}% is {value / 100:g})" if 1 < value <= 100 else ""
        return Problem(line, _dotted(path), f"must be a fraction in [0, 1], got {value!r}{hint}")
    if error.validator == "minProperties" and error.validator_value == 1:
        return Problem(line, _dotted(path), "must not be empty")
    return Problem(line, _dotted(path), error.message)


# -------------------------------------------------------------------------------------- the model


@dataclass(frozen=True)
class Threshold:
    """The bars for one (model, condition); every bar that is not ``None`` must hold.

    Attributes:
        model: the model name (a key of ``models:``).
        condition: the :class:`Condition` (``Condition("clean", 0)`` for clean).
        top1 ... top5, balanced_accuracy: absolute minimum accuracies (fractions; ``topK`` is top-k
            accuracy).
        top1_of_clean ... top5_of_clean, balanced_accuracy_of_clean: minimum fractions of the model's
            clean value in the same run.
        line: the line of the entry in the file (``None`` when unknown).
        source: ``registry`` or ``fixture`` (see the module docstring).
    """

    model: str
    condition: Condition
    top1: float | None = None
    top5: float | None = None
    top1_of_clean: float | None = None
    top5_of_clean: float | None = None
    balanced_accuracy: float | None = None
    balanced_accuracy_of_clean: float | None = None
    top2: float | None = None
    top3: float | None = None
    top4: float | None = None
    top2_of_clean: float | None = None
    top3_of_clean: float | None = None
    top4_of_clean: float | None = None
    line: int | None = field(default=None, compare=False)
    source: str = field(default="registry", compare=False)

    @property
    def id(self) -> str:
        """Readable test id, e.g. ``efficientnet_lite0-blur-s3``."""
        return f"{self.model}-{self.condition.id}"

    @property
    def relative(self) -> bool:
        """Whether a bar depends on the clean accuracy."""
        return any(getattr(self, key) is not None for key in RELATIVE_METRICS)

    def bars(self) -> dict[str, float]:
        """The bars that are set, as ``{key: value}`` in :data:`METRICS` + :data:`RELATIVE_METRICS` order."""
        return {key: getattr(self, key) for key in _BAR_KEYS if getattr(self, key) is not None}


@dataclass(frozen=True)
class PairedSettings:
    """The paired (McNemar) regression check: ``alpha``, ``metric`` and the ``baseline`` folder."""

    alpha: float = 0.05
    metric: str = "top1"
    baseline: Path = Path("robustness-baseline")
    #: whether the file wrote ``paired.baseline`` (else ``baseline`` is the default folder next to the file,
    #: and a pytest ini ``robustness_baseline_dir`` may still choose another: the file's layer is unset)
    baseline_given: bool = False


@dataclass
class Thresholds:
    """A parsed thresholds file.

    Attributes:
        path: the file (``None`` when parsed from data).
        entries: one :class:`Threshold` per (model, condition), in file order.
        images, seed, dataset: the shared defaults (``dataset`` resolved against the file's folder).
        paired: the paired-check settings, ``None`` when the file enables none.
        sources: model name -> ``registry`` / ``fixture``.
        allow_fewer_images: ``defaults.allow_fewer_images``: the gate may judge on fewer images than
            ``images`` asks for (missing or unreadable files) instead of failing.
    """

    path: Path | None
    entries: list[Threshold]
    images: int | None = None
    seed: int = 0
    dataset: str | None = None
    paired: PairedSettings | None = None
    sources: dict[str, str] = field(default_factory=dict)
    allow_fewer_images: bool = False
    #: ``defaults.classes``: the class list file (resolved against the file's folder), or ``None``
    classes: str | None = None
    #: ``defaults.restrict_to_dataset_classes``, or ``None`` when the file does not say
    restrict_to_dataset_classes: bool | None = None
    #: ``defaults.allow_tf32`` (TF32 on CUDA), or ``None`` when the file does not say
    allow_tf32: bool | None = None

    def models(self) -> list[str]:
        """Model names in file order."""
        return list(dict.fromkeys(t.model for t in self.entries))

    def for_model(self, model: str) -> list[Threshold]:
        """The entries of ``model``, in file order."""
        return [t for t in self.entries if t.model == model]

    def get(self, model: str, condition: Condition) -> Threshold | None:
        """The entry for ``(model, condition)``, or ``None``."""
        for t in self.entries:
            if t.model == model and t.condition == condition:
                return t
        return None


def check_metrics(thresholds: Thresholds, num_classes: int, classes_source: str = "the dataset") -> None:
    """Refuse bars that mean nothing with ``num_classes`` classes: a top-k bar (k >= 2) with k classes
    or fewer would pass by construction (every class is in the top k), not measure anything; the
    same for a ``paired.metric`` of ``topK``.

    Args:
        thresholds: the parsed file.
        num_classes: the dataset's class count.
        classes_source: where the class list came from, for the message.

    Raises:
        ThresholdsError: one problem per offending bar, with the entry's line.
    """
    from .labels import applicable_metrics

    allowed = applicable_metrics(num_classes)
    usable = " or ".join(m for m in allowed if m in PAIRED_METRICS)

    def why(metric: str) -> str:
        k = top_k(metric)
        return (
            f"{metric} needs more than {k} classes, but the dataset has {num_classes} ({classes_source}): "
            f"it would be 100% by construction (every class is in the top {k}); use "
        )

    problems = []
    for t in thresholds.entries:
        for key in t.bars():
            metric = key.replace("_of_clean", "")
            if metric not in allowed:
                where = ("models", t.model, t.condition.distortion) + (
                    () if t.condition.distortion == CLEAN else (_level_key(t.condition.level),)
                )
                problems.append(Problem(t.line, _dotted(where + (key,)), why(metric) + " or ".join(allowed)))
    paired = thresholds.paired
    if paired is not None and paired.metric not in allowed:
        problems.append(Problem(None, "defaults.paired.metric", why(paired.metric) + usable))
    if problems:
        raise ThresholdsError(thresholds.path, problems)


def _level_problems(data: dict, document: _Document) -> list[Problem]:
    """Every level key outside its distortion's valid range (or a fraction for an integer distortion),
    and every key naming a level another key of the same distortion already names (``1`` and ``"1.0"``)."""
    problems = []
    models = data.get("models")
    for model, spec in (models or {}).items() if isinstance(models, dict) else ():
        for distortion, levels in spec.items() if isinstance(spec, dict) else ():
            if distortion not in DISTORTIONS or not isinstance(levels, dict):
                continue
            seen: dict[float, str] = {}
            for key in levels:
                path = ("models", model, distortion, key)
                if not isinstance(key, str) or not re.match(LEVEL_PATTERN, key):
                    continue  # the schema says it is not a number
                try:
                    level = DISTORTIONS[distortion].parse_level(key)
                except ValueError as error:
                    problems.append(
                        Problem(document.key_lines.get(path, document.line(path)), _dotted(path), str(error))
                    )
                    continue
                if level in seen:
                    first = document.key_lines.get(("models", model, distortion, seen[level]))
                    problems.append(
                        Problem(
                            document.key_lines.get(path, document.line(path)),
                            _dotted(path),
                            f"the same level as {seen[level]!r}" + (f" (line {first})" if first else ""),
                        )
                    )
                else:
                    seen[level] = key
    return problems


def _build(data: dict, document: _Document, path: Path | None) -> Thresholds:
    defaults = data.get("defaults") or {}
    base = path.parent if path is not None else Path(".")
    dataset = defaults.get("data", defaults.get("dataset"))
    if "dataset" in defaults:
        where = f"{path}:{document.line(('defaults', 'dataset'))}" if path is not None else "thresholds"
        warnings.warn(
            f"{where}: defaults.dataset is deprecated (the setting is named 'data' everywhere: --data, "
            "--robustness-data, $ROBUSTNESS_DATA); write defaults.data; 'dataset' is removed in the next release",
            FutureWarning,
            stacklevel=4,
        )
    if dataset is not None and not Path(dataset).expanduser().is_absolute():
        dataset = str(base / dataset)
    paired = None
    if "paired" in defaults:
        p = defaults["paired"] or {}
        baseline = Path(p.get("baseline", "robustness-baseline")).expanduser()
        paired = PairedSettings(
            float(p.get("alpha", 0.05)),
            p.get("metric", "top1"),
            baseline if baseline.is_absolute() else base / baseline,
            baseline_given="baseline" in p,
        )
    entries, sources = [], {}
    for model, spec in data["models"].items():
        source = spec.get("source", "registry")
        sources[model] = source
        for distortion, levels in spec.items():
            if distortion == "source":
                continue
            if distortion == CLEAN:
                levels = {"0": levels}
            for key, bars in levels.items():
                level = 0 if distortion == CLEAN else DISTORTIONS[distortion].parse_level(key)
                where = ("models", model, distortion) if distortion == CLEAN else ("models", model, distortion, key)
                entries.append(
                    Threshold(
                        model,
                        Condition(distortion, level),
                        **{k: float(v) for k, v in bars.items()},
                        line=document.key_lines.get(where),
                        source=source,
                    )
                )
    images = defaults.get("images")
    return Thresholds(
        path,
        entries,
        None if images is None else int(images),
        int(defaults.get("seed", 0)),
        dataset,
        paired,
        sources,
        allow_fewer_images=bool(defaults.get("allow_fewer_images", False)),
        classes=_relative_to(base, defaults.get("classes")),
        restrict_to_dataset_classes=defaults.get("restrict_to_dataset_classes"),
        allow_tf32=defaults.get("allow_tf32"),
    )


def _relative_to(base: Path, path: str | None) -> str | None:
    """``path`` (a string from the file) resolved against ``base``, the file's folder, unless absolute."""
    if path is None or Path(path).expanduser().is_absolute():
        return path
    return str(base / path)


def _validate(
    data: Any,
    document: _Document,
    source: str | None,
    known_models: Iterable[str] | None,
    allow_unregistered: bool = False,
) -> None:
    if known_models is None:
        from .models import list_models

        known_models = list_models()
    known = sorted(known_models)
    problems = list(document.problems)
    if not isinstance(data, dict):
        problems.append(Problem(document.line(()), "", "the top level must be a mapping with a 'models' key"))
    else:
        validator = jsonschema.Draft202012Validator(thresholds_schema(known, allow_unregistered=allow_unregistered))
        non_finite = _non_finite(data, document)
        problems += non_finite
        problems += _level_problems(data, document)
        defaults = data.get("defaults")
        if isinstance(defaults, dict) and "data" in defaults and "dataset" in defaults:
            problems.append(
                Problem(
                    document.line(("defaults", "dataset")),
                    "defaults.dataset",
                    "both defaults.data and its deprecated spelling defaults.dataset are set; keep defaults.data",
                )
            )
        seen = {(p.key, p.message) for p in non_finite}
        for error in validator.iter_errors(data):
            if _dotted(error.absolute_path) in {p.key for p in non_finite}:
                continue  # already said: not a finite number
            problem = _explain(error, document, known)
            if (problem.key, problem.message) not in seen:
                seen.add((problem.key, problem.message))
                problems.append(problem)
        if not problems:
            problems += _relative_without_clean(data, document)
    if problems:
        problems.sort(key=lambda p: (p.line is None, p.line or 0, p.key))
        raise ThresholdsError(source, problems)


def _relative_without_clean(data: dict, document: _Document) -> list[Problem]:
    """Every ``*_of_clean`` bar of a model whose ``clean`` entry has no absolute bar for that metric.

    A relative bar alone passes a broken model: with clean top-1 0% the required accuracy is
    ``bar x 0 = 0``. The absolute clean bar is what catches it.
    """
    problems = []
    for model, spec in data["models"].items():
        clean = spec.get(CLEAN) or {}
        for distortion, levels in spec.items():
            if distortion in (CLEAN, "source"):
                continue
            for level, bars in levels.items():
                for key in bars:
                    metric = key.replace("_of_clean", "")
                    if key in RELATIVE_METRICS and metric not in clean:
                        path = ("models", model, distortion, level, key)
                        problems.append(
                            Problem(
                                document.line(path),
                                _dotted(path),
                                f"a bar relative to clean needs an absolute clean bar for {metric}: add "
                                f"'clean: {{{metric}: ...}}' to models.{model} (alone, {key} passes a model whose "
                                f"clean {metric} is 0%: required = {bars[key]:g} x 0)",
                            )
                        )
    return problems


def parse_thresholds_text(
    text: str,
    source: str | os.PathLike | None = None,
    *,
    known_models: Iterable[str] | None = None,
    allow_unregistered: bool = False,
) -> Thresholds:
    """Parse and validate thresholds YAML text.

    Args:
        text: the YAML.
        source: the file it came from (named in errors; relative ``dataset``/``baseline`` paths
            resolve against its folder).
        known_models: model names accepted without ``source: fixture`` (default: the registry).
        allow_unregistered: accept any model name (the model comes from elsewhere, e.g. a fixture).

    Raises:
        ThresholdsError: every problem, each with line and key path.
    """
    data, document = _compose(text, None if source is None else str(source))
    _validate(data, document, None if source is None else str(source), known_models, allow_unregistered)
    return _build(data, document, None if source is None else Path(source))


def parse_thresholds(
    data: Mapping, source: str | None = None, *, known_models: Iterable[str] | None = None
) -> Thresholds:
    """Validate an already-loaded document (no line numbers in errors) and return :class:`Thresholds`."""
    from ruamel.yaml import YAML

    writer = YAML(typ="safe", pure=True)
    writer.default_flow_style = False
    buffer = io.StringIO()
    writer.dump(_plain(data), buffer)
    return parse_thresholds_text(buffer.getvalue(), source, known_models=known_models)


def _plain(data):
    if isinstance(data, Mapping):
        return {k: _plain(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [_plain(v) for v in data]
    return data


def load_thresholds(
    path: str | os.PathLike, *, known_models: Iterable[str] | None = None, allow_unregistered: bool = False
) -> Thresholds:
    """Read and validate a thresholds file (format: this module's docstring).

    Raises:
        ThresholdsError: missing file, invalid YAML, or invalid content; the message gives the file,
            the line and the offending key of every problem.
    """
    path = Path(path)
    if not path.is_file():
        raise ThresholdsError(path, f"thresholds file {path} does not exist")
    return parse_thresholds_text(
        path.read_text(encoding="utf-8"), path, known_models=known_models, allow_unregistered=allow_unregistered
    )


# ------------------------------------------------------------------------------------ calibration


def calibrated_bars(
    measured: Mapping[str, float], clean: Mapping[str, float] | None, keys: Iterable[str], margin: float
) -> dict[str, float]:
    """New bars from measured accuracies: ``measured - margin`` (relative: ``measured/clean - margin``),
    floored to 3 decimals and clipped to [0, 1], so a re-run of the same model passes."""
    out = {}
    for key in keys:
        if key in METRICS:
            value = measured[key] - margin
        else:
            metric = key.replace("_of_clean", "")
            base = (clean or {}).get(metric) or 0.0
            value = (measured[metric] / base if base > 0 else 0.0) - margin
        out[key] = min(1.0, max(0.0, math.floor(round(value * 1000, 6)) / 1000))
    return out


def update_thresholds_file(
    path: str | os.PathLike,
    model: str,
    measured: Mapping[Condition, Mapping[str, float]],
    *,
    margin: float = 0.05,
    metrics: Iterable[str] | None = None,
    source: str | None = None,
    defaults: Mapping[str, Any] | None = None,
    write: bool = True,
) -> tuple[str, str]:
    """Write calibrated thresholds for ``model`` into ``path``, keeping everything else.

    Other models, the defaults and the comments are kept (ruamel.yaml round trip). For each measured
    condition the entry's existing bar keys are recalculated (relative bars stay relative); new
    entries get ``metrics`` (default ``top1``). Conditions of the model that were not measured are
    left as they are.

    Args:
        path: the thresholds file (created when missing).
        model: the model name.
        measured: condition -> ``{"top1": ..., "top5": ...}``; include ``Condition("clean", 0)`` for
            relative bars.
        margin: subtracted from each measured value (fraction, e.g. 0.05 = 5 points).
        metrics: bar keys for new entries (default ``("top1",)``).
        source: set the model's ``source:`` key (e.g. ``fixture``); ``None`` keeps what is there.
        defaults: shared settings (``images``, ``seed``) written only when the file has no ``defaults``.
        write: write the file (``False``: only return the texts).

    Returns:
        ``(old_text, new_text)``; show :func:`difflib.unified_diff` of them.
    """
    from ruamel.yaml import YAML
    from ruamel.yaml.comments import CommentedMap

    def flow(bars: Mapping) -> CommentedMap:
        m = CommentedMap(bars.items())
        m.fa.set_flow_style()
        return m

    path = Path(path)
    old_text = path.read_text(encoding="utf-8") if path.is_file() else ""
    rt = YAML()
    rt.preserve_quotes = True
    rt.indent(mapping=2, sequence=4, offset=2)
    rt.width = 120
    document = rt.load(old_text) if old_text.strip() else None
    if document is None:
        document = CommentedMap()
    if defaults and "defaults" not in document:
        document.insert(0, "defaults", flow({k: v for k, v in defaults.items() if v is not None}))
    if "models" not in document or document["models"] is None:
        document["models"] = CommentedMap()
    models = document["models"]
    if model not in models or models[model] is None:
        models[model] = CommentedMap()
    entry = models[model]
    if source is not None:
        entry["source"] = source
    new_keys = tuple(metrics or ("top1",))
    clean = measured.get(Condition(CLEAN, 0))

    def find_level(levels, level):
        for key in levels:
            try:
                if _level_key(float(key)) == _level_key(level):
                    return key
            except (TypeError, ValueError):
                continue
        return None

    ordered = sorted(
        measured,
        key=lambda c: (
            c.distortion != CLEAN,
            list(DISTORTIONS).index(c.distortion) if c.distortion in DISTORTIONS else -1,
            c.level,
        ),
    )
    for condition in ordered:
        values = measured[condition]
        if condition.distortion == CLEAN:
            current = entry.get(CLEAN)
            keys = [k for k in METRICS if current and k in current] or [k for k in new_keys if k in METRICS] or ["top1"]
            bars = calibrated_bars(values, clean, keys, margin)
            if current is None:
                entry[CLEAN] = flow(bars)
            else:
                for k, v in bars.items():
                    current[k] = v
            continue
        levels = entry.get(condition.distortion)
        if levels is None:
            levels = entry[condition.distortion] = CommentedMap()
        key = find_level(levels, condition.level)
        current = None if key is None else levels[key]
        keys = [k for k in _BAR_KEYS if current and k in current] or list(new_keys)
        bars = calibrated_bars(values, clean, keys, margin)
        if current is None:
            level = condition.level
            levels[int(level) if float(level).is_integer() else float(level)] = flow(bars)
        else:
            for k, v in bars.items():
                current[k] = v
    buffer = io.StringIO()
    rt.dump(document, buffer)
    new_text = buffer.getvalue()
    if write:
        from ._io import atomic_write

        atomic_write(path, new_text.encode("utf-8"))
    return old_text, new_text
