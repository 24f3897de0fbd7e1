"""pytest plugin (entry point ``pytest11: robustness``): thresholds.yaml becomes a release gate.

Installing robustness installs the plugin: any test that requests ``robustness_verdict`` (or
``robustness_threshold``) is parametrised with one case per (model, distortion, level) of the
thresholds file, with readable ids (``efficientnet_lite0-blur-s3``), a marker per distortion
(``-m blur``, ``-m "jpeg or jpeg2000"``, ``-m clean``) and an ``xdist_group`` per (model, distortion).
A gate test is two lines::

    def test_accuracy(robustness_verdict):
        robustness_verdict.check()

Each case records its measured values as JUnit XML properties (``robustness_top1``, ``..._ci_low``,
``..._required``, ...), and the run ends with a summary table: per model and distortion, one row of
levels with measured vs required accuracy and pass/fail.

Fixtures a user's ``conftest.py`` may override:

* ``robustness_model`` — the model under test (a :class:`robustness.Classifier`); it may request
  ``robustness_threshold`` to choose by ``robustness_threshold.model``.
* ``robustness_dataset`` — an :class:`robustness.ImageDataset`.
* ``robustness_thresholds_path`` — the thresholds file. It is also read at collection time to
  generate the tests, so an override must be session-scoped and request nothing but ``pytestconfig``.

Options (all ``--robustness-*``) and ini keys (all ``robustness_*``) are registered in
:func:`pytest_addoption`. All computation lives in the plain API; this module only wires it.
"""

from __future__ import annotations

import difflib
import inspect
import os
from collections import defaultdict
from pathlib import Path

import pytest

from .distortions import DISTORTIONS
from .evaluation import CLEAN, Condition
from .gate import GateSession, Verdict, save_baseline
from .thresholds import METRICS, Thresholds, ThresholdsError, load_thresholds, update_thresholds_file

_MARKERS = {"clean": "robustness gate: clean (undistorted) accuracy"} | {
    name: f"robustness gate: {name} ({spec.label})" for name, spec in DISTORTIONS.items()
}
_THRESHOLDS_CACHE = pytest.StashKey[dict]()
_ROWS = pytest.StashKey[dict]()
_UPDATES = pytest.StashKey[dict]()


# ------------------------------------------------------------------------------------------ options


def _positive_int(text: str) -> int:
    from .cli import positive_int

    return positive_int(text)


def _non_negative_int(text: str) -> int:
    from .cli import non_negative_int

    return non_negative_int(text)


def pytest_addoption(parser: pytest.Parser) -> None:
    """All robustness options (``--robustness-*``) and ini keys (``robustness_*``), in one block."""
    group = parser.getgroup("robustness", "image-quality robustness gate")
    group.addoption("--robustness-data", default=None, help="image folder (<wnid>/<file>); overrides the thresholds file's defaults.dataset, ini robustness_data and $ROBUSTNESS_DATA")
    group.addoption("--robustness-thresholds", default=None, help="thresholds file; overrides ini robustness_thresholds")
    group.addoption("--robustness-images", type=_positive_int, default=None, help="images per condition; overrides the thresholds file's defaults.images")
    group.addoption("--robustness-device", default=None, help="torch device for inference (default cuda when available)")
    group.addoption("--robustness-batch-size", type=_positive_int, default=32, help="inference batch size (does not change results)")
    group.addoption("--robustness-workers", type=_non_negative_int, default=None, help="DataLoader workers (default min(2, cpus))")
    group.addoption("--robustness-update-thresholds", action="store_true", default=False,
                    help="calibrate: rewrite the thresholds of the models run from the measured values (minus "
                         "--robustness-margin), store baseline predictions, show a diff; gate cases do not fail")
    group.addoption("--robustness-margin", type=float, default=None,
                    help="margin subtracted from measured accuracy by --robustness-update-thresholds (fraction; default ini robustness_margin or 0.05)")
    group.addoption("--robustness-no-cache", action="store_true", help="do not read or write the prediction cache")
    group.addoption("--robustness-cache-dir", default=None, help="prediction cache folder (default $ROBUSTNESS_CACHE_DIR or <rootdir>/.robustness-cache)")
    parser.addini("robustness_data", "image folder for the robustness gate, relative to the rootdir", default="")
    parser.addini("robustness_thresholds", "thresholds file, relative to the rootdir", default="thresholds.yaml")
    parser.addini("robustness_images", "images per condition when the thresholds file sets none", default="")
    parser.addini("robustness_margin", "calibration margin (fraction) for --robustness-update-thresholds", default="0.05")
    parser.addini("robustness_xdist_loadgroup", "under pytest-xdist -n N, schedule with --dist loadgroup so each "
                  "(model, distortion) is evaluated on one worker (default true)", type="bool", default=True)


def pytest_configure(config: pytest.Config) -> None:
    for name, text in _MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {text}")
    if not config.pluginmanager.hasplugin("xdist"):  # gate cases carry xdist_group marks either way
        config.addinivalue_line("markers", "xdist_group(name): pytest-xdist loadgroup scheduling group")
    config.stash[_THRESHOLDS_CACHE] = {}
    config.stash[_ROWS] = {}
    config.stash[_UPDATES] = {}
    config.pluginmanager.register(_Reporter(config), "robustness-reporter")
    # Plain ``-n N`` (``--dist load``) becomes ``loadgroup`` so each (model, distortion) stays on one
    # worker: set here, before xdist builds its scheduler. Workers re-parse the command line and so
    # never see this change; pytest_configure_node tells them, and they add the ``@group`` node-id
    # suffix that loadgroup scheduling relies on (pytest_collection_modifyitems below).
    if getattr(config.option, "dist", "no") == "load" and config.getini("robustness_xdist_loadgroup"):
        config.option.dist = "loadgroup"


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node) -> None:
    """xdist controller hook: tell each worker whether loadgroup scheduling is on."""
    node.workerinput["robustness_loadgroup"] = node.config.option.dist == "loadgroup"


def pytest_collection_modifyitems(config: pytest.Config, items: list) -> None:
    """On an xdist worker whose controller switched to loadgroup, tag node ids with their group,
    exactly as xdist does for ``--dist loadgroup`` (``nodeid@group``)."""
    workerinput = getattr(config, "workerinput", None)
    if not workerinput or not workerinput.get("robustness_loadgroup") or config.getvalue("loadgroup"):
        return
    for item in items:
        names = sorted({str(mark.args[0] if mark.args else mark.kwargs.get("name", "default"))
                        for mark in item.iter_markers("xdist_group")})
        if names:
            item._nodeid = f"{item.nodeid}@{'_'.join(names)}"




# ---------------------------------------------------------------------------------- test generation


def _thresholds_path(config: pytest.Config) -> Path:
    value = config.getoption("--robustness-thresholds") or config.getini("robustness_thresholds")
    path = Path(value)
    return path if path.is_absolute() else config.rootpath / path


def _load(config: pytest.Config, path: Path, allow_unregistered: bool = True) -> Thresholds:
    """Load (once per run, path and mode) and validate; a bad file fails with every problem's file:line: key.

    ``allow_unregistered``: accept model names that are not registered (collection sets it when a
    conftest.py overrides ``robustness_model``; fixtures reuse what collection validated).
    """
    cache = config.stash[_THRESHOLDS_CACHE]
    key = (str(path), allow_unregistered)
    if key not in cache:
        try:
            cache[key] = load_thresholds(path, allow_unregistered=allow_unregistered)
        except ThresholdsError as error:
            cache[key] = error
    value = cache[key]
    if isinstance(value, ThresholdsError):
        pytest.fail(f"robustness: {value}", pytrace=False)
    return value


def _overridden(metafunc: pytest.Metafunc, name: str) -> bool:
    """Whether a conftest.py or test module (not a plugin) defines fixture ``name`` for this test."""
    defs = getattr(metafunc, "_arg2fixturedefs", {}).get(name) or ()
    return bool(defs) and defs[-1].has_location


def _collection_path(metafunc: pytest.Metafunc) -> Path:
    """The thresholds path, honouring a conftest.py override of ``robustness_thresholds_path``."""
    if _overridden(metafunc, "robustness_thresholds_path"):
        func = metafunc._arg2fixturedefs["robustness_thresholds_path"][-1].func
        params = set(inspect.signature(func).parameters)
        if params - {"pytestconfig"}:
            pytest.fail("robustness: an overriding robustness_thresholds_path fixture may request only "
                        "pytestconfig (it is evaluated at collection time)", pytrace=False)
        return _rooted(metafunc.config, func(**({"pytestconfig": metafunc.config} if params else {})))
    return _thresholds_path(metafunc.config)


def _rooted(config: pytest.Config, value) -> Path:
    path = Path(value)
    return path if path.is_absolute() else config.rootpath / path


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "robustness_threshold" not in metafunc.fixturenames:
        return
    config = metafunc.config
    thresholds = _load(config, _collection_path(metafunc), allow_unregistered=_overridden(metafunc, "robustness_model"))
    group = config.getini("robustness_xdist_loadgroup")
    params = []
    for t in thresholds.entries:
        marks = [getattr(pytest.mark, t.condition.distortion)]
        if group:
            marks.append(pytest.mark.xdist_group(f"robustness-{t.model}-{t.condition.distortion}"))
        params.append(pytest.param(t, id=t.id, marks=marks))
    metafunc.parametrize("robustness_threshold", params, indirect=True)


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="session")
def robustness_thresholds_path(pytestconfig: pytest.Config) -> Path:
    """Path of the thresholds file (``--robustness-thresholds`` or ini ``robustness_thresholds``,
    relative to the rootdir). Override in conftest.py (session scope, requesting only pytestconfig)."""
    return _thresholds_path(pytestconfig)


@pytest.fixture(scope="session")
def robustness_thresholds(pytestconfig: pytest.Config, robustness_thresholds_path) -> Thresholds:
    """The parsed :class:`robustness.thresholds.Thresholds`."""
    return _load(pytestconfig, _rooted(pytestconfig, robustness_thresholds_path))


@pytest.fixture
def robustness_threshold(request, robustness_thresholds):
    """This case's :class:`robustness.thresholds.Threshold` (parametrised from the thresholds file)."""
    return request.param


@pytest.fixture(scope="session")
def robustness_dataset(pytestconfig: pytest.Config, robustness_thresholds):
    """The labelled images, limited to the configured image count.

    Folder: ``--robustness-data``, else the thresholds file's ``defaults.dataset``, else ini
    ``robustness_data``, else ``$ROBUSTNESS_DATA`` / the shared default. Count:
    ``--robustness-images``, else ``defaults.images``, else ini ``robustness_images``, else all.
    """
    from .datasets import load_dataset

    data = pytestconfig.getoption("--robustness-data") or robustness_thresholds.dataset
    if not data:
        ini = pytestconfig.getini("robustness_data")
        data = str(pytestconfig.rootpath / ini) if ini else None
    images = pytestconfig.getoption("--robustness-images")
    if images is None:
        images = robustness_thresholds.images
    if images is None and pytestconfig.getini("robustness_images"):
        images = int(pytestconfig.getini("robustness_images"))
    return load_dataset(data, limit=images)


def _evaluate_options(config: pytest.Config) -> dict:
    """Extra keyword arguments for :func:`robustness.evaluate` from the options: the prediction cache."""
    from .cache import CACHE_ENV_VAR, DEFAULT_CACHE_DIR, PredictionCache

    if config.getoption("--robustness-no-cache"):
        return {}
    return {"cache": PredictionCache(config.getoption("--robustness-cache-dir") or os.environ.get(CACHE_ENV_VAR)
                                     or config.rootpath / DEFAULT_CACHE_DIR)}


@pytest.fixture(scope="session")
def robustness_session(pytestconfig: pytest.Config, robustness_dataset, robustness_thresholds) -> GateSession:
    """Evaluations shared by all gate cases of this process: one evaluation per (model, distortion)."""
    return GateSession(
        robustness_dataset,
        robustness_thresholds,
        device=pytestconfig.getoption("--robustness-device"),
        batch_size=pytestconfig.getoption("--robustness-batch-size"),
        num_workers=pytestconfig.getoption("--robustness-workers"),
        evaluate_options=_evaluate_options(pytestconfig),
    )


@pytest.fixture
def robustness_model(robustness_threshold, robustness_session):
    """The model under test for this case: the registered model named by the thresholds entry.

    Override in conftest.py to gate your own model (return a :class:`robustness.Classifier`; mark
    the model's entry ``source: fixture`` unless the name is registered).
    """
    if robustness_threshold.source == "fixture":
        pytest.fail(f"robustness: the thresholds entry for {robustness_threshold.model!r} says 'source: fixture', "
                    "but no conftest.py overrides the robustness_model fixture", pytrace=False)
    return robustness_session.model(robustness_threshold.model)


@pytest.fixture
def robustness_verdict(request, pytestconfig, robustness_threshold, robustness_model, robustness_session) -> Verdict:
    """The :class:`robustness.gate.Verdict` for this case; ``robustness_verdict.check()`` fails the
    test with a clear message. Also records the JUnit XML properties and the summary row."""
    verdict = robustness_session.verdict(robustness_model, robustness_threshold)
    props = verdict.properties()
    props.append(("robustness_level_id", robustness_threshold.condition.id))
    if robustness_session.thresholds.path is not None:
        props.append(("robustness_thresholds_file", str(robustness_session.thresholds.path)))
    props += [("robustness_note", note) for note in verdict.notes]
    for check in verdict.checks:
        if check.clean is not None:
            props.append((f"robustness_clean_{check.metric}", round(check.clean, 6)))
    request.node.user_properties.extend(props)
    if pytestconfig.getoption("--robustness-update-thresholds"):
        _store_baseline(robustness_session, robustness_threshold)
        pytest.skip("--robustness-update-thresholds: measured; thresholds are rewritten at the end of the run\n"
                    + verdict.message())
    return verdict


@pytest.fixture
def robustness_result(robustness_verdict):
    """The measured :class:`robustness.ConditionResult` for this case."""
    return robustness_verdict.result


def _store_baseline(session: GateSession, threshold) -> None:
    thresholds = session.thresholds
    if thresholds.paired is not None:
        folder = thresholds.paired.baseline
    elif thresholds.path is not None:
        folder = thresholds.path.parent / "robustness-baseline"
    else:
        return
    result = session.results.get((threshold.model, threshold.condition))
    if result is not None:
        save_baseline([result], folder, seed=thresholds.seed, model=threshold.model)


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
            outcome = report.outcome
            if report.when == "setup" and report.skipped and config.getoption("--robustness-update-thresholds"):
                outcome = "measured"
                _record_update(config, props)
            key = (props["robustness_model"], props["robustness_distortion"])
            config.stash[_ROWS].setdefault(key, {})[props["robustness_level"]] = (props, outcome)


def _record_update(config: pytest.Config, props: dict) -> None:
    path = props.get("robustness_thresholds_file")
    if not path:
        return
    model = props["robustness_model"]
    distortion = props["robustness_distortion"]
    level = 0 if distortion == CLEAN else float(props["robustness_level"])
    measured = config.stash[_UPDATES].setdefault((path, model), {})
    measured[Condition(distortion, level)] = {m: props[f"robustness_{m}"] for m in METRICS}
    if "robustness_clean_top1" in props or "robustness_clean_top5" in props:
        clean = measured.setdefault(Condition(CLEAN, 0), {})
        for m in METRICS:
            if f"robustness_clean_{m}" in props:
                clean.setdefault(m, props[f"robustness_clean_{m}"])


def _cell(level_id: str, props: dict, outcome: str) -> str:
    parts = []
    for metric in METRICS:
        required = [props[k] for k in (f"robustness_{metric}_required", f"robustness_{metric}_of_clean_required") if k in props]
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


def summary_lines(rows: dict) -> list[str]:
    """The summary table from ``{(model, distortion): {level: (props, outcome)}}``."""
    if not rows:
        return []
    order = {CLEAN: -1} | {name: i for i, name in enumerate(DISTORTIONS)}
    width = max(len(m) for m, _ in rows)
    lines = ["measured/required accuracy % per level (n = images per condition); FAIL = below threshold"]
    for (model, distortion) in sorted(rows, key=lambda k: (k[0], order.get(k[1], 99))):
        cells = rows[(model, distortion)]
        items = sorted(cells.items(), key=lambda kv: float(kv[0]))
        failed = sum(outcome == "failed" for _, (_, outcome) in items)
        metrics = [m for m in METRICS if any(f"robustness_{m}_required" in p or f"robustness_{m}_of_clean_required" in p
                                             for _, (p, _) in items)]
        n = {p.get("robustness_n") for _, (p, _) in items}
        verdict = f"FAIL {failed}/{len(items)}" if failed else "pass"
        if all(outcome == "measured" for _, (_, outcome) in items):
            verdict = "measured"
        text = "  ".join(_cell(str(p.get("robustness_level_id", level)).removeprefix(f"{distortion}-")
                               if distortion != CLEAN else "", p, outcome).strip() for level, (p, outcome) in items)
        lines.append(f"{model:<{width}}  {distortion:<8}  {'/'.join(metrics) or '-':<9} n={'/'.join(map(str, sorted(n)))}"
                     f"  {verdict:<9}  {text}")
    return lines


def pytest_terminal_summary(terminalreporter, exitstatus, config: pytest.Config) -> None:
    if hasattr(config, "workerinput"):
        return
    lines = summary_lines(config.stash.get(_ROWS, {}))
    if lines:
        terminalreporter.write_sep("=", "robustness gate")
        for line in lines:
            red = " FAIL" in line
            terminalreporter.write_line(line, red=red, green=not red and "  pass  " in line)
    if config.getoption("--robustness-update-thresholds"):
        _write_updates(terminalreporter, config)


def _write_updates(terminalreporter, config: pytest.Config) -> None:
    updates = config.stash.get(_UPDATES, {})
    if not updates:
        return
    value = config.getoption("--robustness-margin")
    margin = float(config.getini("robustness_margin") if value is None else value)
    terminalreporter.write_sep("=", f"robustness thresholds updated (margin {margin:g})")
    by_file = defaultdict(list)
    for (path, model), measured in updates.items():
        by_file[path].append((model, measured))
    for path, models in by_file.items():
        before = Path(path).read_text(encoding="utf-8") if Path(path).is_file() else ""
        for model, measured in models:
            update_thresholds_file(path, model, measured, margin=margin)
        after = Path(path).read_text(encoding="utf-8")
        if before and not before.endswith("\n"):
            before += "\n"
        diff = list(difflib.unified_diff(before.splitlines(True), after.splitlines(True), path, path))
        terminalreporter.write("".join(diff) if diff else f"{path}: unchanged\n")
