"""The error every part of :mod:`robustness.models` raises for unusable input."""

from __future__ import annotations

__all__ = ["ModelError"]


class ModelError(ValueError):
    """A model spec, weight file, preprocessing description or model output is unusable; the message
    names the model, file or field and the offending value."""
