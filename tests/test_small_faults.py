"""One test per small fault: file modes, numpy scalars in checkpoints, preprocessing strings in
register_model, calibrate's --preprocessing / --name and its conftest hint, run --name, units named once
and integer ticks for integer level grids."""

from __future__ import annotations

import argparse
import json
import os
import stat
import textwrap
from pathlib import Path

import matplotlib.figure
import numpy as np
import pytest
import torch
from PIL import Image

from robustness import cli
from robustness._io import atomic_write, new_file_mode
from robustness.distortions import DISTORTIONS
from robustness.evaluation import CLEAN, Condition, ConditionResult
from robustness.gate import condition_label
from robustness.models import (
    MODELS,
    PREPROCESSING_PRESETS,
    ModelError,
    list_models,
    load_model,
    register_model,
    unregister_model,
)
from robustness.report import format_table, plot_accuracy_vs_level
from robustness.runs import write_results_json

# --------------------------------------------------------------------------------- file modes


@pytest.fixture
def umask():
    """Set the process umask for one test (``umask(0o022)``), restoring the old one afterwards."""
    old = os.umask(0o022)
    os.umask(old)
    try:
        yield lambda value: os.umask(value)
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_new_files_follow_the_umask(tmp_path, umask, mask, expected):
    umask(mask)
    assert new_file_mode() == expected
    atomic_write(tmp_path / "a.bin", b"x")
    assert _mode(tmp_path / "a.bin") == expected
    assert os.umask(mask) == mask  # reading the mode left the umask alone


def test_a_replaced_file_keeps_its_mode(tmp_path, umask):
    umask(0o022)
    path = tmp_path / "thresholds.yaml"
    path.write_text("old\n")
    for mode in (0o664, 0o640, 0o444):
        path.chmod(mode)
        atomic_write(path, b"new\n")
        assert _mode(path) == mode and path.read_bytes() == b"new\n"
    assert [p.name for p in tmp_path.iterdir()] == ["thresholds.yaml"]  # no temporary file left


def _results() -> list[ConditionResult]:
    def result(distortion, level, top1):
        return ConditionResult(
            model="m",
            distortion=distortion,
            level=level,
            top1=top1,
            top5=min(1.0, top1 + 0.2),
            n=4,
            predictions=np.zeros((4, 5), dtype=np.int64),
            labels=np.zeros(4, dtype=np.int64),
        )

    results = [result(CLEAN, 0, 0.75)]
    for name, spec in DISTORTIONS.items():
        results += [result(name, level, 0.5) for level in spec.levels]
    return results


def test_results_and_figure_are_written_with_the_umask_mode(tmp_path, umask):
    umask(0o022)
    write_results_json(_results(), tmp_path / "results.json")
    plot_accuracy_vs_level(_results(), tmp_path / "accuracy_vs_level.png")
    assert _mode(tmp_path / "results.json") == 0o644
    assert _mode(tmp_path / "accuracy_vs_level.png") == 0o644
    with Image.open(tmp_path / "accuracy_vs_level.png") as image:
        assert image.format == "PNG"


# --------------------------------------------------------------------------------- checkpoints


class _TinyNet(torch.nn.Module):
    """(N, 3, H, W) -> (N, 1000) logits in a few operations."""

    def __init__(self):
        super().__init__()
        self.pool = torch.nn.AdaptiveAvgPool2d(1)
        self.fc = torch.nn.Linear(3, 1000)

    def forward(self, x):
        return self.fc(self.pool(x).flatten(1))


class _NotWeights:
    """An arbitrary class: unpickling it means importing and running this module's code."""

    def __init__(self, value):
        self.value = value


def test_checkpoint_with_numpy_scalars_loads(tmp_path):
    source = _TinyNet()
    path = tmp_path / "checkpoint.pth"
    torch.save(
        {
            "epoch": np.int64(90),
            "best_acc1": np.float64(0.697),
            "lr": np.float32(0.1),
            "done": np.bool_(True),
            "arch": "tiny",
            "state_dict": source.state_dict(),
        },
        path,
    )
    loaded = load_model(_TinyNet(), weights=path, preprocessing="torchvision")
    assert torch.equal(loaded.net.fc.weight, source.fc.weight)
    assert torch.equal(loaded.net.fc.bias, source.fc.bias)


@pytest.mark.parametrize(
    "extra, refused",
    [
        (_NotWeights(1), "_NotWeights"),
        (argparse.Namespace(lr=0.1), "argparse.Namespace"),
    ],
)
def test_checkpoint_with_code_is_refused_with_a_plain_message(tmp_path, extra, refused):
    path = tmp_path / "checkpoint.pth"
    torch.save({"epoch": np.int64(3), "args": extra, "state_dict": _TinyNet().state_dict()}, path)
    with pytest.raises(ModelError) as info:
        load_model(_TinyNet(), weights=path, preprocessing="torchvision")
    message = str(info.value)
    assert str(path) in message and refused in message
    assert "state_dict()" in message  # what to do instead
    assert "\x1b[" not in message  # no terminal escape codes
    assert "weights_only=False" not in message  # not torch's advice to turn the protection off


@pytest.mark.parametrize("content", [b"garbage", b"", b"PK\x03\x04 not really a zip"])
def test_a_corrupt_checkpoint_is_named_without_torchs_advice(tmp_path, content):
    path = tmp_path / "broken.pth"
    path.write_bytes(content)
    with pytest.raises(ModelError) as info:
        load_model(_TinyNet(), weights=path, preprocessing="torchvision")
    message = str(info.value)
    assert str(path) in message and "cannot read" in message
    assert "\x1b[" not in message and "weights_only=False" not in message and "set to `False`" not in message


# --------------------------------------------------------------------------------- register_model


@pytest.fixture
def registered():
    names = []
    yield names
    for name in names:
        if name in list_models():
            unregister_model(name)


def test_register_model_takes_a_preset_name(registered):
    registered.append("_tiny_lite")

    @register_model("_tiny_lite", preprocessing="efficientnet_lite")
    def build():
        return _TinyNet()

    assert MODELS["_tiny_lite"].preprocessing == PREPROCESSING_PRESETS["efficientnet_lite"]
    model = load_model("_tiny_lite")
    assert model.name == "_tiny_lite" and model.preprocessing.input_size == (3, 224, 224)


def test_register_model_rejects_a_bad_preprocessing_at_once(registered):
    registered.append("_tiny_bad")
    with pytest.raises(ModelError, match="no_such_preset"):
        register_model("_tiny_bad", preprocessing="no_such_preset")
    assert "_tiny_bad" not in MODELS


# --------------------------------------------------------------------------------- CLI: --name, calibrate


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A working directory with a factory module ``tinynet.py`` and 4 images in 2 classes."""
    (tmp_path / "tinynet.py").write_text(
        textwrap.dedent("""
        import torch

        def build_net():
            torch.manual_seed(0)
            return torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(3, 1000))

        def robustness_model():  # what a conftest.py fixture looks like to an import
            return build_net()
    """)
    )
    rng = np.random.default_rng(0)
    for wnid in ("n01440764", "n01443537"):
        folder = tmp_path / "data" / wnid
        folder.mkdir(parents=True)
        for k in range(2):
            Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(folder / f"{wnid}_{k}.JPEG")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


COMMON = ["--data", "data", "--distortion", "contrast", "--no-progress", "--no-cache", "--workers", "0"]


def _run_records(project: Path, *extra: str) -> list[dict]:
    output = project / "out"
    code = cli.main(
        [
            "run",
            "--model",
            "tinynet:build_net",
            "--preprocessing",
            "torchvision",
            *COMMON,
            "--no-report",
            "--output",
            str(output),
            *extra,
        ]
    )
    assert code == 0
    return json.loads((output / "results.json").read_text())


def test_run_name_names_the_model_in_results(project):
    assert {r["model"] for r in _run_records(project)} == {"build_net"}
    assert {r["model"] for r in _run_records(project, "--name", "tiny-v2")} == {"tiny-v2"}


@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o077, 0o600)])
def test_run_outputs_follow_the_umask(project, umask, mask, expected):
    umask(mask)
    output = project / "run"
    assert (
        cli.main(
            ["run", "--model", "tinynet:build_net", "--preprocessing", "torchvision", *COMMON, "--output", str(output)]
        )
        == 0
    )
    modes = {p.name: oct(_mode(p)) for p in output.iterdir()}
    assert {"results.json", "accuracy_vs_level.png", "predictions.npz", "provenance.json", "report.html"} <= set(modes)
    assert set(modes.values()) == {oct(expected)}, modes


def test_calibrate_takes_preprocessing_and_name(project, capsys):
    base = [
        "calibrate",
        "--model",
        "tinynet:build_net",
        "--thresholds",
        "t.yaml",
        "--images",
        "4",
        "--no-baseline",
        *COMMON,
    ]
    assert cli.main(base) == 2
    err = capsys.readouterr().err
    assert "--preprocessing" in err  # the error's advice is an option calibrate has
    assert cli.main([*base, "--preprocessing", "torchvision", "--name", "tiny-v2"]) == 0
    text = (project / "t.yaml").read_text()
    assert "tiny-v2:" in text and "build_net" not in text
    assert "contrast:" in text


def test_calibrate_says_how_to_calibrate_a_conftest_fixture_model(project, capsys):
    args = ["calibrate", "--model", "my_fixture_model", "--thresholds", "t.yaml", "--data", "data", "--no-cache"]
    assert cli.main([*args, "--import", "tinynet"]) == 2
    err = capsys.readouterr().err
    assert "tinynet defines a robustness_model pytest fixture" in err
    assert "pytest --robustness-update-thresholds" in err
    assert cli.main(args) == 2
    assert "pytest --robustness-update-thresholds" in capsys.readouterr().err
    assert not (project / "t.yaml").exists()


# --------------------------------------------------------------------------------- units and ticks


@pytest.mark.parametrize("name", list(DISTORTIONS))
def test_units_are_named_once(name):
    spec = DISTORTIONS[name]
    level = spec.levels[0]
    label = condition_label(Condition(name, level))
    assert label.count(spec.parameter) == 1, label
    table = format_table([r for r in _results() if r.distortion == name][:1])
    assert table.count(spec.parameter) == 1, table
    assert f"({spec.parameter}, {spec.parameter})" not in table
    assert spec.label in label and spec.label in table


def test_jpeg_condition_label():
    assert condition_label(Condition("jpeg", 10)) == "jpeg level 10 (quality)"
    assert condition_label(Condition("blur", 3)) == "blur level 3 (sigma (px))"


@pytest.fixture
def saved_figures(monkeypatch):
    """The matplotlib figures saved during the test (``Figure.savefig`` wrapped)."""
    figures = []
    original = matplotlib.figure.Figure.savefig

    def savefig(self, *args, **kwargs):
        figures.append(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", savefig)
    return figures


def _visible_ticks(ax) -> list[float]:
    low, high = sorted(ax.get_xlim())
    return [t for t in ax.get_xticks() if low <= t <= high]


def _check_panels(figure) -> int:
    checked = 0
    for ax in figure.axes:
        for name, spec in DISTORTIONS.items():
            if ax.get_xlabel() == spec.label:
                assert f"{spec.parameter} ({spec.parameter})" not in ax.get_xlabel()
                ticks = _visible_ticks(ax)
                if spec.integer:
                    assert ticks and all(float(t).is_integer() for t in ticks), (name, ticks)
                    checked += 1
    return checked


def test_integer_grids_get_integer_ticks_in_the_figure(tmp_path, saved_figures):
    plot_accuracy_vs_level(_results(), tmp_path / "figure.png")
    assert len(saved_figures) == 1
    assert _check_panels(saved_figures[0]) == 1  # the JPEG panel


def test_integer_grids_get_integer_ticks_in_the_report(tmp_path, saved_figures):
    from robustness.html_report import curves_figure, load_run

    write_results_json(_results(), tmp_path / "results.json")
    curves_figure([load_run(tmp_path)])
    assert _check_panels(saved_figures[-1]) == 2  # JPEG, top-1 and top-5 rows
