"""`robustness run` end to end on a few real ImageNet validation images."""

import json

import pytest
from PIL import Image

from robustness import DISTORTIONS
from robustness.cli import main
from robustness.datasets import resolve_data_dir

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def data_dir():
    try:
        return resolve_data_dir(None)
    except ValueError as error:
        pytest.skip(f"no ImageNet validation images here: {error}")


def test_run_writes_results_and_figure(tmp_path, data_dir, capsys):
    out = tmp_path / "run"
    status = main(
        [
            "run",
            "--model",
            "efficientnet_lite0",
            "--data",
            str(data_dir),
            "--limit",
            "3",
            "--distortion",
            "blur",
            "--distortion",
            "contrast",
            "--output",
            str(out),
            "--no-progress",
        ]
    )
    assert status == 0
    records = json.loads((out / "results.json").read_text())
    expected = [("clean", 0)] + [(d, level) for d in ("blur", "contrast") for level in DISTORTIONS[d].levels]
    assert [(r["distortion"], r["level"]) for r in records] == expected
    for record in records:
        assert record["model"] == "efficientnet_lite0"
        assert record["n"] == 3
        assert 0.0 <= record["top1"] <= record["top5"] <= 1.0
    # Contrast weight 1 leaves a constant grey image: every image gets the same prediction, so
    # at most one of three images (of different classes) can be right.
    by_condition = {(r["distortion"], r["level"]): r for r in records}
    assert by_condition[("contrast", 1.0)]["top1"] <= 1 / 3
    assert by_condition[("contrast", 0.0)]["top1"] == by_condition[("clean", 0)]["top1"]
    with Image.open(out / "accuracy_vs_level.png") as figure:
        assert figure.format == "PNG" and figure.width > 3 * figure.height
    printed = capsys.readouterr().out
    assert "blur" in printed and "top-1" in printed


def test_run_names_missing_data_folder(tmp_path, capsys):
    status = main(["run", "--data", str(tmp_path / "nowhere"), "--limit", "2", "--output", str(tmp_path / "o")])
    assert status == 2
    assert "nowhere" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_run_rejects_unknown_model(tmp_path, data_dir, capsys):
    status = main(["run", "--model", "no_such_net", "--data", str(data_dir), "--limit", "2"])
    assert status == 2
    assert "no_such_net" in capsys.readouterr().err


def test_run_rejects_unknown_distortion(data_dir, capsys):
    assert main(["run", "--distortion", "fog", "--data", str(data_dir)]) == 2
    assert "robustness run: --distortion fog: unknown distortion 'fog'; known: blur, noise" in capsys.readouterr().err


def test_run_fails_before_evaluating_when_output_cannot_be_created(tmp_path, data_dir, capsys):
    blocker = tmp_path / "afile"
    blocker.write_text("not a folder")
    status = main(
        [
            "run",
            "--data",
            str(data_dir),
            "--limit",
            "1",
            "--distortion",
            "contrast",
            "--output",
            str(blocker / "x"),
            "--no-progress",
        ]
    )
    assert status == 2
    captured = capsys.readouterr()
    assert "cannot create output folder" in captured.err and "afile" in captured.err
    assert "top-1" not in captured.out  # nothing was evaluated


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "--limit", "0"],
        ["run", "--seed", "-1"],
        ["run", "--batch-size", "0"],
        ["run", "--workers", "-1"],
        ["calibrate", "--model", "efficientnet_lite0", "--margin", "5"],
        ["calibrate", "--model", "efficientnet_lite0", "--images", "0"],
        ["activations", "--images", "0"],
    ],
)
def test_bad_numeric_arguments_are_rejected_by_name(argv, capsys):
    with pytest.raises(SystemExit):
        main(argv)
    assert argv[-2] in capsys.readouterr().err


def test_model_returning_nan_logits_is_an_error_not_zero_accuracy(data_dir):
    import torch

    from robustness import Classifier, evaluate, load_dataset
    from robustness.models import PREPROCESSING_PRESETS

    class NaNNet(torch.nn.Module):
        def forward(self, x):
            return torch.full((x.shape[0], 1000), float("nan"))

    model = Classifier(NaNNet(), PREPROCESSING_PRESETS["torchvision"], "nan_net")
    with pytest.raises(ValueError, match="non-finite"):
        evaluate(model, load_dataset(data_dir, limit=2), [], num_workers=0)


def test_results_json_with_impossible_values_is_rejected(tmp_path):
    from robustness.runs import read_results_json

    path = tmp_path / "results.json"
    path.write_text(json.dumps([{"model": "m", "distortion": "blur", "level": 1, "top1": 5, "top5": 0.9, "n": 10}]))
    with pytest.raises(ValueError, match="top1 must be a fraction"):
        read_results_json(path)
    path.write_text(json.dumps([{"model": "m", "distortion": "blur", "level": 1, "top1": 0.5, "top5": 0.9, "n": 0}]))
    with pytest.raises(ValueError, match="n must be an integer"):
        read_results_json(path)
