"""Models from timm (issue 11): ``load_model("timm:NAME")`` with timm's own preprocessing.

Offline (CI sets ``HF_HUB_OFFLINE=1``): random weights (``weights=None``). The preprocessing we derive
from timm's data config is checked against timm's own eval transform,
``timm.data.create_transform(**config)``, on real shared images, for architectures whose configs differ
in interpolation, crop_pct, mean and std.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from robustness.datasets import load_dataset
from robustness.models import ModelError, load_model
from robustness.models.timm_models import timm_preprocessing

timm = pytest.importorskip("timm")
from timm.data import create_transform, resolve_data_config  # noqa: E402 - after the importorskip

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "imagenet-val-1024"

#: timm names and the data config each is expected to have (from timm's pretrained_cfg), chosen so
#: that every field we map differs between at least two of them.
CONFIGS = {
    # ResNet-18, timm's a1_in1k recipe: bicubic, crop_pct 0.95 (resize floor(224 / 0.95) = 235), ImageNet mean/std
    "resnet18": ("bicubic", 0.95, (0.485, 0.456, 0.406), 235),
    # ResNet-18 with torchvision's weights: bilinear, crop_pct 0.875 (resize 256), ImageNet mean/std
    "resnet18.tv_in1k": ("bilinear", 0.875, (0.485, 0.456, 0.406), 256),
    # ViT-Tiny/16 (augreg): bicubic, crop_pct 0.9 (resize floor(248.9) = 248), mean = std = 0.5
    "vit_tiny_patch16_224": ("bicubic", 0.9, (0.5, 0.5, 0.5), 248),
}


@pytest.fixture(scope="module")
def pil_images():
    """Four real validation images as PIL RGB, or synthetic ones without the shared data."""
    if DATA.is_dir():
        dataset = load_dataset(DATA, limit=4)
        return [Image.fromarray(dataset.load(i)[0]) for i in range(len(dataset))]
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (300 + 37 * i, 400 - 23 * i, 3), dtype=np.uint8)) for i in range(4)]


def _grey_levels(tensor: torch.Tensor, mean, std) -> torch.Tensor:
    """A normalised (3, H, W) tensor back on the 0-255 scale: x * std + mean (mean, std on 0-255).

    Both pipelines' tensors are converted back with timm's mean and std, so a wrong mean or std in ours
    shows as a difference (converting ours with its own values would undo its mistake)."""
    return tensor.double() * torch.tensor(std).double().view(3, 1, 1) + torch.tensor(mean).double().view(3, 1, 1)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_timm_preprocessing_matches_timm_create_transform(name, pil_images):
    """Our Preprocessing from timm's data config gives timm's eval transform's pixels: measured max
    difference 0.00002 grey levels on four shared images (float32 rounding: timm scales to [0, 1] before
    the mean/std, we after); the test allows 0.01. A resize off by one pixel (rounding 224 / 0.95 to 236
    instead of timm's floor, 235) or the wrong interpolation moves pixels by tens of grey levels."""
    torch.manual_seed(0)
    model = load_model(f"timm:{name}", weights=None)  # offline: random weights; one probe forward pass
    config = resolve_data_config({}, model=model.net)
    interpolation, crop_pct, mean, resize = CONFIGS[name]
    assert (config["interpolation"], config["crop_pct"], tuple(config["mean"])) == (interpolation, crop_pct, mean)
    pre = model.preprocessing
    assert (pre.resize_size, pre.crop_size, pre.interpolation, pre.channel_order) == (resize, 224, interpolation, "RGB")
    assert model.name == f"timm-{name}"
    theirs_transform = create_transform(**config)
    timm_mean = tuple(255 * m for m in config["mean"])
    timm_std = tuple(255 * s for s in config["std"])
    worst = 0.0
    for image in pil_images:
        ours = pre(np.asarray(image))
        theirs = theirs_transform(image)
        assert ours.shape == theirs.shape == (3, 224, 224) and ours.dtype == torch.float32
        difference = _grey_levels(ours, timm_mean, timm_std) - _grey_levels(theirs, timm_mean, timm_std)
        worst = max(worst, float(difference.abs().max()))
    assert worst <= 0.01, f"{name}: max difference {worst:.4f} grey levels"


def test_the_comparison_sees_a_one_pixel_resize(pil_images):
    """The check above is sensitive: rounding the resize (236) instead of flooring it (235) fails it."""
    from dataclasses import replace

    config = {
        "input_size": (3, 224, 224),
        "interpolation": "bicubic",
        "mean": (0.485, 0.456, 0.406),
        "std": (0.229, 0.224, 0.225),
        "crop_pct": 0.95,
        "crop_mode": "center",
    }
    pre = timm_preprocessing(config)
    wrong = replace(pre, resize_size=236)
    image = pil_images[0]
    theirs = _grey_levels(create_transform(**config)(image), pre.mean, pre.std)
    assert float((_grey_levels(pre(np.asarray(image)), pre.mean, pre.std) - theirs).abs().max()) <= 0.01
    assert float((_grey_levels(wrong(np.asarray(image)), pre.mean, pre.std) - theirs).abs().max()) > 10


@pytest.mark.parametrize(
    "change, message",
    [
        ({"crop_mode": "squash"}, "crop_mode 'squash'"),
        ({"input_size": (3, 224, 256)}, r"input_size \(3, 224, 256\)"),
        ({"interpolation": "random"}, "interpolation 'random'"),
    ],
)
def test_timm_configs_we_cannot_reproduce_are_refused(change, message):
    config = {"input_size": (3, 224, 224), "interpolation": "bicubic", "mean": (0.5,) * 3, "std": (0.5,) * 3}
    with pytest.raises(ModelError, match=message + ".*preprocessing="):
        timm_preprocessing({**config, **change}, "timm:x")


def test_timm_state_dict_file_and_preprocessing_override(tmp_path):
    """weights=PATH (CLI --weights FILE) loads a state dict into the pretrained=False network."""
    torch.manual_seed(1)
    reference = timm.create_model("test_resnet", pretrained=False).eval()
    path = tmp_path / "test_resnet.pth"
    torch.save(reference.state_dict(), path)
    model = load_model("timm:test_resnet", weights=path)
    x = torch.randn(2, *model.preprocessing.input_size)
    with torch.inference_mode():
        assert torch.equal(model(x), reference(x))
    assert load_model("timm:test_resnet", weights=None, preprocessing="torchvision").preprocessing.crop_size == 224
    bad = tmp_path / "bad.pth"
    torch.save({"fc.weight": torch.zeros(1)}, bad)
    with pytest.raises(ModelError, match="bad.pth does not fit the architecture"):
        load_model("timm:test_resnet", weights=bad)


def test_unknown_timm_name_suggests_close_names():
    with pytest.raises(ModelError, match="unknown timm model 'resnet_18'.*resnet18"):
        load_model("timm:resnet_18", weights=None)


def test_pretrained_weights_offline_is_a_clear_error():
    """With HF_HUB_OFFLINE=1 (as in CI) and no cached weights, timm's download fails at once; the error
    says how to work offline."""
    import huggingface_hub.constants

    if not huggingface_hub.constants.HF_HUB_OFFLINE:
        pytest.skip("needs HF_HUB_OFFLINE=1 (online, timm would download the weights)")
    try:
        load_model("timm:test_vit")
    except FileNotFoundError as error:
        message = str(error)
        assert "timm:test_vit" in message and "--weights FILE" in message and "--weights random" in message
    else:
        pytest.skip("timm's test_vit weights are in the Hugging Face cache here")


def test_missing_timm_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm raises ImportError
    with pytest.raises(ImportError, match=r"\[timm\]"):
        load_model("timm:resnet18", weights=None)


def test_core_does_not_import_timm():
    """timm is imported for a timm: spec only: not by robustness, the models package or other specs."""
    code = (
        "import sys, torch, robustness.models as m, robustness.cli, robustness.evaluation\n"
        "m.load_model(torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(3, 1000)),"
        " preprocessing='torchvision')\n"
        "print('timm' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert result.stdout.strip() == "False", result.stderr


@pytest.mark.skipif(not DATA.is_dir(), reason=f"shared images not at {DATA}")
def test_cli_run_timm_model_with_random_weights(tmp_path):
    """--model timm:NAME --weights random runs offline; results carry the timm- name."""
    import json

    from robustness.cli import main

    out = tmp_path / "out"
    common = ["--data", str(DATA), "--limit", "2", "--clean-only", "--workers", "0", "--no-progress", "--no-cache"]
    assert main(["run", "--model", "timm:test_resnet", "--weights", "random", *common, "--output", str(out)]) == 0
    records = json.loads((out / "results.json").read_text())
    assert [(r["model"], r["distortion"], r["n"]) for r in records] == [("timm-test_resnet", "clean", 2)]
