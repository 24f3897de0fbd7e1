"""``thresholds.yaml``: the minimum accuracy a model must keep, per distortion level.

Format (accuracies are fractions in [0, 1])::

    defaults:            # optional, shared settings
      images: 100        # images evaluated per condition (the first N in dataset order)
      seed: 0            # base seed for noise
    models:
      efficientnet_lite0:
        clean: {top1: 0.70, top5: 0.88}
        blur:
          1: {top1: 0.60}
          2: {top1: 0.50}
        jpeg:
          10: {top1: 0.60}

Distortion names and levels must be valid (see :data:`robustness.DISTORTIONS`); each level entry
needs ``top1`` and/or ``top5``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from .distortions import DISTORTIONS
from .evaluation import CLEAN, Condition

__all__ = ["Threshold", "Thresholds", "ThresholdsError", "load_thresholds"]

_METRICS = ("top1", "top5")
_DEFAULT_KEYS = {"images", "seed"}


class ThresholdsError(ValueError):
    """thresholds.yaml is malformed; the message names the file and the offending key."""


@dataclass(frozen=True)
class Threshold:
    """Minimum accuracy for one (model, condition): ``top1`` / ``top5`` fractions or ``None``."""

    model: str
    condition: Condition
    top1: float | None = None
    top5: float | None = None

    @property
    def id(self) -> str:
        return f"{self.model}-{self.condition.id}"


@dataclass
class Thresholds:
    """Parsed thresholds file: ``entries`` in file order, ``images`` and ``seed`` defaults."""

    path: Path | None
    entries: list[Threshold]
    images: int | None = None
    seed: int = 0

    def models(self) -> list[str]:
        return list(dict.fromkeys(t.model for t in self.entries))

    def for_model(self, model: str) -> list[Threshold]:
        return [t for t in self.entries if t.model == model]


def _fraction(value, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ThresholdsError(f"{where}: must be a fraction in [0, 1], got {value!r}")
    return float(value)


def parse_thresholds(data, source: str = "thresholds.yaml") -> Thresholds:
    """Validate a loaded YAML document and return :class:`Thresholds`.

    Raises:
        ThresholdsError: naming ``source`` and the key path of the first problem.
    """
    if not isinstance(data, dict):
        raise ThresholdsError(f"{source}: top level must be a mapping with a 'models' key")
    unknown = set(data) - {"defaults", "models"}
    if unknown:
        raise ThresholdsError(f"{source}: unknown top-level key(s) {sorted(unknown)}; expected 'defaults', 'models'")
    defaults = data.get("defaults") or {}
    if not isinstance(defaults, dict) or set(defaults) - _DEFAULT_KEYS:
        raise ThresholdsError(f"{source}: defaults: allowed keys are {sorted(_DEFAULT_KEYS)}, got {defaults!r}")
    images = defaults.get("images")
    if images is not None and (isinstance(images, bool) or not isinstance(images, int) or images < 1):
        raise ThresholdsError(f"{source}: defaults.images must be an integer >= 1, got {images!r}")
    seed = defaults.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ThresholdsError(f"{source}: defaults.seed must be an integer >= 0, got {seed!r}")
    models = data.get("models")
    if not isinstance(models, dict) or not models:
        raise ThresholdsError(f"{source}: 'models' must map model names to distortions")
    entries = []
    for model, distortions in models.items():
        if not isinstance(distortions, dict):
            raise ThresholdsError(f"{source}: models.{model}: must map distortion names to levels")
        for distortion, levels in distortions.items():
            where = f"{source}: models.{model}.{distortion}"
            if distortion == CLEAN:
                levels = {0: levels}
            elif distortion not in DISTORTIONS:
                raise ThresholdsError(f"{where}: unknown distortion; known: clean, {', '.join(DISTORTIONS)}")
            if not isinstance(levels, dict):
                raise ThresholdsError(f"{where}: must map levels to {{top1: ..., top5: ...}}")
            for level, bars in levels.items():
                at = where if distortion == CLEAN else f"{where}.{level}"
                try:
                    condition = Condition(distortion, level)
                except ValueError as error:
                    raise ThresholdsError(f"{at}: {error}") from None
                if not isinstance(bars, dict) or not bars or set(bars) - set(_METRICS):
                    raise ThresholdsError(f"{at}: must be a mapping with top1 and/or top5, got {bars!r}")
                values = {m: _fraction(bars[m], f"{at}.{m}") for m in _METRICS if m in bars}
                entries.append(Threshold(str(model), condition, **values))
    return Thresholds(None, entries, images, seed)


def load_thresholds(path: str | os.PathLike) -> Thresholds:
    """Read and validate a thresholds file (see the module docstring for the format).

    Raises:
        ThresholdsError: missing file, invalid YAML, or invalid content (naming file and key).
    """
    path = Path(path)
    if not path.is_file():
        raise ThresholdsError(f"thresholds file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ThresholdsError(f"{path}: invalid YAML: {error}") from None
    thresholds = parse_thresholds(data, str(path))
    thresholds.path = path
    return thresholds
