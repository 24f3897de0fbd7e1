"""pytest plugin (entry point ``pytest11: robustness``): thresholds.yaml becomes parametrised tests.

Any test that requests the ``robustness_threshold`` fixture is parametrised with one case per
(model, distortion, level) entry of the thresholds file, with readable ids
(``efficientnet_lite0-blur-s3``) and the distortion's marker (``-m blur``, ``-m clean``). A gate
test is three lines::

    from robustness.gate import check_threshold

    def test_accuracy(robustness_threshold, robustness_result):
        check_threshold(robustness_threshold, robustness_result)

Fixtures a user's conftest.py may override: ``robustness_model`` (the model under test, a
:class:`robustness.Classifier`), ``robustness_dataset`` (an :class:`robustness.ImageDataset`),
``robustness_thresholds_path``. All computation lives in the plain API; this module only wires it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .distortions import DISTORTIONS
from .gate import GateSession
from .thresholds import ThresholdsError, load_thresholds

_MARKERS = {"clean": "robustness gate: clean (undistorted) accuracy"} | {
    name: f"robustness gate: {name} ({spec.parameter}, {spec.unit})" for name, spec in DISTORTIONS.items()
}


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("robustness", "image-quality robustness gate")
    group.addoption("--robustness-data", default=None, help="image folder (<wnid>/<file>); overrides ini robustness_data and $ROBUSTNESS_DATA")
    group.addoption("--robustness-thresholds", default=None, help="thresholds file; overrides ini robustness_thresholds")
    group.addoption("--robustness-images", type=int, default=None, help="images per condition; overrides the thresholds file's defaults.images")
    group.addoption("--robustness-device", default=None, help="torch device for inference (default cuda when available)")
    group.addoption("--robustness-batch-size", type=int, default=32, help="inference batch size (does not change results)")
    group.addoption("--robustness-workers", type=int, default=None, help="DataLoader workers (default min(2, cpus))")
    parser.addini("robustness_data", "image folder for the robustness gate, relative to the rootdir", default="")
    parser.addini("robustness_thresholds", "thresholds file, relative to the rootdir", default="thresholds.yaml")
    parser.addini("robustness_images", "images per condition when the thresholds file sets none", default="")


def pytest_configure(config: pytest.Config) -> None:
    for name, text in _MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {text}")


def _thresholds_path(config: pytest.Config) -> Path:
    value = config.getoption("--robustness-thresholds") or config.getini("robustness_thresholds")
    path = Path(value)
    return path if path.is_absolute() else config.rootpath / path


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "robustness_threshold" not in metafunc.fixturenames:
        return
    path = _thresholds_path(metafunc.config)
    try:
        thresholds = load_thresholds(path)
    except ThresholdsError as error:
        raise pytest.UsageError(f"robustness: {error}") from None
    metafunc.parametrize(
        "robustness_threshold",
        [pytest.param(t, id=t.id, marks=getattr(pytest.mark, t.condition.distortion)) for t in thresholds.entries],
    )


@pytest.fixture(scope="session")
def robustness_thresholds_path(pytestconfig: pytest.Config) -> Path:
    """Path of the thresholds file (``--robustness-thresholds`` or ini ``robustness_thresholds``)."""
    return _thresholds_path(pytestconfig)


@pytest.fixture(scope="session")
def robustness_thresholds(robustness_thresholds_path):
    """The parsed :class:`robustness.thresholds.Thresholds`."""
    return load_thresholds(robustness_thresholds_path)


@pytest.fixture(scope="session")
def robustness_dataset(pytestconfig: pytest.Config, robustness_thresholds):
    """The labelled images, limited to the configured image count."""
    from .datasets import load_dataset

    data = pytestconfig.getoption("--robustness-data")
    if not data:
        ini = pytestconfig.getini("robustness_data")
        data = str(pytestconfig.rootpath / ini) if ini else None
    images = pytestconfig.getoption("--robustness-images") or robustness_thresholds.images
    if images is None and pytestconfig.getini("robustness_images"):
        images = int(pytestconfig.getini("robustness_images"))
    return load_dataset(data, limit=images)


@pytest.fixture(scope="session")
def robustness_session(pytestconfig: pytest.Config, robustness_dataset, robustness_thresholds) -> GateSession:
    """Evaluations shared by all gate tests: one evaluation per (model, distortion)."""
    return GateSession(
        robustness_dataset,
        robustness_thresholds,
        device=pytestconfig.getoption("--robustness-device"),
        batch_size=pytestconfig.getoption("--robustness-batch-size"),
        num_workers=pytestconfig.getoption("--robustness-workers"),
    )


@pytest.fixture
def robustness_model(robustness_threshold, robustness_session):
    """The model under test for this case; override in conftest.py to gate your own model."""
    return robustness_session.model(robustness_threshold.model)


@pytest.fixture
def robustness_result(robustness_threshold, robustness_model, robustness_session):
    """The measured :class:`robustness.ConditionResult` for this case."""
    return robustness_session.result(robustness_model, robustness_threshold)
