"""Condition names and level texts without the machinery: importable with no torch, scipy, numpy or Pillow.

The pytest plugin registers one marker per distortion when pytest starts, in every pytest session of
an environment where robustness is installed; importing :mod:`robustness.distortions` for that would
load numpy, Pillow and scipy into unrelated test runs. These names mirror
:data:`robustness.distortions.DISTORTIONS` (a test checks that they agree):
:func:`robustness.distortions.register_distortion` adds a user's distortion here too
(:func:`add_distortion_name`), so a distortion registered before pytest configures (e.g. in the
rootdir's ``conftest.py``) gets its marker at start, and one registered later gets it when a gate is
collected.

Levels are written with :func:`format_level` everywhere a level becomes text (test ids, thresholds.yaml
keys): the shortest decimal that reads back as the same float, never an exponent.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal

__all__ = [
    "CLEAN",
    "DISTORTION_NAMES",
    "DISTORTION_PARAMETERS",
    "METRICS",
    "TOPK_MAX",
    "add_distortion_name",
    "distortion_names",
    "format_level",
    "level_label",
    "marker_descriptions",
    "remove_distortion_name",
    "top_k",
]

#: The name of the undistorted condition (also its marker: ``pytest -m clean``).
CLEAN = "clean"

#: The paper's five distortions, in the paper's order (Dodge & Karam 2016, Section III).
DISTORTION_NAMES = ("blur", "noise", "jpeg", "jpeg2000", "contrast")

#: distortion -> (parameter, unit) of its level, as in :class:`robustness.distortions.Distortion`.
DISTORTION_PARAMETERS = {
    "blur": ("sigma", "px"),
    "noise": ("std", "0-255"),
    "jpeg": ("quality", "quality"),
    "jpeg2000": ("psnr", "dB"),
    "contrast": ("weight", "fraction"),
}

#: Distortions registered by users (:func:`robustness.distortions.register_distortion`):
#: name -> (parameter, unit), in registration order.
_REGISTERED: dict[str, tuple[str, str]] = {}

#: The largest k of a gateable top-k accuracy: the engine keeps the top-5 class indices per image
#: (:class:`robustness.evaluation.ConditionResult`, the prediction cache, predictions.npz), so top-k
#: for k <= 5 is computed from them exactly and a larger k would need every stored prediction again.
TOPK_MAX = 5

#: The metrics a threshold may bound, fractions in [0, 1]: top-k accuracy for k = 1..5 (the label
#: is among the model's k highest-scoring classes), and balanced accuracy (mean per-class top-1
#: recall, as ``sklearn.metrics.balanced_accuracy_score``). Top-k for k >= 2 needs more than k
#: classes (:func:`robustness.labels.applicable_metrics`); top-1 and top-5 are the paper's (Dodge &
#: Karam 2016), top-5 the ImageNet default.
METRICS = ("top1", "top2", "top3", "top4", "top5", "balanced_accuracy")

_TOPK = re.compile(r"top([0-9]+)")


def top_k(metric: str) -> int | None:
    """The ``k`` of a top-k metric name (``"top3"`` -> 3, ``"top10"`` -> 10, any k >= 1), ``None`` for
    any other name (``"balanced_accuracy"``, ``"top"``, ``"top0"``, ``"top03"``). Whether k is at most
    :data:`TOPK_MAX` is the caller's check."""
    match = _TOPK.fullmatch(metric) if isinstance(metric, str) else None
    if match is None or match.group(1).startswith("0"):
        return None
    return int(match.group(1))


def add_distortion_name(name: str, parameter: str, unit: str) -> None:
    """Record a user distortion's name and level unit (called by ``register_distortion``; no checks here)."""
    _REGISTERED[name] = (parameter, unit)


def remove_distortion_name(name: str) -> None:
    """Forget a user distortion's name (called by ``unregister_distortion``); unknown names are ignored."""
    _REGISTERED.pop(name, None)


def distortion_names() -> tuple[str, ...]:
    """The paper's five distortions, then those registered so far, in registration order."""
    return DISTORTION_NAMES + tuple(_REGISTERED)


def marker_descriptions() -> dict[str, str]:
    """``{marker: description}`` for ``clean`` and each of :func:`distortion_names`."""
    return {CLEAN: "robustness gate: clean (undistorted) accuracy"} | {
        name: f"robustness gate: {name} ({level_label(name)})" for name in distortion_names()
    }


def level_label(distortion: str) -> str:
    """The level's parameter with its unit, each said once: ``sigma (px)``, ``std (0-255)``, ``quality``
    (the same rule as :attr:`robustness.distortions.Distortion.label`)."""
    parameter, unit = DISTORTION_PARAMETERS.get(distortion) or _REGISTERED[distortion]
    return parameter if unit == parameter else f"{parameter} ({unit})"


def format_level(level: float) -> str:
    """A level as text: the shortest decimal that reads back as the same float, without an exponent.

    The rule: ``float(level)``; integral values without a decimal point (``3``, ``75``, ``0``);
    others as Python's ``repr`` (the shortest round-tripping digits, David Gay's algorithm) written
    out positionally (``0.5``, ``0.25``, ``0.00001`` rather than ``1e-05``). ``-0.0`` is ``0``. So
    ``float(format_level(x)) == x`` for every finite float ``x``, two different levels never share
    a text (no ``0.5`` / ``0.50`` pairs), and the paper's grids read as before (``%g``: ``3``,
    ``0.1``, ``30``).

    Raises:
        ValueError: ``level`` is not a finite number.
    """
    value = float(level) + 0.0  # + 0.0 turns -0.0 into 0.0
    if not math.isfinite(value):
        raise ValueError(f"a level must be a finite number, got {level!r}")
    if value.is_integer():
        return str(int(value))
    return format(Decimal(repr(value)), "f")
