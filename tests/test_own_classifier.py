"""Issue 11 end to end: gate a team's own 3-class classifier on its own class-name folders.

The team's folder ``data/val/{black_grouse,loudspeaker,neck_brace}/*.jpg`` holds shared ImageNet
validation images of three wnids under names of the team's choosing (3 per class). The team's model
is a linear head on a pretrained backbone: EfficientNet-Lite0 with its 1000-way ``_fc`` replaced by a
3-way one whose rows are Lite0's rows for those three ImageNet classes, saved as the team's own
checkpoint. So its 3 logits are a real network's logits for those classes and its accuracy is
meaningful (and high); nothing in this file states what it is.

Levels: the team's own, off the paper's grid (jpeg quality 75/50, blur sigma 0.5/1.5), as issue 11 asks.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import robustness

# isort: split
# Imported outside the in-process pytester runs (see tests/test_plugin.py): torch cannot be imported
# twice in one process, and modules first imported inside a run are re-imported by every run.
import _pytest.stepwise  # noqa: F401
import hypothesis  # noqa: F401
from PIL import JpegImagePlugin  # noqa: F401

import robustness.cache
import robustness.evaluation
import robustness.gate
import robustness.html_report
import robustness.labels
import robustness.models
import robustness.pytest_plugin
import robustness.report
import robustness.thresholds
from robustness.datasets import imagenet_wnids, load_dataset

pytest_plugins = ["pytester"]

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "imagenet-val-1024"
#: the team's class names -> the ImageNet wnid whose images the test copies under that name
TEAM_CLASSES = {"black_grouse": "n01795545", "loudspeaker": "n03691459", "neck_brace": "n03814639"}
PER_CLASS = 3

CONFTEST = '''
import os

import pytest
import torch

from robustness import load_model


def build_teamnet():
    """The team's architecture: EfficientNet-Lite0 features and a 3-way linear head."""
    net = load_model("efficientnet_lite0", weights=None).net
    net._fc = torch.nn.Linear(net._fc.in_features, 3)
    return net


@pytest.fixture(scope="session")
def robustness_model():
    net = build_teamnet()
    if os.environ.get("TEAM_BROKEN"):  # a regressed checkpoint: classes 0 and 1 swapped in the head
        state = torch.load(os.environ["TEAM_CHECKPOINT"], weights_only=True)
        for key in ("_fc.weight", "_fc.bias"):
            state[key] = state[key][[1, 0, 2]]
        net.load_state_dict(state)
        return load_model(net, preprocessing="efficientnet_lite", model_name="teamnet")
    return load_model(
        net, weights=os.environ["TEAM_CHECKPOINT"], preprocessing="efficientnet_lite", model_name="teamnet"
    )
'''

THRESHOLDS = """\
defaults:
  images: 9
models:
  teamnet:
    source: fixture
    clean: {top1: 0.6, balanced_accuracy: 0.6}
    jpeg:
      75: {top1: 0.6, balanced_accuracy: 0.6}
      50: {top1_of_clean: 0.7, balanced_accuracy: 0.5}
    blur:
      0.5: {top1: 0.6, balanced_accuracy: 0.6}
      1.5: {top1: 0.5, balanced_accuracy_of_clean: 0.7}
"""

TEST = """\
def test_accuracy(robustness_verdict):
    robustness_verdict.check()
"""


@pytest.fixture(scope="module")
def team(tmp_path_factory):
    """The team's repository parts: the image folder, the checkpoint, a prediction cache shared by the runs."""
    if not DATA.is_dir():
        pytest.skip(f"shared ImageNet images not found ({DATA})")
    root = tmp_path_factory.mktemp("team")
    for name, wnid in TEAM_CLASSES.items():
        (root / "data" / "val" / name).mkdir(parents=True)
        for file in sorted((DATA / wnid).glob("*.JPEG"))[:PER_CLASS]:
            shutil.copy(file, root / "data" / "val" / name / f"{file.stem}.jpg")
    net = robustness.load_model("efficientnet_lite0").net
    rows = [imagenet_wnids().index(TEAM_CLASSES[name]) for name in sorted(TEAM_CLASSES)]
    head = torch.nn.Linear(net._fc.in_features, 3)
    with torch.no_grad():
        head.weight.copy_(net._fc.weight[rows])
        head.bias.copy_(net._fc.bias[rows])
    net._fc = head
    torch.save(net.state_dict(), root / "teamnet.pt")
    return root


@pytest.fixture
def gate(pytester, monkeypatch, team):
    monkeypatch.setenv("TEAM_CHECKPOINT", str(team / "teamnet.pt"))
    monkeypatch.delenv("TEAM_BROKEN", raising=False)
    pytester.makeconftest(CONFTEST)
    pytester.makefile(".yaml", thresholds=THRESHOLDS)
    pytester.makepyfile(test_gate=TEST)
    pytester.makeini(
        f"[pytest]\nrobustness_data = {team / 'data' / 'val'}\nrobustness_cache_dir = {team / 'cache'}\n"
        "addopts = -W error --robustness-workers 0 -p no:cacheprovider -p no:unraisableexception\n"
    )
    return pytester


def test_green_gate_on_own_classes(gate):
    result = gate.runpytest("-v")
    result.assert_outcomes(passed=5)
    result.stdout.fnmatch_lines(
        [
            "*test_accuracy[[]teamnet-clean[]] PASSED*",
            "*test_accuracy[[]teamnet-jpeg-q50[]] PASSED*",
            "*test_accuracy[[]teamnet-blur-s1.5[]] PASSED*",
            "*teamnet*clean*top1/balanced_accuracy*n=9*pass*",
        ]
    )


def test_marker_selects_jpeg_only(gate):
    result = gate.runpytest("-v", "-m", "jpeg")
    result.assert_outcomes(passed=2, deselected=3)
    result.stdout.fnmatch_lines(["*teamnet-jpeg-q75*PASSED*", "*teamnet-jpeg-q50*PASSED*"])


def test_regressed_checkpoint_fails_its_bars(gate, monkeypatch):
    """Two classes swapped in the head: a third of the images at most stay right; the bars catch it."""
    monkeypatch.setenv("TEAM_BROKEN", "1")
    result = gate.runpytest("-m", "clean")
    result.assert_outcomes(failed=1, deselected=4)
    result.stdout.fnmatch_lines(
        [
            "*teamnet clean: BELOW THRESHOLD*",
            "*FAIL top1 * < required 60.0%*",
            "*FAIL balanced_accuracy * < required 60.0%*",
            "*threshold set at *thresholds.yaml:6*",
        ]
    )
    assert "top5" not in result.stdout.str()  # 3 classes: top-5 is neither shown nor gated


def test_top5_bar_on_three_classes_is_a_thresholds_error(gate):
    gate.makefile(".yaml", thresholds=THRESHOLDS.replace("clean: {top1: 0.6,", "clean: {top5: 0.9, top1: 0.6,"))
    result = gate.runpytest()
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(
        ["*thresholds.yaml:6: models.teamnet.clean.top5: top5 needs more than 5 classes, but the dataset has 3*"]
    )


def test_imagenet_model_on_own_classes_names_both_widths(gate):
    """A 1000-class model on a 3-class folder: one clear error with both numbers and their sources."""
    gate.makefile(".yaml", thresholds="models:\n  efficientnet_lite0:\n    clean: {top1: 0.5}\n")
    result = gate.runpytest()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        [
            "*model efficientnet_lite0 outputs 1000 classes*but the dataset has 3 classes: "
            "black_grouse, loudspeaker, neck_brace (sorted folder names of *)*"
        ]
    )


def test_report_and_table_use_the_team_class_names(team, tmp_path):
    """The plain API on the same folder: table, results.json, provenance and the HTML report's
    per-class section and example strips name the team's classes."""
    from robustness.html_report import write_report
    from robustness.report import format_table
    from robustness.runs import run_provenance, write_predictions, write_results_json

    net = robustness.load_model("efficientnet_lite0", weights=None).net
    net._fc = torch.nn.Linear(net._fc.in_features, 3)
    model = robustness.load_model(
        net, weights=team / "teamnet.pt", preprocessing="efficientnet_lite", model_name="teamnet"
    )
    dataset = load_dataset(team / "data" / "val")
    results = robustness.evaluate(model, dataset, {"jpeg": [75, 50]}, num_workers=0, cache=team / "cache")
    assert "classes: 3 classes: black_grouse, loudspeaker, neck_brace" in format_table(results)
    run = tmp_path / "run"
    run.mkdir()
    write_results_json(results, run / "results.json")
    provenance = run_provenance(model, dataset, seed=0)
    write_predictions(results, run / "predictions.npz", provenance)
    (run / "provenance.json").write_text(json.dumps(provenance))
    records = json.loads((run / "results.json").read_text())
    assert {r["num_classes"] for r in records} == {3} and all(r["top5"] is None for r in records)
    assert provenance["classes"]["ids"] == sorted(TEAM_CLASSES)
    bars = tmp_path / "thresholds.yaml"
    bars.write_text(
        "models:\n  teamnet:\n    source: fixture\n    clean: {balanced_accuracy: 0.5}\n"
        "    jpeg:\n      75: {top1: 0.5, balanced_accuracy_of_clean: 0.7}\n"
    )
    page = write_report([run], tmp_path / "report.html", thresholds=bars).read_text()
    assert "3 passed, 0 failed, 0 not measured" in page  # balanced-accuracy bars judged from results.json
    classes = page[page.index("id='classes'") : page.index("id='provenance'")]
    examples = page[page.index("id='examples'") :]
    for name in TEAM_CLASSES:
        assert f"<td class='l'>{name}</td>" in classes
    assert "true class: <b>" in examples
    assert any(f"true class: <b>{name}</b>" in examples for name in TEAM_CLASSES)
    assert "tench" not in page  # ImageNet's class 0: the team's label 0 is black_grouse


def test_a_sample_of_one_class_is_refused(gate, team, tmp_path):
    """Files named per class (bird_0.jpg, ...) put one class first in file-name order: `images: 3` would
    judge the model on birds alone. The gate refuses that sample, naming the classes it lacks."""
    blocked = tmp_path / "blocked"
    for folder in sorted((team / "data" / "val").iterdir()):
        (blocked / folder.name).mkdir(parents=True)
        for k, file in enumerate(sorted(folder.iterdir())):
            shutil.copy(file, blocked / folder.name / f"{folder.name}_{k}.jpg")
    gate.makefile(".yaml", thresholds=THRESHOLDS.replace("images: 9", "images: 3"))
    result = gate.runpytest(f"--robustness-data={blocked}")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(["*the first 3 images of * in file-name order hold only 1 of the 3 classes*"])
