"""Hypothesis profiles and the shared natural-image fixture for the distortion tests.

Profiles (pick with ``--hypothesis-profile=NAME`` or ``HYPOTHESIS_PROFILE=NAME``):

* ``ci`` (default): derandomized, no example database, few examples: deterministic and fast.
* ``thorough``: many more random examples and more shared images for the slow reference checks.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", derandomize=True, database=None, max_examples=15, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "thorough", max_examples=300, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(scope="session")
def shared_image_paths(pytestconfig: pytest.Config) -> list[Path]:
    """Paths of the shared ImageNet validation JPEGs, sorted; skips the test if they are absent.

    Location: ``$ROBUSTNESS_DATA``, else the ``robustness_data`` ini option relative to the rootdir.
    """
    try:
        ini = pytestconfig.getini("robustness_data")
    except ValueError:  # the robustness plugin is not installed
        ini = "../shared/data/imagenet-val-1024"
    data = os.environ.get("ROBUSTNESS_DATA") or ini
    root = Path(data) if data else None
    if root is not None and not root.is_absolute():
        root = pytestconfig.rootpath / root
    paths = sorted(root.glob("*/*.JPEG")) if root is not None and root.is_dir() else []
    if not paths:
        pytest.skip(f"shared ImageNet images not found (looked in {root})")
    return paths
