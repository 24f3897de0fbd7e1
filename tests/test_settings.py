"""One name and one parser per setting: the same value given as a CLI flag, a pytest option, an ini key,
a thresholds.yaml ``defaults:`` key or an environment variable resolves to the same value; deprecated
spellings still work and say so, once; the CLI and the plugin take their options from the one table."""

from __future__ import annotations

import argparse

import pytest

# Imported here, outside the pytester tests: pytester drops the modules first imported inside a test,
# and numpy cannot be imported twice in one process (see test_plugin.py).
import torch

import robustness.cache
import robustness.distortions
import robustness.models
import robustness.pytest_plugin
import robustness.thresholds  # noqa: F401
from robustness import settings
from robustness.cli import build_parser, main, resolve_settings
from robustness.settings import SETTINGS, resolve

pytest_plugins = ["pytester"]

#: setting -> (the value as text, the value it must resolve to). Paths are absolute (filled in per test)
#: so that every layer's anchoring rule (working directory, rootdir, thresholds folder) gives the same.
VALUES = {
    "thresholds": ("{tmp}/t.yaml", "{tmp}/t.yaml"),
    "data": ("{tmp}/images", "{tmp}/images"),
    "classes": ("{tmp}/classes.txt", "{tmp}/classes.txt"),
    "restrict_to_dataset_classes": ("true", True),
    "images": ("7", 7),
    "device": ("cpu", "cpu"),
    "allow_tf32": ("true", True),
    "cache_dir": ("{tmp}/cache", "{tmp}/cache"),
    "no_cache": ("true", True),
    "workers": ("0", 0),
    "pipeline": ("Device", "device"),
    "batch_size": ("5", 5),
    "baseline_dir": ("{tmp}/baseline", "{tmp}/baseline"),
    "margin": ("0.02", 0.02),
    "seed": ("3", 3),
    "engine": ("Ray", "ray"),
    "ray_address": ("10.0.0.1:6379", "10.0.0.1:6379"),
}

#: A minimal valid thresholds file; ``{defaults}`` is replaced by the defaults under test.
THRESHOLDS = """\
version: 1
defaults:
  {defaults}
models:
  toy:
    source: fixture
    clean: {{top1: 0.5}}
"""


def _cases(*wanted):
    for name, setting in SETTINGS.items():
        layers = {"cli": setting.cli, "pytest": setting.pytest, "ini": setting.ini, "env": setting.env}
        layers["yaml"] = setting.yaml
        for layer, spelling in layers.items():
            if spelling is not None and layer in wanted:
                yield pytest.param(name, layer, id=f"{name}-{layer}")


def test_every_setting_is_in_the_table_of_cases():
    assert set(VALUES) == set(SETTINGS)


def _filled(name, tmp_path):
    text, expected = VALUES[name]
    if isinstance(expected, str):
        text, expected = text.format(tmp=tmp_path), expected.format(tmp=tmp_path)
    return text, expected


def _cli_args(name: str, argv: list[str]) -> argparse.Namespace:
    """``robustness calibrate`` has every setting's flag (a test below checks it)."""
    return build_parser().parse_args(["calibrate", "--model", "toy", *argv])


def _clear_environment(monkeypatch):
    for setting in SETTINGS.values():  # this process's environment must not leak into the layers
        if setting.env:
            monkeypatch.delenv(setting.env, raising=False)


@pytest.mark.parametrize("name, layer", list(_cases("cli", "env", "yaml")))
def test_the_same_value_resolves_the_same_in_the_cli(name, layer, tmp_path, monkeypatch):
    """Flag, variable, thresholds.yaml ``defaults:``: what ``robustness calibrate`` ends up with."""
    setting = SETTINGS[name]
    text, expected = _filled(name, tmp_path)
    _clear_environment(monkeypatch)
    thresholds = None
    if layer == "cli":
        args = _cli_args(name, [setting.cli] if setting.switch else [setting.cli, text])
    else:
        args = _cli_args(name, [])
    if layer == "env":
        monkeypatch.setenv(setting.env, text)
    if layer == "yaml":
        from robustness.thresholds import load_thresholds

        key = setting.yaml.split(".")
        defaults = f"{key[0]}: {text}" if len(key) == 1 else f"{key[0]}: {{{key[1]}: {text}}}"
        path = tmp_path / "t.yaml"
        path.write_text(THRESHOLDS.format(defaults=defaults), encoding="utf-8")
        thresholds = load_thresholds(path, allow_unregistered=True)
    if name == "thresholds":  # calibrate resolves it before reading the file
        value = resolve(name, flag=args.thresholds).value
    else:
        resolve_settings(args, thresholds)
        value = getattr(args, name)
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize("name, layer", list(_cases("pytest", "ini", "env")))
def test_the_same_value_resolves_the_same_in_the_gate(name, layer, tmp_path, pytester, monkeypatch):
    """pytest option, ini key, variable: what the gate's resolver (the plugin's) ends up with."""
    from robustness.pytest_plugin import _resolve

    setting = SETTINGS[name]
    text, expected = _filled(name, tmp_path)
    _clear_environment(monkeypatch)
    if layer == "pytest":
        config = pytester.parseconfig(setting.pytest if setting.switch else f"{setting.pytest}={text}")
    elif layer == "ini":
        pytester.makeini(f"[pytest]\n{setting.ini} = {text}\n")
        config = pytester.parseconfig()
    else:
        monkeypatch.setenv(setting.env, text)
        config = pytester.parseconfig()
    value = _resolve(config, name).value
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize("name", [n for n, s in SETTINGS.items() if not s.switch and not s.text])
def test_a_bad_value_is_refused_by_the_same_parser_everywhere(name, pytester, monkeypatch, capsys):
    """CLI flag, pytest option, ini key and variable: one parser, so one verdict (and the layer named)."""
    setting = SETTINGS[name]
    bad = "-1" if name != "margin" else "5"
    with pytest.raises(SystemExit):
        _cli_args(name, [setting.cli, bad])
    assert f"argument {setting.cli}: must be" in capsys.readouterr().err
    if setting.env:
        monkeypatch.setenv(setting.env, bad)
        with pytest.raises(settings.SettingError, match=rf"\${setting.env}='{bad}': must be"):
            resolve(name)
        monkeypatch.delenv(setting.env)
    if setting.pytest:
        from robustness.pytest_plugin import _resolve

        with pytest.raises(pytest.UsageError, match="must be"):
            pytester.parseconfig(f"{setting.pytest}={bad}")
        pytester.makeini(f"[pytest]\n{setting.ini} = {bad}\n")
        with pytest.raises(settings.SettingError, match=f"ini {setting.ini} = '{bad}': must be"):
            _resolve(pytester.parseconfig(), name)


def test_the_cli_and_the_plugin_take_their_options_from_the_table(pytester):
    parser = build_parser()
    calibrate = parser.parse_args(["calibrate", "--model", "toy"])
    assert set(SETTINGS) <= set(vars(calibrate))  # every setting, under its own name
    run = parser.parse_args(["run"])
    assert {"data", "images", "seed", "device", "batch_size", "workers", "cache_dir", "no_cache"} <= set(vars(run))
    activations = parser.parse_args(["activations"])
    assert {"data", "seed", "device"} <= set(vars(activations)) and "images" not in vars(activations)
    config = pytester.parseconfig()
    for setting in SETTINGS.values():
        if setting.pytest:
            assert config.getoption(setting.pytest) in (None, False), setting.pytest
            assert config.getini(setting.ini) in ("", False), setting.ini
        else:
            with pytest.raises(ValueError):
                config.getoption(f"--robustness-{setting.cli[2:]}")


def test_every_concept_has_one_name(pytester):
    for setting in SETTINGS.values():
        stem = setting.cli[2:]
        if setting.pytest:
            assert setting.pytest == f"--robustness-{stem}"
            assert setting.ini == f"robustness_{stem.replace('-', '_')}"
            assert setting.env == f"ROBUSTNESS_{stem.replace('-', '_').upper()}"
        assert setting.name == stem.replace("-", "_")


def test_one_rule_for_the_default_cache_folder(pytester, monkeypatch):
    """Working directory for the CLI and the API, the rootdir under pytest; $ROBUSTNESS_CACHE_DIR for all."""
    from pathlib import Path

    from robustness.cache import default_cache_dir
    from robustness.pytest_plugin import _cache

    monkeypatch.delenv("ROBUSTNESS_CACHE_DIR", raising=False)
    args = build_parser().parse_args(["run"])
    resolve_settings(args)
    assert Path(args.cache_dir) == default_cache_dir() == Path(".robustness-cache")
    config = pytester.parseconfig()
    assert _cache(config).root == config.rootpath / ".robustness-cache"
    monkeypatch.setenv("ROBUSTNESS_CACHE_DIR", str(pytester.path / "elsewhere"))
    resolve_settings(args := build_parser().parse_args(["run"]))
    assert Path(args.cache_dir) == default_cache_dir() == _cache(config).root == pytester.path / "elsewhere"


# ------------------------------------------------------------------------------ deprecated spellings


def test_run_limit_works_and_says_to_use_images(capsys):
    args = build_parser().parse_args(["run", "--limit", "4", "--limit", "3"])
    assert args.images == 3
    err = capsys.readouterr().err
    assert err.count("--limit is deprecated") == 1  # once, however often it is given
    assert "robustness run: warning: --limit is deprecated and will be removed in the next release; use --images" in err
    assert build_parser().parse_args(["run", "--images", "4"]).images == 4
    assert "deprecated" not in capsys.readouterr().err


def test_activations_images_works_and_says_to_use_average_over(capsys):
    args = build_parser().parse_args(["activations", "--images", "2"])
    assert args.average_over == 2
    err = capsys.readouterr().err
    assert "robustness activations: warning: --images is deprecated" in err and "use --average-over" in err
    assert build_parser().parse_args(["activations", "--average-over", "3"]).average_over == 3


def test_each_deprecated_spelling_is_accepted_where_its_new_one_is(capsys):
    for where, old, new in settings.deprecated_spellings():
        commands = ["run", "calibrate"] if where.startswith("commands with") else [where]
        for command in commands:
            argv = [command, *(["--model", "toy"] if command == "calibrate" else []), old, "2"]
            args = build_parser().parse_args(argv)
            assert getattr(args, new[2:].replace("-", "_")) == 2, (command, old)
            assert f"{old} is deprecated" in capsys.readouterr().err and new in settings.settings_table()


# ------------------------------------------------------------------------------ one error path


def test_every_command_reports_bad_input_the_same_way(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ROBUSTNESS_IMAGES", "many")
    for argv in (["run"], ["calibrate", "--model", "toy", "--thresholds", str(tmp_path / "t.yaml")]):
        assert main(argv) == 2
        assert f"robustness {argv[0]}: $ROBUSTNESS_IMAGES='many': must be an integer >= 1" in capsys.readouterr().err
    monkeypatch.delenv("ROBUSTNESS_IMAGES")
    monkeypatch.setenv("ROBUSTNESS_DEVICE", "gpu")
    assert main(["activations", "--data", str(tmp_path)]) == 2
    assert "robustness activations: $ROBUSTNESS_DEVICE gpu: not a torch device" in capsys.readouterr().err


def test_activations_does_not_import_the_cli():
    import ast
    from pathlib import Path

    import robustness

    tree = ast.parse((Path(robustness.__file__).parent / "activations.py").read_text(encoding="utf-8"))
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert "cli" not in imported and "robustness.cli" not in imported


# ------------------------------------------------------------------------------ allow_tf32 reaches evaluate


@pytest.mark.parametrize("command", ["run", "calibrate"])
def test_allow_tf32_reaches_evaluate_from_the_cli(command, tmp_path, monkeypatch, capsys):
    """Absent, as a flag and as a variable: what ``robustness run`` / ``calibrate`` pass to ``evaluate``."""
    from test_evaluation import make_dataset

    import robustness.evaluation

    seen, real = [], robustness.evaluation.evaluate

    def spy(*args, **kwargs):
        seen.append(kwargs["allow_tf32"])
        return real(*args, **kwargs)

    monkeypatch.setattr(robustness.evaluation, "evaluate", spy)
    monkeypatch.delenv("ROBUSTNESS_ALLOW_TF32", raising=False)
    make_dataset(tmp_path / "data", 2)
    argv = [command, "--model", "test_evaluation:tiny_model", "--data", str(tmp_path / "data")]
    argv += ["--distortion", "contrast=0.5", "--device", "cpu", "--workers", "0", "--no-cache", "--no-progress"]
    if command == "run":
        argv += ["--no-report", "--output", str(tmp_path / "out")]
    else:
        argv += ["--thresholds", str(tmp_path / "t.yaml"), "--dry-run"]
    assert main(argv) == 0, capsys.readouterr().err
    assert main([*argv, "--allow-tf32"]) == 0, capsys.readouterr().err
    monkeypatch.setenv("ROBUSTNESS_ALLOW_TF32", "yes")
    assert main(argv) == 0, capsys.readouterr().err
    assert seen == [False, True, True]


@pytest.mark.parametrize("layer, expected", [("none", False), ("pytest", True), ("yaml", True), ("ini", True)])
def test_allow_tf32_reaches_evaluate_from_the_gate(layer, expected, pytester, monkeypatch):
    """The gate's session passes the resolved ``allow_tf32`` to every ``evaluate`` call."""
    from test_plugin import CONFTEST, THRESHOLDS, make_images

    monkeypatch.delenv("ROBUSTNESS_ALLOW_TF32", raising=False)
    make_images(pytester.path / "images")
    pytester.makeconftest(CONFTEST)
    defaults = "  images: 10\n"
    thresholds = THRESHOLDS.replace(defaults, defaults + "  allow_tf32: true\n") if layer == "yaml" else THRESHOLDS
    pytester.makefile(".yaml", thresholds=thresholds)
    pytester.makepyfile(
        test_tf32=f"def test_it(robustness_session):\n"
        f"    assert robustness_session.evaluate_options['allow_tf32'] is {expected}\n"
    )
    ini = "robustness_allow_tf32 = true\n" if layer == "ini" else ""
    pytester.makeini(f"[pytest]\nrobustness_data = images\n{ini}")
    flags = ["--robustness-allow-tf32"] if layer == "pytest" else []
    pytester.runpytest("-p", "no:cacheprovider", *flags).assert_outcomes(passed=1)


@pytest.fixture
def inference_settings_calls(monkeypatch):
    """The ``(device, allow_tf32)`` of every ``robustness.evaluation.inference_settings`` call, in
    order (the real context manager still runs)."""
    import contextlib

    import robustness.evaluation

    seen, real = [], robustness.evaluation.inference_settings

    @contextlib.contextmanager
    def spy(device, *, allow_tf32=False):
        seen.append((str(device), allow_tf32))
        with real(device, allow_tf32=allow_tf32):
            yield

    monkeypatch.setattr(robustness.evaluation, "inference_settings", spy)
    return seen


def test_allow_tf32_reaches_the_activations_forward_passes(tmp_path, monkeypatch, capsys, inference_settings_calls):
    """``robustness activations`` runs its forward passes under ``inference_settings`` with the setting."""
    import numpy as np
    from PIL import Image

    monkeypatch.delenv("ROBUSTNESS_ALLOW_TF32", raising=False)
    image = tmp_path / "one.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(image)
    argv = ["activations", "--model", "test_evaluation:tiny_model", "--image", str(image), "--device", "cpu"]
    argv += ["--distortion", "blur", "--levels", "1", "--channels", "2", "--output", str(tmp_path / "out")]
    assert main(argv) == 0, capsys.readouterr().err
    assert main([*argv, "--allow-tf32"]) == 0, capsys.readouterr().err
    assert inference_settings_calls == [("cpu", False), ("cpu", True)]


def test_allow_tf32_reaches_the_latency_timing(inference_settings_calls):
    """``robustness_latency`` times under the gate's inference settings, and records the switch."""
    from test_evaluation import tiny_model

    from robustness.pytest_plugin import LatencyCase

    class Benchmark:
        def __init__(self):
            self.extra_info = {}

        def __call__(self, function):
            return function()

    batch = torch.rand(2, 3, 32, 32)
    for allowed in (False, True):
        case = LatencyCase(
            "tiny", tiny_model(), 2, torch.device("cpu"), batch, "random", Benchmark(), allow_tf32=allowed
        )
        assert case.run().shape == (2, 1000)
        assert case.benchmark.extra_info["allow_tf32"] is allowed
    assert inference_settings_calls == [("cpu", False), ("cpu", True)]
