"""Conditions: a (distortion, level) pair, the unit every other layer talks in. No torch.

A :class:`Condition` names what an image went through before the model saw it; the engine measures
one result per condition, thresholds.yaml sets bars per condition, the report plots them.
"""

from __future__ import annotations

from dataclasses import dataclass

from .distortions import get_distortion
from .names import CLEAN

__all__ = ["CLEAN", "Condition"]


@dataclass(frozen=True, order=True)
class Condition:
    """A (distortion, level) pair; ``Condition("clean", 0)`` is the undistorted image.

    Raises:
        ValueError: an unknown distortion name or a level outside its valid range (the message
            names the value; :meth:`robustness.distortions.Distortion.check_level`).
    """

    distortion: str
    level: float

    def __post_init__(self):
        if self.distortion != CLEAN:
            get_distortion(self.distortion).check_level(self.level)

    @property
    def id(self) -> str:
        """Readable id: ``clean``, ``blur-s3``, ``noise-50``, ``jpeg-q10``, ``jpeg2000-30db``, ``contrast-0.8``."""
        if self.distortion == CLEAN:
            return CLEAN
        return get_distortion(self.distortion).level_id(self.level)
