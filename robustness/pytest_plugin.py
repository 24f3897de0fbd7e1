"""pytest plugin (entry point ``pytest11: robustness``): thresholds.yaml becomes a release gate.

Installing robustness installs the plugin: any test that requests ``robustness_verdict`` (or
``robustness_threshold``) is parametrised with one case per (model, distortion, level) of the
thresholds file, with readable ids (``efficientnet_lite0-blur-s3``), a marker per distortion
(``-m blur``, ``-m "jpeg or jpeg2000"``, ``-m clean``), the marker ``robustness`` on every case and
an ``xdist_group`` per (model, distortion) for ``pytest -n 2 --dist loadgroup``. A gate test is two
lines::

    def test_accuracy(robustness_verdict):
        robustness_verdict.check()

Which model a case measures:

* a registered name (:func:`robustness.register_model`, e.g. in ``conftest.py``) runs as itself;
* an entry marked ``source: fixture`` is supplied by the ``robustness_model`` fixture, which a
  ``conftest.py`` overrides (it may request ``robustness_threshold`` and return ``None`` to decline);
* any other name fails collection once, with the file, line and a did-you-mean.

Before any case runs (when a gate test is collected) the plugin checks, once, the thresholds file, the
device, the image folder and the image count, and fails collection with one message naming what to
fix. Settings resolve as :mod:`robustness.settings` describes (flag > environment variable >
thresholds.yaml ``defaults`` > ini > built-in default).

Each case records its measured values as JUnit XML properties (``robustness_top1``, ``..._ci_low``,
``..._required``, ``robustness_skipped``, ...), and the run ends with a summary table: per model and
distortion, one row of levels with measured vs required accuracy and pass/fail.

Distortions for any test: a test that requests ``robustness_distortion`` (a :class:`DistortionCase`,
callable on a ``uint8`` RGB array or an RGB PIL image) runs once per (distortion, level), with the
same ids and markers as the gate (``test_hash[jpeg-q10]``, ``pytest -m jpeg``)::

    def test_edges_survive(robustness_distortion):
        assert edge_map(robustness_distortion(image)).mean() > 0.5

The cases are every distortion at the paper's levels, or what ``@pytest.mark.robustness_levels(jpeg=[50,
75], blur=[1, 2], clean=True)`` (per test, class or module) or the ini key ``robustness_distortion_levels``
(per project) choose; a bad name or level fails collection naming the test and the value.

Latency next to accuracy: a test that requests ``robustness_latency`` (a :class:`LatencyCase`) runs once
per (thresholds model, batch size), ids ``<model>-b<size>``, marker ``benchmark``, and
``robustness_latency.run()`` times the forward pass with pytest-benchmark; the cases skip unless the run
asks for benchmarks (``-m benchmark``, ``--benchmark-only``, ...), so the default run never times.

Fixtures a ``conftest.py`` may override: ``robustness_model`` (for ``source: fixture`` entries) and
``robustness_dataset`` (an :class:`robustness.ImageDataset`). The thresholds file is chosen with
``--robustness-thresholds=FILE``, ``$ROBUSTNESS_THRESHOLDS`` or ini ``robustness_thresholds``.

This module imports only pytest and :mod:`robustness.settings` / :mod:`robustness.names`: torch and
the engine load when a gate test is collected, not in every pytest session of the environment; a
``robustness_distortion`` test loads :mod:`robustness.conditions` (numpy and Pillow, never torch) when
it is collected, and scipy only when a blur is applied.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from . import settings as _settings
from .names import CLEAN, DISTORTION_NAMES, METRICS, marker_descriptions

_STATE = pytest.StashKey["_State"]()


class _State:
    """Per-run state in ``config.stash``: the checked setup, summary rows, calibration updates."""

    def __init__(self) -> None:
        self.setup: _Setup | None = None
        self.rows: dict = {}
        self.updates: dict = {}
        self.skipped: dict[str, str] = {}
        self.notes: dict[str, list[str]] = {}  # note -> case ids it applies to
        self.below: list[str] = []  # calibration: cases below their old bars
        self.update_n: int | None = None  # calibration: fewest images a case was measured on
        self.markers: set[str] = set(marker_descriptions())


class _Setup:
    """What the gate needs, resolved and checked once per run; ``problems`` non-empty = cannot start."""

    def __init__(self) -> None:
        self.problems: list[str] = []
        self.thresholds_path: Path | None = None
        self.thresholds = None
        self.device: str | None = None
        self.images: _settings.Resolved | None = None
        self.data: _settings.Resolved | None = None
        self.dataset = None
        self.baseline_dir: Path | None = None

    def fail(self) -> None:
        """Fail the current collector or fixture with the problems, once each, without a traceback."""
        if self.problems:
            lines = self.problems if len(self.problems) == 1 else [f"- {p}" for p in self.problems]
            pytest.fail("robustness gate cannot start:\n" + "\n".join(lines), pytrace=False)


# ------------------------------------------------------------------------------------------ options


def pytest_addoption(parser: pytest.Parser) -> None:
    """All robustness options (``--robustness-*``) and ini keys (``robustness_*``), in one block.

    Built from :data:`robustness.settings.SETTINGS` (the CLI's flags come from the same rows): each
    row's parser validates its flag, ini value and variable alike. Options default to ``None`` so that
    :func:`robustness.settings.resolve` can tell a flag from its absence.
    """
    group = parser.getgroup("robustness", "image-quality robustness gate (write --robustness-data=DIR, with '=')")
    for setting in _settings.SETTINGS.values():
        if setting.pytest is None:
            continue
        help_text = _settings.pytest_option_help(setting)
        if setting.switch:
            group.addoption(setting.pytest, action="store_true", default=False, help=help_text)
            parser.addini(setting.ini, help_text, type="bool", default=False)
            continue
        typed = {} if setting.text else {"type": setting.parse}
        group.addoption(setting.pytest, default=None, metavar=setting.metavar, help=help_text, **typed)
        parser.addini(setting.ini, help_text, default="")
    group.addoption(
        "--robustness-update-thresholds",
        action="store_true",
        default=False,
        help="calibrate: rewrite the thresholds of the models run from the measured values (minus "
        "--robustness-margin), store baseline predictions, show a diff; gate cases do not fail",
    )
    parser.addini(
        DISTORTION_LEVELS_INI,
        "robustness_distortion cases when a test has no robustness_levels marker, one per line: "
        "'name' (paper levels), 'name: 1 2 3' or 'clean' (default: every distortion at the paper's levels)",
        type="linelist",
        default=[],
    )
    group.addoption(
        "--robustness-benchmark-batch-sizes",
        default=None,
        metavar="SIZES",
        help=f"robustness_latency: the batch sizes to time each model at, e.g. '1,32' "
        f"(default: ini {BATCH_SIZES_INI}, else '{DEFAULT_BATCH_SIZES}')",
    )
    parser.addini(
        BATCH_SIZES_INI,
        "robustness_latency: the batch sizes to time each thresholds.yaml model at, separated by spaces or "
        f"commas (default '{DEFAULT_BATCH_SIZES}')",
        default=DEFAULT_BATCH_SIZES,
    )
    parser.addini(
        "robustness_xdist_loadgroup",
        "mark each gate case with xdist_group('robustness-<model>-<distortion>') "
        "for pytest -n N --dist loadgroup (default true)",
        type="bool",
        default=True,
    )


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_STATE] = _State()
    for name, text in marker_descriptions().items():
        config.addinivalue_line("markers", f"{name}: {text}")
    config.addinivalue_line("markers", "robustness: a case of the robustness gate (one per thresholds.yaml entry)")
    config.addinivalue_line(
        "markers",
        f"{LEVELS_MARKER}(*distortions, clean=False, **levels): the robustness_distortion cases of a test: "
        "names at the paper's levels, name=[levels], clean=True adds the undistorted case",
    )
    if not _has_benchmark_plugin(config):  # robustness_latency cases carry it; they skip without pytest-benchmark
        config.addinivalue_line("markers", "benchmark: a pytest-benchmark case (pytest-benchmark is not installed)")
    if not config.pluginmanager.hasplugin("xdist"):  # gate cases carry xdist_group marks either way
        config.addinivalue_line("markers", "xdist_group(name): pytest-xdist loadgroup scheduling group")
    config.pluginmanager.register(_Reporter(config), "robustness-reporter")


def _resolve(config: pytest.Config, name: str, **layers: Any) -> _settings.Resolved:
    """:func:`robustness.settings.resolve` with this run's flag and ini value; ini and default paths
    are anchored to the rootdir."""
    setting = _settings.SETTINGS[name]
    ini = config.getini(setting.ini)
    if name in ("data", "classes", "thresholds", "cache_dir", "baseline_dir") and isinstance(ini, str) and ini.strip():
        ini = str(config.rootpath / ini)
    return _settings.resolve(name, flag=config.getoption(setting.pytest), ini=ini, **layers)


# --------------------------------------------------------------------------------- checks, once


def _space_separated(config: pytest.Config) -> list[str]:
    """Path options given as ``--robustness-data DIR`` (with a space) on the command line."""
    args = [str(a) for a in config.invocation_params.args]
    options = ("--robustness-data", "--robustness-thresholds", "--robustness-cache-dir")
    return [f"{a} {args[i + 1]}" for i, a in enumerate(args[:-1]) if a in options]


def _setup(config: pytest.Config) -> _Setup:
    """Resolve and check everything the gate needs, once per run (cached in ``config.stash``)."""
    state = config.stash[_STATE]
    if state.setup is None:
        state.setup = setup = _Setup()
        try:
            _check(config, setup)
        except _settings.SettingError as error:
            setup.problems.append(str(error))
    return state.setup


def _check(config: pytest.Config, setup: _Setup) -> None:
    from .thresholds import ThresholdsError, load_thresholds

    path = _resolve(config, "thresholds", default=str(config.rootpath / _settings.DEFAULT_THRESHOLDS))
    setup.thresholds_path = Path(path.value).expanduser().absolute()
    if not setup.thresholds_path.is_file():
        message = f"thresholds file {setup.thresholds_path} not found (from {path.source}; rootdir {config.rootpath})"
        for written in _space_separated(config):
            option, value = written.split(" ", 1)
            message += (
                f". The command line has '{written}' with a space: pytest then takes {value} for a test path "
                f"and may choose the rootdir from it (pytest's rule for arguments it does not know yet); "
                f"write {option}={value}"
            )
        setup.problems.append(message)
        return
    try:
        setup.thresholds = thresholds = load_thresholds(setup.thresholds_path)
    except ThresholdsError as error:
        setup.problems.append(str(error))
        return
    paired = thresholds.paired
    baseline = _resolve(
        config,
        "baseline_dir",
        file=str(paired.baseline) if paired is not None and paired.baseline_given else None,
        file_name=setup.thresholds_path.name,
        default=str(setup.thresholds_path.parent / _settings.DEFAULT_BASELINE_DIR),
    )
    setup.baseline_dir = Path(baseline.value).expanduser().absolute()
    if paired is not None and baseline.layer != "file":  # a flag or variable names another folder
        thresholds.paired = paired = dataclasses.replace(paired, baseline=setup.baseline_dir)
    if paired is not None and not paired.baseline.is_dir() and not config.getoption("--robustness-update-thresholds"):
        setup.problems.append(
            f"{setup.thresholds_path} sets defaults.paired, but its baseline folder {paired.baseline} does not exist "
            f"(folder from {baseline.source}), "
            "so the paired check could not run: store a baseline with `pytest --robustness-update-thresholds` or "
            "`robustness calibrate`, correct defaults.paired.baseline, or remove defaults.paired"
        )
    for name in ("batch_size", "workers", "no_cache", "cache_dir", "margin", "allow_tf32", "pipeline"):
        try:  # malformed variables or ini values: named here, once, not in every case
            _resolve(config, name)
        except _settings.SettingError as error:
            setup.problems.append(str(error))
    if not setup.problems and not _resolve(config, "no_cache").value:
        cache_dir = _resolve(config, "cache_dir", default=str(config.rootpath / _settings.DEFAULT_CACHE_DIR))
        try:  # a file there: one clear error, not [Errno 20] at the first write
            _settings.check_cache_dir(cache_dir.value, option=cache_dir.source)
        except _settings.SettingError as error:
            setup.problems.append(str(error))
    device = _resolve(config, "device")
    try:
        setup.device = _settings.check_device(device.value, option=device.source)
    except ValueError as error:
        setup.problems.append(str(error))
    setup.images = _resolve(config, "images", file=thresholds.images, file_name=setup.thresholds_path.name)
    setup.data = data = _resolve(
        config,
        "data",
        file=thresholds.dataset,
        file_name=setup.thresholds_path.name,
        default=str(config.rootpath / _settings.DEFAULT_DATA_DIR),
    )
    if data.layer == "default" and not Path(data.value).is_dir():
        return  # maybe a robustness_dataset fixture supplies the images; the default fixture says what to set
    from .datasets import DatasetError, coverage_problem, load_dataset
    from .thresholds import check_metrics

    classes = _classes_option(config, thresholds)
    try:
        full = load_dataset(data.value, classes=classes)
        setup.dataset = full.limit(setup.images.value)
    except DatasetError as error:
        setup.problems.append(f"{error} (image folder from {data.source})")
        return
    counted = setup.dataset.classes
    if _restrict(config, thresholds) and counted.is_imagenet:
        counted = setup.dataset.present_classes().classes
    try:
        check_metrics(thresholds, len(counted), counted.source)
    except ThresholdsError as error:
        setup.problems.append(str(error))
    wanted = setup.images.value
    biased = coverage_problem(full, setup.dataset)
    if biased:
        setup.problems.append(f"{setup.images.source} = {setup.images.value}: {biased}")
    if wanted is not None and len(setup.dataset) < wanted and not thresholds.allow_fewer_images:
        setup.problems.append(
            f"{setup.images.source} asks for {wanted} images, but {setup.dataset.root} (image folder from {data.source}) "
            f"holds only {len(setup.dataset)}: "
            f"add images, lower the count, or allow it with 'defaults: {{allow_fewer_images: true}}' in {setup.thresholds_path}"
        )


# ---------------------------------------------------------------------------------- test generation


def _add_marker(config: pytest.Config, distortion: str) -> None:
    """Register the marker of a distortion registered after pytest started (the built-in ones are
    registered in :func:`pytest_configure`)."""
    state = config.stash[_STATE]
    if distortion not in state.markers:
        config.addinivalue_line("markers", f"{distortion}: {marker_descriptions()[distortion]}")
        state.markers.add(distortion)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "robustness_distortion" in metafunc.fixturenames:
        _parametrize_distortions(metafunc)
    elif any(mark.name == LEVELS_MARKER for mark in metafunc.definition.own_markers):
        pytest.fail(  # on the test itself (not a module's or class's pytestmark): it would do nothing
            f"robustness: {metafunc.definition.nodeid} has @pytest.mark.{LEVELS_MARKER} but does not request "
            "the robustness_distortion fixture, so the marker would choose nothing",
            pytrace=False,
        )
    if "robustness_latency" in metafunc.fixturenames:
        _parametrize_latency(metafunc)
    elif "robustness_threshold" in metafunc.fixturenames:
        _parametrize_gate(metafunc)


def _parametrize_gate(metafunc: pytest.Metafunc) -> None:
    """One gate case per thresholds.yaml entry: ``robustness_threshold`` parametrised indirectly."""
    config = metafunc.config
    setup = _setup(config)
    setup.fail()  # one collection error for the gate module, naming every problem
    group = config.getini("robustness_xdist_loadgroup")
    params = []
    for t in setup.thresholds.entries:
        distortion = t.condition.distortion
        _add_marker(config, distortion)
        marks = [getattr(pytest.mark, distortion), pytest.mark.robustness]
        if group:
            marks.append(pytest.mark.xdist_group(f"robustness-{t.model}-{distortion}"))
        params.append(pytest.param(t, id=t.id, marks=marks))
    metafunc.parametrize("robustness_threshold", params, indirect=True)


# ------------------------------------------------------------------- robustness_distortion (any test)

#: The ini key choosing the ``robustness_distortion`` cases for a whole project (see :func:`distortion_conditions`).
DISTORTION_LEVELS_INI = "robustness_distortion_levels"
#: The marker choosing them for one test, module (``pytestmark``) or class.
LEVELS_MARKER = "robustness_levels"


def _level_value(text: str):
    """An ini level as a number: ``int`` for ``50``, ``float`` for ``0.5``; the text itself otherwise
    (so that :class:`robustness.conditions.Condition` names it in its error)."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _level_list(distortion: str, levels, where: str) -> list:
    """The levels given for ``distortion`` as a list: one number, or any iterable of numbers, or
    ``"paper"`` (``None`` means the paper's grid too)."""
    if levels is None or levels == "paper":
        from .distortions import get_distortion

        try:
            return list(get_distortion(distortion).levels)
        except ValueError as error:  # an unknown name: say where it was written
            raise ValueError(f"{where}: {error}") from None
    if isinstance(levels, (str, bytes)):
        raise ValueError(f"{where}: {distortion}={levels!r}: give numbers (a list of levels) or 'paper'")
    try:
        return list(levels)
    except TypeError:
        return [levels]  # one level; Condition checks that it is a number in range


def distortion_conditions(
    marker_args: tuple = (), marker_kwargs: dict | None = None, ini_lines: list[str] | None = None, *, where: str = ""
) -> list:
    """The (distortion, level) cases a ``robustness_distortion`` test runs, as
    :class:`robustness.conditions.Condition` objects, clean first, then the distortions in the order
    given, each level in the order given.

    Precedence: the ``robustness_levels`` marker > the ini key ``robustness_distortion_levels`` >
    every registered distortion at the paper's levels (Dodge & Karam 2016, Table I; ``DISTORTIONS[name].levels``),
    without clean.

    Args:
        marker_args: the marker's positional arguments: distortion names, each at its paper levels.
        marker_kwargs: the marker's keywords: ``name=levels`` (one number, a list or range of numbers,
            or ``"paper"``) and ``clean=True`` / ``False`` (the undistorted case, level 0). A marker
            that names no distortion keeps the ini's or the default's distortions (so
            ``robustness_levels(clean=True)`` only adds clean).
        ini_lines: the ini key's lines: ``name`` (paper levels), ``name: 1 2 3`` (levels separated
            by spaces or commas) or ``clean``.
        where: what to name in an error (the test's node id).

    Raises:
        ValueError: an unknown distortion, a level outside its valid range or not an integer where
            one is needed (JPEG quality), a level given twice, a marker or ini line that selects
            nothing; the message names ``where``, the marker or ini key and the value.
    """
    from .conditions import CLEAN as clean_name
    from .conditions import Condition
    from .distortions import DISTORTIONS

    marker_kwargs = dict(marker_kwargs or {})
    clean = marker_kwargs.pop(clean_name, None)
    if clean is not None and not isinstance(clean, bool):
        raise ValueError(f"{where}: @pytest.mark.{LEVELS_MARKER}: clean must be True or False, got {clean!r}")
    chosen: list[tuple[str, list]] = []
    source = f"@pytest.mark.{LEVELS_MARKER}"
    for name in marker_args:
        chosen.append((name, _level_list(name, None, f"{where}: {source}")))
    for name, levels in marker_kwargs.items():
        chosen.append((name, _level_list(name, levels, f"{where}: {source}")))
    if not chosen:  # the marker (if any) names no distortion: the ini's, else every distortion
        if ini_lines:
            source = f"ini {DISTORTION_LEVELS_INI}"
            for line in ini_lines:
                name, _, rest = line.partition(":")
                name = name.strip()
                if name == clean_name and not rest.strip():
                    clean = True if clean is None else clean
                    continue
                texts = rest.replace(",", " ").split()
                levels = [_level_value(t) for t in texts] if texts else None
                chosen.append((name, _level_list(name, levels, f"{where}: {source} line {line!r}")))
        else:
            chosen = [(name, list(spec.levels)) for name, spec in DISTORTIONS.items()]
    conditions = [Condition(clean_name, 0)] if clean else []
    seen: set = set()
    for name, levels in chosen:
        if name == clean_name:
            raise ValueError(f"{where}: {source}: write clean=True (clean has no levels), not {name}={levels!r}")
        if not levels:
            raise ValueError(f"{where}: {source}: {name} has no levels")
        for level in levels:
            try:
                condition = Condition(name, level)
            except ValueError as error:
                raise ValueError(f"{where}: {source}: {error}") from None
            if condition in seen:
                raise ValueError(f"{where}: {source}: {name} level {level!r} is given twice ({condition.id})")
            seen.add(condition)
            conditions.append(condition)
    if not conditions:
        raise ValueError(f"{where}: {source}: selects no case (clean=False and no distortion)")
    return conditions


def _parametrize_distortions(metafunc: pytest.Metafunc) -> None:
    """``robustness_distortion``: one case per (distortion, level), with the gate's ids and markers."""
    config = metafunc.config
    marker = metafunc.definition.get_closest_marker(LEVELS_MARKER)
    try:
        conditions = distortion_conditions(
            marker.args if marker is not None else (),
            marker.kwargs if marker is not None else {},
            config.getini(DISTORTION_LEVELS_INI),
            where=metafunc.definition.nodeid,
        )
    except ValueError as error:
        problem = str(error)
    else:
        problem = None
    if problem is not None:  # outside the except block: the message is printed once, not chained
        pytest.fail(f"robustness: {problem}", pytrace=False)
    params = []
    for condition in conditions:
        _add_marker(config, condition.distortion)
        params.append(pytest.param(condition, id=condition.id, marks=[getattr(pytest.mark, condition.distortion)]))
    metafunc.parametrize("robustness_distortion", params, indirect=True)


# ------------------------------------------------------------------------------------------ fixtures


def _ready(config: pytest.Config) -> _Setup:
    setup = _setup(config)
    setup.fail()
    return setup


@pytest.fixture(scope="session")
def robustness_thresholds_path(pytestconfig: pytest.Config) -> Path:
    """Path of the thresholds file in use (absolute). To choose it, use ``--robustness-thresholds=FILE``,
    ``$ROBUSTNESS_THRESHOLDS`` or ini ``robustness_thresholds``: it is read at collection time, so
    overriding this fixture cannot change it (and fails the run rather than being ignored)."""
    return _ready(pytestconfig).thresholds_path


@pytest.fixture(scope="session")
def robustness_thresholds(pytestconfig: pytest.Config, robustness_thresholds_path):
    """The parsed :class:`robustness.thresholds.Thresholds` (the file the cases were generated from)."""
    setup = _ready(pytestconfig)
    requested = Path(robustness_thresholds_path)
    if not requested.is_absolute():
        requested = pytestconfig.rootpath / requested
    if requested.absolute() != setup.thresholds_path:
        pytest.fail(
            f"robustness: a robustness_thresholds_path fixture returns {robustness_thresholds_path}, but the "
            f"cases were generated from {setup.thresholds_path}; choose the file with "
            "--robustness-thresholds=FILE, $ROBUSTNESS_THRESHOLDS or ini robustness_thresholds instead "
            "of overriding the fixture",
            pytrace=False,
        )
    return setup.thresholds


@pytest.fixture
def robustness_threshold(request):
    """This case's :class:`robustness.thresholds.Threshold` (parametrised from the thresholds file; in a
    ``robustness_latency`` case, the first entry of the model being timed)."""
    threshold = getattr(request, "param", None)
    if threshold is None:
        threshold = request.node.stash.get(_LATENCY_THRESHOLD, None)
    if threshold is None:
        pytest.fail(
            "robustness: robustness_threshold is parametrised at collection; request it as a test argument",
            pytrace=False,
        )
    return threshold


@pytest.fixture(scope="session")
def robustness_dataset(pytestconfig: pytest.Config, robustness_thresholds):
    """The labelled images, limited to the configured image count (see :mod:`robustness.settings`).

    Override in conftest.py to supply an :class:`robustness.ImageDataset` of your own.
    """
    setup = _ready(pytestconfig)
    if setup.dataset is None:
        pytest.fail(
            f"robustness: no image folder: the built-in default {setup.data.value} does not exist; set "
            "--robustness-data=DIR, $ROBUSTNESS_DATA, defaults.data in the thresholds file or ini "
            "robustness_data (or override the robustness_dataset fixture)",
            pytrace=False,
        )
    return setup.dataset


def _file_name(thresholds) -> str:
    return "thresholds file" if thresholds.path is None else thresholds.path.name


def _classes_option(config: pytest.Config, thresholds) -> str | None:
    """The class list file (flag > variable > ``defaults.classes`` > ini, relative to the rootdir), else
    ``None`` (the dataset's own: ``classes.txt``, ImageNet-1k or folder names)."""
    return _resolve(config, "classes", file=thresholds.classes, file_name=_file_name(thresholds)).value


def _restrict(config: pytest.Config, thresholds) -> bool:
    """Whether to restrict ImageNet-1k logits to the dataset's classes (the same precedence)."""
    resolved = _resolve(
        config,
        "restrict_to_dataset_classes",
        file=thresholds.restrict_to_dataset_classes,
        file_name=thresholds.path.name,
    )
    return bool(resolved.value)


def _allow_tf32(config: pytest.Config, thresholds) -> bool:
    """Whether CUDA inference may use TF32 (``--robustness-allow-tf32`` > variable > ``defaults.allow_tf32``
    > ini > off): passed to :func:`robustness.evaluate` as ``allow_tf32``."""
    resolved = _resolve(config, "allow_tf32", file=thresholds.allow_tf32, file_name=_file_name(thresholds))
    return bool(resolved.value)


def _cache(config: pytest.Config):
    """The prediction cache the settings ask for, or ``None`` (no cache)."""
    if _resolve(config, "no_cache").value:
        return None
    from .cache import PredictionCache

    return PredictionCache(
        _resolve(config, "cache_dir", default=str(config.rootpath / _settings.DEFAULT_CACHE_DIR)).value
    )


@pytest.fixture(scope="session")
def robustness_session(pytestconfig: pytest.Config, robustness_dataset, robustness_thresholds):
    """The :class:`robustness.gate.GateSession` of this process: one evaluation per (model, distortion)."""
    from .gate import GateSession
    from .thresholds import ThresholdsError

    setup = _ready(pytestconfig)
    try:
        return GateSession(
            robustness_dataset,
            robustness_thresholds,
            device=setup.device,
            pipeline=_resolve(pytestconfig, "pipeline").value,
            batch_size=_resolve(pytestconfig, "batch_size").value,
            num_workers=_resolve(pytestconfig, "workers").value,
            cache=_cache(pytestconfig),
            allow_fewer_images=robustness_thresholds.allow_fewer_images,
            restrict_to_dataset_classes=_restrict(pytestconfig, robustness_thresholds),
            evaluate_options={"allow_tf32": _allow_tf32(pytestconfig, robustness_thresholds)},
        )
    except (_settings.SettingError, ThresholdsError) as error:
        problem = str(error)
    # failed outside the except block: inside it, pytest would print the error twice
    # ("During handling of the above exception, another exception occurred")
    pytest.fail(f"robustness: {problem}", pytrace=False)


@pytest.fixture
def robustness_model(robustness_threshold, robustness_session):
    """The model of a ``source: fixture`` entry. Override in conftest.py.

    The gate asks for this fixture only for entries marked ``source: fixture``; registered names are
    loaded as themselves. An override returns a :class:`robustness.Classifier`; it may request
    ``robustness_threshold`` (then it must be function-scoped) and return ``None`` to decline an entry.
    This default supplies registered names and fails for ``source: fixture`` entries.
    """
    if robustness_threshold.source == "fixture":
        pytest.fail(
            f"robustness: the thresholds entry {robustness_threshold.model!r} says 'source: fixture', but no "
            "conftest.py overrides the robustness_model fixture (define one returning a "
            "robustness.Classifier, or register the model with robustness.register_model)",
            pytrace=False,
        )
    return robustness_session.model(robustness_threshold.model)


@pytest.fixture
def robustness_verdict(request, pytestconfig, robustness_threshold, robustness_session):
    """The :class:`robustness.gate.Verdict` for this case; ``robustness_verdict.check()`` fails the
    test with a clear message. Also records the JUnit XML properties and the summary row."""
    from .gate import GateError

    threshold = robustness_threshold
    if threshold.source == "fixture":
        model = request.getfixturevalue("robustness_model")
        if model is None:
            pytest.fail(
                f"robustness: the robustness_model fixture declined {threshold.model!r} (returned None); "
                "supply the model or remove its entry",
                pytrace=False,
            )
        from .models import Classifier

        if not isinstance(model, Classifier):
            pytest.fail(
                f"robustness: the robustness_model fixture returned a {type(model).__name__}, not a "
                "robustness.Classifier; wrap the network with its preprocessing, e.g. "
                "robustness.load_model(net, preprocessing=...)",
                pytrace=False,
            )
    else:
        model = robustness_session.model(threshold.model)
    problem = None
    try:
        verdict = robustness_session.verdict(model, threshold)
    except GateError as error:
        problem = str(error)
    if problem is not None:  # outside the except block: the error is printed once, not chained
        pytest.fail(f"robustness: {problem}", pytrace=False)
    props = verdict.properties()
    props.append(("robustness_level_id", threshold.condition.id))
    if robustness_session.thresholds.path is not None:
        props.append(("robustness_thresholds_file", str(robustness_session.thresholds.path)))
    props += [("robustness_note", note) for note in verdict.notes]
    for check in verdict.checks:
        if check.clean is not None:
            props.append((f"robustness_clean_{check.metric}", round(check.clean, 6)))
    skipped = verdict.result.skipped
    props.append(("robustness_skipped", len(skipped)))
    if skipped:
        props.append(("robustness_skipped_images", "; ".join(f"{k}: {v}" for k, v in skipped.items())))
    request.node.user_properties.extend(props)
    if pytestconfig.getoption("--robustness-update-thresholds"):
        if not _too_few(robustness_session.thresholds, verdict.n):
            _store_baseline(robustness_session, threshold, _ready(pytestconfig).baseline_dir)
        pytest.skip(
            "--robustness-update-thresholds: measured; thresholds are rewritten at the end of the run\n"
            + verdict.message()
        )
    return verdict


@pytest.fixture
def robustness_result(robustness_verdict):
    """The measured :class:`robustness.ConditionResult` for this case."""
    return robustness_verdict.result


class DistortionCase:
    """The value of the ``robustness_distortion`` fixture: one (distortion, level) with a per-test seed,
    callable on an image.

    ``case(image)`` returns ``robustness.distort(image, case.distortion, case.level, seed=case.seed)``
    (a copy of the image for ``clean``), in the image's own kind:

    * a ``numpy.ndarray`` of dtype ``uint8`` and shape ``(H, W, 3)`` (RGB, 0-255) gives a new array of
      the same dtype and shape (the input is never modified);
    * a ``PIL.Image.Image`` in mode ``RGB`` gives a new RGB ``PIL.Image.Image`` of the same size.

    Attributes:
        distortion: the distortion's name (``blur``, ``noise``, ``jpeg``, ``jpeg2000``, ``contrast``)
            or ``clean``.
        level: the level in the distortion's unit (sigma in px, noise std on 0-255, JPEG quality,
            JPEG 2000 PSNR in dB, contrast blend weight; ``DISTORTIONS[name].unit``); 0 for clean.
        seed: the noise seed, an integer in [0, 2**63): the first 8 bytes (big-endian, top bit
            cleared) of the SHA-256 of ``"<node id>|<distortion>|<level as a float's repr>"``, so the
            same test and case get the same noise in every run, process and xdist worker (the node
            id changes when the test is renamed or moved, or its other parameters change).
            Only ``noise`` uses it.
        id: the readable case id, as in the gate (``blur-s3``, ``jpeg-q10``, ``clean``).

    Raises (on call):
        TypeError: the image is neither a numpy array nor a PIL image.
        ValueError: an array that is not ``uint8`` ``(H, W, 3)``, or a PIL image not in mode RGB
            (convert it first: ``image.convert("RGB")``, or :func:`robustness.load_image` for files);
            a bad ``seed``.
    """

    __slots__ = ("distortion", "level", "seed", "id")

    def __init__(self, distortion: str, level: float, seed: int, id: str) -> None:
        self.distortion, self.level, self.seed, self.id = distortion, level, seed, id

    def __repr__(self) -> str:
        return f"DistortionCase({self.id}: distortion={self.distortion!r}, level={self.level!r}, seed={self.seed})"

    def __call__(self, image, *, seed: int | None = None):
        """Distort ``image`` (array or RGB PIL image, see the class); ``seed`` overrides :attr:`seed`."""
        import numpy as np

        pil = sys.modules.get("PIL.Image")  # a PIL image can only exist if Pillow is loaded
        if pil is not None and isinstance(image, pil.Image):
            if image.mode != "RGB":
                raise ValueError(
                    f"robustness_distortion {self.id}: a PIL image must be in mode RGB, got mode {image.mode!r}; "
                    "convert it first (image.convert('RGB'), or robustness.load_image for files)"
                )
            return pil.fromarray(self._apply(np.asarray(image), seed))
        if not isinstance(image, np.ndarray):
            raise TypeError(
                f"robustness_distortion {self.id}: expected a numpy uint8 (H, W, 3) RGB array or an RGB "
                f"PIL image, got {type(image).__name__}"
            )
        if image.dtype != np.uint8:
            raise ValueError(
                f"robustness_distortion {self.id}: the image must have dtype uint8 (RGB 0-255), got dtype "
                f"{image.dtype}; convert it first, e.g. np.clip(np.rint(x * 255), 0, 255).astype(np.uint8) "
                "for floats in [0, 1]"
            )
        if image.ndim != 3 or image.shape[2] != 3 or 0 in image.shape:
            raise ValueError(
                f"robustness_distortion {self.id}: the image must have shape (H, W, 3) with H, W >= 1 (RGB), "
                f"got shape {image.shape}"
            )
        return self._apply(image, seed)

    def _apply(self, image, seed: int | None):
        from .distortions import check_seed, distort

        seed = self.seed if seed is None else seed
        check_seed(seed)
        if self.distortion == CLEAN:
            return image.copy()
        return distort(image, self.distortion, self.level, seed=seed)


def case_seed(nodeid: str, distortion: str, level: float) -> int:
    """The ``robustness_distortion`` seed of a test case (see :attr:`DistortionCase.seed`): the first
    8 bytes of ``SHA-256("<nodeid>|<distortion>|<repr(float(level))>")``, big-endian, top bit
    cleared, as an ``int`` in [0, 2**63). Stable across runs and processes (not Python's ``hash``)."""
    text = f"{nodeid}|{distortion}|{float(level)!r}"
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big") >> 1


@pytest.fixture
def robustness_distortion(request) -> DistortionCase:
    """One (distortion, level) for a test of anything that takes images: a :class:`DistortionCase`,
    callable on a ``uint8`` ``(H, W, 3)`` RGB array or an RGB PIL image.

    The plugin parametrises every test that requests it: by default every distortion at the paper's
    levels (Dodge & Karam 2016), with the gate's ids (``test_x[blur-s3]``) and one marker per
    distortion (``pytest -m blur``); ``@pytest.mark.robustness_levels(jpeg=[50, 75], clean=True)`` or
    the ini key ``robustness_distortion_levels`` choose other cases (:func:`distortion_conditions`).
    """
    condition = getattr(request, "param", None)
    if condition is None:
        pytest.fail(
            "robustness: robustness_distortion is parametrised at collection; request it as a test "
            "argument (or with usefixtures), not with request.getfixturevalue",
            pytrace=False,
        )
    level = condition.level
    return DistortionCase(
        condition.distortion, level, case_seed(request.node.nodeid, condition.distortion, level), condition.id
    )


def _too_few(thresholds, n: int) -> bool:
    """Whether ``n`` images fall short of the file's ``defaults.images`` (and the file does not allow it)."""
    return thresholds.images is not None and n < thresholds.images and not thresholds.allow_fewer_images


def _store_baseline(session, threshold, folder: Path | None) -> None:
    """Store this case's predictions in ``folder`` (the resolved baseline folder; ``None``: nowhere)."""
    from .gate import save_baseline

    thresholds = session.thresholds
    if folder is None:
        return
    result = session.results.get((threshold.model, threshold.condition))
    if result is not None:
        save_baseline([result], folder, seed=thresholds.seed, model=threshold.model)


# ------------------------------------------------------------------- robustness_latency (timing)

#: The ini key with the batch sizes ``robustness_latency`` times each model at.
BATCH_SIZES_INI = "robustness_benchmark_batch_sizes"
#: Its default: batch 1 (one request's latency) and batch 32 (the gate's default batch size).
DEFAULT_BATCH_SIZES = "1 32"
#: Untimed calls before timing: the first pays for lazy initialisation, cuDNN algorithm choice and the
#: allocator; the second checks the cost has settled.
WARMUP_CALLS = 2
#: pytest-benchmark options that ask for the benchmarks to run (``benchmark_disable``: run once, untimed).
_BENCHMARK_OPTIONS = (
    "benchmark_only",
    "benchmark_enable",
    "benchmark_disable",
    "benchmark_save",
    "benchmark_autosave",
    "benchmark_json",
    "benchmark_compare",
    "benchmark_compare_fail",
)
_LATENCY_THRESHOLD = pytest.StashKey[Any]()


def parse_batch_sizes(text: str, where: str) -> list[int]:
    """The batch sizes in ``text`` (whole numbers >= 1, separated by spaces or commas), in the order given.

    Raises:
        ValueError: no size, a size that is not a whole number >= 1, or one given twice; the message
            names ``where`` (the option or ini key) and the value.
    """
    parts = str(text).replace(",", " ").split()
    if not parts:
        raise ValueError(f"{where} = {text!r}: give at least one batch size, e.g. '{DEFAULT_BATCH_SIZES}'")
    sizes: list[int] = []
    for part in parts:
        try:
            size = int(part)
        except ValueError:
            size = 0
        if size < 1:
            raise ValueError(f"{where} = {text!r}: {part!r} is not a batch size (a whole number >= 1)")
        if size in sizes:
            raise ValueError(f"{where} = {text!r}: batch size {size} is given twice")
        sizes.append(size)
    return sizes


def _batch_sizes(config: pytest.Config) -> list[int]:
    """``--robustness-benchmark-batch-sizes`` > ini ``robustness_benchmark_batch_sizes`` > ``1 32``."""
    flag = config.getoption("--robustness-benchmark-batch-sizes")
    if flag is not None:
        return parse_batch_sizes(flag, "--robustness-benchmark-batch-sizes")
    ini = config.getini(BATCH_SIZES_INI)
    return parse_batch_sizes(ini if str(ini).strip() else DEFAULT_BATCH_SIZES, f"ini {BATCH_SIZES_INI}")


def _has_benchmark_plugin(config: pytest.Config) -> bool:
    return config.pluginmanager.hasplugin("benchmark") or config.pluginmanager.hasplugin("pytest_benchmark.plugin")


def _latency_asked_for(config: pytest.Config) -> bool:
    """Whether this run asks for benchmarks: a pytest-benchmark option that runs, saves or compares them,
    or a ``-m`` expression that names ``benchmark`` (not as ``not benchmark``)."""
    if any(config.getoption(name, None) for name in _BENCHMARK_OPTIONS):
        return True
    words = re.findall(r"\w+", config.getoption("markexpr", None) or "")
    return any(word == "benchmark" and (i == 0 or words[i - 1] != "not") for i, word in enumerate(words))


def _parametrize_latency(metafunc: pytest.Metafunc) -> None:
    """``robustness_latency``: one case per (thresholds.yaml model, batch size), ids ``<model>-b<size>``,
    marker ``benchmark``; skipped (at collection) without pytest-benchmark or when the run does not ask
    for benchmarks, so the default run never times."""
    config = metafunc.config
    if "robustness_threshold" in metafunc.fixturenames:
        pytest.fail(
            f"robustness: {metafunc.definition.nodeid} requests robustness_latency and a gate fixture "
            "(robustness_threshold, robustness_verdict, ...): write the latency test and the gate test as two tests",
            pytrace=False,
        )
    setup = _setup(config)
    setup.fail()
    try:
        sizes = _batch_sizes(config)
    except ValueError as error:
        problem = str(error)
    else:
        problem = None
    if problem is not None:
        pytest.fail(f"robustness: {problem}", pytrace=False)
    skip = None
    if not _has_benchmark_plugin(config):
        skip = (
            "robustness_latency needs pytest-benchmark, which is not installed (or is disabled with -p no:benchmark): "
            "pip install pytest-benchmark"
        )
    elif not _latency_asked_for(config):
        skip = (
            "latency is timed only when asked for: pytest -m benchmark, --benchmark-only or --benchmark-enable "
            "(--benchmark-disable: one untimed call)"
        )
    own = metafunc.definition.get_closest_marker("benchmark")
    params = []
    for model in setup.thresholds.models():
        options = {"group": f"robustness-latency-{model}", **(own.kwargs if own is not None else {})}
        for size in sizes:
            marks = [pytest.mark.benchmark(**options)]
            if skip is not None:
                marks.append(pytest.mark.skip(reason=skip))
            params.append(pytest.param({"model": model, "batch_size": size}, id=f"{model}-b{size}", marks=marks))
    metafunc.parametrize("robustness_latency", params, indirect=True)


class LatencyCase:
    """The value of the ``robustness_latency`` fixture: one model of the thresholds file at one batch
    size, on the gate's device, ready to be timed by pytest-benchmark.

    A latency test is two lines; :meth:`run` times the forward pass::

        def test_latency(robustness_latency):
            robustness_latency.run()

    Attributes:
        name: the model's name in the thresholds file.
        model: the :class:`robustness.Classifier`, on :attr:`device`, in eval mode (the gate's own
            instance: a registered model as the gate loads it, else the ``robustness_model`` fixture's).
        batch_size: images per forward pass.
        device: the ``torch.device`` the gate evaluates on (``--robustness-device`` and friends;
            automatic: CUDA when available, else the CPU).
        batch: the input, a float32 tensor ``(batch_size, 3, crop, crop)`` on :attr:`device`: the
            first images of the gate's dataset through the model's own preprocessing (repeated to fill
            the batch when the dataset holds fewer), or, without an image folder, seeded random
            ``uint8`` images (``numpy.random.default_rng(0)``, crop x crop) through the same preprocessing.
        input: what :attr:`batch` holds, in words (also in the benchmark's ``extra_info``).
        benchmark: the pytest-benchmark fixture of this test.
        allow_tf32: the gate's ``allow_tf32`` setting: :meth:`run` times under the gate's numerics
            (:func:`robustness.evaluation.inference_settings`: on CUDA deterministic algorithms, TF32
            only when allowed).
    """

    def __init__(
        self, name: str, model, batch_size: int, device, batch, input: str, benchmark, *, allow_tf32: bool = False
    ) -> None:
        self.name, self.model, self.batch_size, self.device = name, model, batch_size, device
        self.batch, self.input, self.benchmark = batch, input, benchmark
        self.allow_tf32 = allow_tf32

    def __repr__(self) -> str:
        return f"LatencyCase({self.name}, batch_size={self.batch_size}, device={self.device})"

    def forward(self):
        """One forward pass of :attr:`batch` under ``torch.inference_mode()``; on CUDA it ends with
        ``torch.cuda.synchronize`` so the asynchronous kernels finish inside the timed call. Returns the
        logits ``(batch_size, classes)``."""
        import torch

        with torch.inference_mode():
            logits = self.model(self.batch)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return logits

    def run(self):
        """Warm up (:data:`WARMUP_CALLS` untimed calls), then time :meth:`forward` with
        ``benchmark(forward)`` (pytest-benchmark's calibrated mode: ``--benchmark-min-rounds``,
        ``--benchmark-max-time``, ``--benchmark-warmup`` apply; with ``--benchmark-disable`` or under
        xdist it runs once, untimed), under the gate's inference settings (:attr:`allow_tf32`). Records
        ``model``, ``batch_size``, ``device``, ``input``, ``torch_threads`` and ``allow_tf32`` in
        ``benchmark.extra_info``. Asserts nothing about time.

        Returns:
            The logits of the last call, ``(batch_size, classes)``.

        Raises:
            ValueError: the model's output is not ``(batch_size, classes)``.
        """
        import torch

        from .evaluation import inference_settings

        with inference_settings(self.device, allow_tf32=self.allow_tf32):
            for _ in range(WARMUP_CALLS):
                self.forward()
            logits = self.benchmark(self.forward)
        if logits.ndim != 2 or logits.shape[0] != self.batch_size:
            raise ValueError(
                f"robustness_latency {self.name}: the model returned logits of shape {tuple(logits.shape)} for a "
                f"batch of {self.batch_size}, expected ({self.batch_size}, classes)"
            )
        self.benchmark.extra_info.update(
            {
                "model": self.name,
                "batch_size": self.batch_size,
                "device": str(self.device),
                "input": self.input,
                "torch_threads": torch.get_num_threads(),
                "allow_tf32": self.allow_tf32,
            }
        )
        return logits


def _latency_batch(model, batch_size: int, dataset, device):
    """``(batch, description)``: see :attr:`LatencyCase.batch`."""
    import numpy as np
    import torch

    from .images import ImageLoadError

    tensors = []
    if dataset is not None:
        for index in range(min(batch_size, len(dataset))):
            try:
                image, _ = dataset.load(index)
            except ImageLoadError:
                continue  # unreadable: the gate reports it; the timing needs only some image
            tensors.append(model.preprocess(image))
    if tensors:
        description = f"{len(tensors)} image(s) of {dataset.root}"
    else:
        crop = model.preprocessing.crop_size
        rng = np.random.default_rng(0)
        tensors = [model.preprocess(rng.integers(0, 256, (crop, crop, 3), dtype=np.uint8)) for _ in range(batch_size)]
        description = f"random uint8 images (seed 0, {crop}x{crop})"
    batch = torch.stack([tensors[i % len(tensors)] for i in range(batch_size)])
    return batch.to(device), description


@pytest.fixture
def robustness_latency(request, pytestconfig: pytest.Config, benchmark) -> LatencyCase:
    """One (thresholds.yaml model, batch size) to time: a :class:`LatencyCase`; ``.run()`` times it.

    The plugin parametrises every test that requests it with one case per model of the thresholds file
    and batch size (``--robustness-benchmark-batch-sizes=1,32`` > ini ``robustness_benchmark_batch_sizes``
    > ``1 32``), ids ``<model>-b<size>``, marker ``benchmark`` (group ``robustness-latency-<model>``).
    A case is skipped when pytest-benchmark is missing, and when the run does not ask for benchmarks
    (``-m benchmark``, ``--benchmark-only``, ``--benchmark-enable``, ``--benchmark-disable``, or a
    pytest-benchmark save, JSON or compare option), so the default run never times.
    The model is the gate's: a registered name loaded as the gate loads it, a ``source: fixture`` entry
    from the ``robustness_model`` fixture (which may request ``robustness_threshold``: it gets the
    model's first entry).
    """
    import torch

    param = getattr(request, "param", None)
    if param is None:
        pytest.fail(
            "robustness: robustness_latency is parametrised at collection; request it as a test argument",
            pytrace=False,
        )
    setup = _ready(pytestconfig)
    name, batch_size = param["model"], param["batch_size"]
    thresholds = request.getfixturevalue("robustness_thresholds")
    first = thresholds.for_model(name)[0]
    if first.source == "fixture":
        request.node.stash[_LATENCY_THRESHOLD] = first
        model = request.getfixturevalue("robustness_model")
        from .models import Classifier

        if not isinstance(model, Classifier):
            what = "declined it (returned None)" if model is None else f"returned a {type(model).__name__}"
            pytest.fail(
                f"robustness: the robustness_model fixture {what} for {name!r}: robustness_latency needs a "
                "robustness.Classifier",
                pytrace=False,
            )
    elif setup.dataset is not None:
        model = request.getfixturevalue("robustness_session").model(name)
    else:
        from .models import load_model

        model = load_model(name, device=setup.device)
    dataset = request.getfixturevalue("robustness_dataset") if setup.dataset is not None else None
    from .evaluation import inference_device

    device = torch.device(inference_device(model, setup.device))  # as robustness.evaluate chooses (issue 12)
    model = model.to(device).eval()
    batch, description = _latency_batch(model, batch_size, dataset, device)
    allow_tf32 = _allow_tf32(pytestconfig, thresholds)
    return LatencyCase(name, model, batch_size, device, batch, description, benchmark, allow_tf32=allow_tf32)


# ------------------------------------------------------------------------------ reporting and summary


def _props(report) -> dict:
    return {k: v for k, v in getattr(report, "user_properties", ()) if str(k).startswith("robustness_")}


class _Reporter:
    """Collects the gate cases' properties from test reports (also those sent by xdist workers)."""

    def __init__(self, config: pytest.Config):
        self.config = config

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        props = _props(report)
        if "robustness_model" not in props:
            return
        if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
            config = self.config
            state = config.stash[_STATE]
            outcome = report.outcome
            case = f"{props['robustness_model']} {props.get('robustness_level_id', props['robustness_distortion'])}"
            if report.when == "setup" and report.skipped and config.getoption("--robustness-update-thresholds"):
                outcome = "measured"
                _record_update(config, props)
                if props.get("robustness_passed") is False:
                    state.below.append(case)
            for name, value in report.user_properties:
                if name == "robustness_note":
                    state.notes.setdefault(str(value), []).append(case)
            key = (props["robustness_model"], props["robustness_distortion"])
            state.rows.setdefault(key, {})[props["robustness_level"]] = (props, outcome)
            for entry in str(props.get("robustness_skipped_images", "")).split("; "):
                if entry:
                    image, _, message = entry.partition(": ")
                    state.skipped.setdefault(image, message)


def _record_update(config: pytest.Config, props: dict) -> None:
    from .evaluation import Condition

    path = props.get("robustness_thresholds_file")
    if not path:
        return
    state = config.stash[_STATE]
    n = int(props["robustness_n"])
    state.update_n = n if state.update_n is None else min(n, state.update_n)
    model = props["robustness_model"]
    distortion = props["robustness_distortion"]
    level = 0 if distortion == CLEAN else float(props["robustness_level"])
    measured = config.stash[_STATE].updates.setdefault((path, model), {})
    measured[Condition(distortion, level)] = {
        m: props[f"robustness_{m}"] for m in METRICS if f"robustness_{m}" in props
    }
    if any(f"robustness_clean_{m}" in props for m in METRICS):
        clean = measured.setdefault(Condition(CLEAN, 0), {})
        for m in METRICS:
            if f"robustness_clean_{m}" in props:
                clean.setdefault(m, props[f"robustness_clean_{m}"])


def _cell(level_id: str, props: dict, outcome: str) -> str:
    parts = []
    for metric in METRICS:
        required = [
            props[k] for k in (f"robustness_{metric}_required", f"robustness_{metric}_of_clean_required") if k in props
        ]
        if required:
            parts.append(f"{100 * props[f'robustness_{metric}']:.1f}/{100 * max(required):.1f}")
    text = f"{level_id} " + ",".join(parts) if parts else level_id
    if "robustness_paired_p" in props:
        text += f" p={props['robustness_paired_p']:.2g}"
    if outcome == "failed":
        text += " FAIL"
    elif outcome not in ("passed", "measured"):
        text += f" {outcome.upper()}"
    return text


def summary_lines(
    rows: dict, skipped: dict[str, str] | None = None, notes: dict[str, list[str]] | None = None
) -> list[str]:
    """The summary table from ``{(model, distortion): {level: (props, outcome)}}``, then one line per
    unreadable image left out (``skipped``: image id -> reason), then the cases' notes (``notes``:
    note -> case ids, e.g. why a configured paired check did not run)."""
    if not rows:
        return []
    order = {CLEAN: -1} | {name: i for i, name in enumerate(DISTORTION_NAMES)}
    width = max(len(m) for m, _ in rows)
    lines = ["measured/required accuracy % per level (n = images per condition); FAIL = below threshold"]
    for model, distortion in sorted(rows, key=lambda k: (k[0], order.get(k[1], 99), k[1])):
        cells = rows[(model, distortion)]
        items = sorted(cells.items(), key=lambda kv: float(kv[0]))
        failed = sum(outcome == "failed" for _, (_, outcome) in items)
        metrics = [
            m
            for m in METRICS
            if any(f"robustness_{m}_required" in p or f"robustness_{m}_of_clean_required" in p for _, (p, _) in items)
        ]
        n = {p.get("robustness_n") for _, (p, _) in items}
        verdict = f"FAIL {failed}/{len(items)}" if failed else "pass"
        if all(outcome == "measured" for _, (_, outcome) in items):
            verdict = "measured"
        text = "  ".join(
            _cell(
                str(p.get("robustness_level_id", level)).removeprefix(f"{distortion}-") if distortion != CLEAN else "",
                p,
                outcome,
            ).strip()
            for level, (p, outcome) in items
        )
        lines.append(
            f"{model:<{width}}  {distortion:<8}  {'/'.join(metrics) or '-':<9} n={'/'.join(map(str, sorted(n)))}"
            f"  {verdict:<9}  {text}"
        )
    if skipped:
        lines.append(f"skipped {len(skipped)} unreadable image(s), left out of every condition:")
        lines += [f"  {image}: {message}" for image, message in sorted(skipped.items())]
    for note, cases in (notes or {}).items():
        lines.append(f"note ({len(cases)} case(s): {', '.join(cases)}): {note}")
    return lines


def pytest_terminal_summary(terminalreporter, exitstatus, config: pytest.Config) -> None:
    if hasattr(config, "workerinput"):
        return
    state = config.stash.get(_STATE, None)
    if state is None:
        return
    lines = summary_lines(state.rows, state.skipped, state.notes)
    if lines:
        lines += _sample_notes(config, state.rows)
        terminalreporter.write_sep("=", "robustness gate")
        for line in lines:
            red = " FAIL" in line
            terminalreporter.write_line(
                line, red=red, green=not red and "  pass  " in line, yellow=line.startswith(("skipped", "  ", "note"))
            )
    if config.getoption("--robustness-update-thresholds"):
        if state.rows:
            below = (
                f"; {len(state.below)} case(s) were below their old bars: {', '.join(state.below)}"
                if state.below
                else "; every case met its old bars"
            )
            terminalreporter.write_line(
                f"CALIBRATION RUN (--robustness-update-thresholds): no gate case could fail{below}", red=True, bold=True
            )
        _write_updates(terminalreporter, config)


def _file_images(config: pytest.Config, path: str):
    """``(thresholds, images setting)`` for the thresholds file ``path``: its ``defaults.images`` and
    allow_fewer_images, and where this run's image count came from (``None`` if the file cannot be read)."""
    from .thresholds import ThresholdsError, load_thresholds

    setup = config.stash[_STATE].setup
    if setup is not None and setup.thresholds is not None and str(setup.thresholds_path) == str(path):
        thresholds = setup.thresholds
    else:  # e.g. the xdist controller, which collects nothing
        try:
            thresholds = load_thresholds(path, allow_unregistered=True)
        except ThresholdsError:
            return None
    try:
        images = _resolve(config, "images", file=thresholds.images, file_name=Path(path).name)
    except _settings.SettingError:
        return None
    return thresholds, images


def _sample_notes(config: pytest.Config, rows: dict) -> list[str]:
    """A note when the cases were measured on fewer images than the thresholds file's ``defaults.images``,
    naming where the smaller count came from (``$ROBUSTNESS_IMAGES``, ``--robustness-images``, ...)."""
    lines = []
    by_file: dict[str, int] = {}
    for cells in rows.values():
        for props, _ in cells.values():
            path, n = props.get("robustness_thresholds_file"), props.get("robustness_n")
            if path and isinstance(n, int):
                by_file[path] = min(n, by_file.get(path, n))
    for path, n in by_file.items():
        found = _file_images(config, path)
        if found is None:
            continue
        thresholds, images = found
        if thresholds.images is not None and n < thresholds.images:
            why = (
                f"{images.source} asks for {images.value}"
                if images.value is not None and images.value < thresholds.images
                else "the image folder holds fewer (defaults.allow_fewer_images)"
            )
            lines.append(
                f"note: measured on n={n} images per condition, fewer than defaults.images: "
                f"{thresholds.images} in {path} ({why})"
            )
    return lines


def _write_updates(terminalreporter, config: pytest.Config) -> None:
    import difflib
    from collections import defaultdict

    from .thresholds import update_thresholds_file

    updates = config.stash[_STATE].updates
    if not updates:
        return
    try:
        margin = _resolve(config, "margin").value
    except _settings.SettingError as error:
        terminalreporter.write_line(f"robustness: thresholds not updated: {error}", red=True)
        return
    terminalreporter.write_sep("=", f"robustness thresholds updated (margin {margin:g})")
    by_file = defaultdict(list)
    for (path, model), measured in updates.items():
        by_file[path].append((model, measured))
    for path, models in by_file.items():
        found = _file_images(config, path)
        n = config.stash[_STATE].update_n
        if found is not None and _too_few(found[0], n):
            thresholds, images = found
            terminalreporter.write_line(
                f"robustness: {path} NOT updated: measured on n={n} images per condition ({images.source} asks for "
                f"{images.value}), fewer than its defaults.images: {thresholds.images}; bars from fewer images would "
                "not hold for the gate's sample. Rerun with the full count, or set "
                "'defaults: {allow_fewer_images: true}'",
                red=True,
            )
            continue
        before = Path(path).read_text(encoding="utf-8") if Path(path).is_file() else ""
        for model, measured in models:
            update_thresholds_file(path, model, measured, margin=margin)
        after = Path(path).read_text(encoding="utf-8")
        if before and not before.endswith("\n"):
            before += "\n"
        diff = list(difflib.unified_diff(before.splitlines(True), after.splitlines(True), path, path))
        terminalreporter.write("".join(diff) if diff else f"{path}: unchanged\n")
