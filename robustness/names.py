"""Condition names without the machinery: importable with no torch, scipy, numpy or Pillow.

The pytest plugin registers one marker per distortion when pytest starts, in every pytest session of
an environment where robustness is installed; importing :mod:`robustness.distortions` for that would
load numpy, Pillow and scipy into unrelated test runs. These names mirror
:data:`robustness.distortions.DISTORTIONS` (a test checks that they agree); distortions registered
later get their markers when a gate is collected.
"""

from __future__ import annotations

__all__ = ["CLEAN", "DISTORTION_NAMES", "DISTORTION_PARAMETERS", "METRICS", "level_label", "marker_descriptions"]

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

#: The metrics a threshold may bound, fractions in [0, 1]: top-1 and top-5 accuracy, and balanced
#: accuracy (mean per-class top-1 recall, as ``sklearn.metrics.balanced_accuracy_score``). Top-5
#: needs more than 5 classes (:func:`robustness.labels.applicable_metrics`).
METRICS = ("top1", "top5", "balanced_accuracy")


def marker_descriptions() -> dict[str, str]:
    """``{marker: description}`` for ``clean`` and each of :data:`DISTORTION_NAMES`."""
    return {CLEAN: "robustness gate: clean (undistorted) accuracy"} | {
        name: f"robustness gate: {name} ({level_label(name)})" for name in DISTORTION_PARAMETERS
    }


def level_label(distortion: str) -> str:
    """The level's parameter with its unit, each said once: ``sigma (px)``, ``std (0-255)``, ``quality``
    (the same rule as :attr:`robustness.distortions.Distortion.label`)."""
    parameter, unit = DISTORTION_PARAMETERS[distortion]
    return parameter if unit == parameter else f"{parameter} ({unit})"
