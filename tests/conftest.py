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
    "ci",
    derandomize=True,
    database=None,
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "thorough",
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(scope="session")
def shared_image_paths(pytestconfig: pytest.Config) -> list[Path]:
    """Paths of the shared ImageNet validation JPEGs, sorted; skips the test if they are absent.

    Location: the gate's data setting (:mod:`robustness.settings`: ``--robustness-data``, else
    ``$ROBUSTNESS_DATA``, else the ``robustness_data`` ini option relative to the rootdir, else the
    shared default).
    """
    from robustness.settings import DEFAULT_DATA_DIR, resolve

    try:
        ini, flag = pytestconfig.getini("robustness_data"), pytestconfig.getoption("--robustness-data")
    except ValueError:  # the robustness plugin is not loaded (-p no:robustness)
        ini, flag = "", None
    root = Path(
        resolve(
            "data",
            flag=flag,
            ini=str(pytestconfig.rootpath / ini) if ini else None,
            default=str(pytestconfig.rootpath / DEFAULT_DATA_DIR),
        ).value
    )
    paths = sorted(root.glob("*/*.JPEG")) if root.is_dir() else []
    if not paths:
        pytest.skip(f"shared ImageNet images not found (looked in {root})")
    return paths
