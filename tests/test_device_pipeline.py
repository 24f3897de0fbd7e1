"""The device-side pipeline (robustness/device_pipeline.py) against the reference (numpy / scipy /
Pillow) path, on the CPU: blur and contrast within 1 grey level of ``distort()`` (contrast: identical),
noise statistically identical (see :func:`test_noise_is_statistically_identical_to_the_reference`),
resize / crop / normalisation within 1 grey level of Pillow, the fallback rules, the cache keys and the
engine path (``evaluate(..., pipeline="device", device="cpu")``).
"""

from __future__ import annotations

import math
import types
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from test_evaluation import make_dataset, tiny_model

from robustness import Preprocessing, distort
from robustness import device_pipeline as dp
from robustness.cache import PredictionCache
from robustness.evaluation import evaluate, image_seed
from robustness.images import load_image
from robustness.models.preprocessing import PREPROCESSING_PRESETS
from robustness.settings import SettingError, resolve

SIGMAS = [0.5, 1, 2.5, 3, 9]


def _tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image).permute(2, 0, 1).to(torch.float32)


def _array(tensor: torch.Tensor) -> np.ndarray:
    return tensor.permute(1, 2, 0).numpy()


@pytest.fixture(scope="module")
def real_images(shared_image_paths) -> list[np.ndarray]:
    """Four shared ImageNet images at native size (375 x 500 and the like)."""
    return [load_image(path) for path in shared_image_paths[:4]]


def _synthetic() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    checker = (np.indices((40, 33)).sum(axis=0) % 2 * 255).astype(np.uint8)
    return {
        "noise-5x7": rng.integers(0, 256, (5, 7, 3), dtype=np.uint8),  # window (37 taps at sigma 9) > image
        "checker-40x33": np.repeat(checker[..., None], 3, axis=2),  # saturated 0/255 edges everywhere
        "pixel-1x1": np.array([[[0, 128, 255]]], dtype=np.uint8),
        "ramp-3x64": np.tile(np.linspace(0, 255, 64).astype(np.uint8)[None, :, None], (3, 1, 3)),
    }


# ---------------------------------------------------------------------------------------------- blur


@pytest.mark.parametrize("sigma", SIGMAS)
def test_blur_within_one_grey_level_on_real_images(real_images, sigma):
    """A 96 x 128 corner of each image is blurred as a whole image, so its borders (where the reference
    reflects half-sample symmetrically) are a third of what is compared."""
    for image in real_images:
        corner = np.ascontiguousarray(image[:96, :128])
        reference = distort(corner, "blur", sigma).astype(np.int16)
        device = _array(dp.gaussian_blur(_tensor(corner), sigma)).astype(np.int16)
        difference = np.abs(device - reference)
        assert difference.max() <= 1, (sigma, difference.max())
        assert (difference > 0).mean() <= 1e-3, (sigma, (difference > 0).mean())


@pytest.mark.parametrize("sigma", SIGMAS)
@pytest.mark.parametrize("name", list(_synthetic()))
def test_blur_within_one_grey_level_on_synthetic_images(name, sigma):
    """Tiny images (window longer than the image: the reflection repeats), saturated edges, one pixel."""
    image = _synthetic()[name]
    reference = distort(image, "blur", sigma).astype(np.int16)
    device = _array(dp.gaussian_blur(_tensor(image), sigma)).astype(np.int16)
    assert np.abs(device - reference).max() <= 1


def test_blur_borders_reflect_half_sample_symmetric():
    """Near a border the reference sees ``d c b a | a b c d``: a one-sided step image stays exactly
    the reference's there (a wrong reflection, e.g. ``c b | a b c``, or zero padding would move it)."""
    image = np.zeros((9, 9, 3), dtype=np.uint8)
    image[:, :2] = 255  # a bright band touching the left border
    for sigma in (1, 2, 9):
        reference = distort(image, "blur", sigma)
        device = _array(dp.gaussian_blur(_tensor(image), sigma)).astype(np.uint8)
        assert np.abs(device.astype(int) - reference.astype(int)).max() <= 1
        assert device[:, 0].min() >= reference[:, 0].min() - 1


def test_blur_sigma_zero_is_identity_and_bad_sigma_is_an_error():
    image = _synthetic()["noise-5x7"]
    assert np.array_equal(_array(dp.gaussian_blur(_tensor(image), 0)), image)
    with pytest.raises(ValueError, match="sigma"):
        dp.gaussian_blur(_tensor(image), -1)
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        dp.gaussian_blur(torch.zeros(4, 4), 1)


# ------------------------------------------------------------------------------------------ contrast


@pytest.mark.parametrize("weight", [0.0, 0.1, 0.5, 0.9, 1.0])
def test_contrast_is_identical_to_the_reference(real_images, weight):
    images = [real_images[0], *_synthetic().values()]
    for image in images:
        assert np.array_equal(_array(dp.contrast(_tensor(image), weight)), distort(image, "contrast", weight))


# --------------------------------------------------------------------------------------------- noise


def _noise_pair(grey: int, std: float, seed) -> tuple[np.ndarray, np.ndarray]:
    """(reference, device) outputs for a 64 x 64 image of constant ``grey``, as int arrays."""
    image = np.full((64, 64, 3), grey, dtype=np.uint8)
    reference = distort(image, "noise", std, seed=seed).astype(np.int64)
    device = _array(dp.gaussian_noise(_tensor(image), std, seed)).astype(np.int64)
    return reference, device


def _ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic: the largest gap between the empirical CDFs."""
    values = np.union1d(a, b)
    cdf_a = np.searchsorted(np.sort(a), values, side="right") / len(a)
    cdf_b = np.searchsorted(np.sort(b), values, side="right") / len(b)
    return float(np.abs(cdf_a - cdf_b).max())


@pytest.mark.parametrize("std", [10, 30])
@pytest.mark.parametrize("image_id", ["ILSVRC2012_val_00000001", "img042"])
def test_noise_is_statistically_identical_to_the_reference(std, image_id):
    """The test, per image (64 x 64 x 3 = n = 12288 values of constant grey 128, where clipping at
    0 or 255 has probability < 3e-5 at std 30), with the seed the engine gives that image
    (``image_seed(0, image_id, "noise", std)``) and ``r = output - 128``:

    * mean: ``|mean(r)| <= 5 std / sqrt(n)`` (5 standard errors);
    * spread: ``|sd(r) - sqrt(std^2 + 1/12)| <= 5 std / sqrt(2 n)`` (rounding to integers adds the
      variance 1/12 of a uniform step, Sheppard; the standard error of a normal sample's sd is
      ``std / sqrt(2 n)``);
    * distribution: the two-sample Kolmogorov-Smirnov statistic between the device's and the
      reference's ``r`` is at most ``1.95 sqrt(2 / n)`` (the critical value at significance 0.001;
      conservative for integer-valued samples);
    * and the two are different draws (not the same numbers): the test compares distributions.
    """
    seed = image_seed(0, image_id, "noise", std)
    reference, device = (values - 128 for values in _noise_pair(128, std, seed))
    n = device.size
    for residual in (reference, device):
        assert abs(residual.mean()) <= 5 * std / math.sqrt(n)
        assert abs(residual.std() - math.sqrt(std**2 + 1 / 12)) <= 5 * std / math.sqrt(2 * n)
    assert _ks_statistic(device.ravel(), reference.ravel()) <= 1.95 * math.sqrt(2 / n)
    assert not np.array_equal(device, reference)


@pytest.mark.parametrize(("grey", "edge"), [(20, 0), (235, 255)])
def test_noise_clips_like_the_reference(grey, edge):
    """Clipping: grey 20 (235) with std 50 puts a fraction ``p = Phi((0.5 - 20) / 50) = 0.35`` of the
    values at 0 (255) after rounding; in each path that fraction is within 5 standard errors
    ``sqrt(p (1 - p) / n)`` of ``p``, and never outside 0-255."""
    seed = image_seed(3, "clip", "noise", 50)
    p = 0.5 * (1 + math.erf(((0.5 - 20) / 50) / math.sqrt(2)))
    for values in _noise_pair(grey, 50, seed):
        assert values.min() >= 0 and values.max() <= 255
        fraction = (values == edge).mean()
        assert abs(fraction - p) <= 5 * math.sqrt(p * (1 - p) / values.size), (fraction, p)


def test_noise_is_deterministic_whatever_the_batch():
    """The same image and seed give the same noise alone, second in a batch, or after other images."""
    pre = Preprocessing(40, 32, "bilinear")
    images = [np.random.default_rng(k).integers(0, 256, (48 + k, 50, 3), dtype=np.uint8) for k in range(3)]
    entries = [("noise", 40.0, image_seed(0, f"img{k}", "noise", 40)) for k in range(3)]
    alone = dp.device_stage(images[2:], entries[2:], pre, "cpu")
    batch = dp.device_stage(images, entries, pre, "cpu")
    reordered = dp.device_stage(images[::-1], entries[::-1], pre, "cpu")
    assert torch.equal(batch[2], alone[0]) and torch.equal(reordered[0], alone[0])
    other_seed = dp.device_stage(images[2:], [("noise", 40.0, image_seed(1, "img2", "noise", 40))], pre, "cpu")
    assert not torch.equal(other_seed[0], alone[0])


def test_noise_seed_depends_on_the_seed_only():
    assert dp.noise_seed(image_seed(0, "a", "noise", 10)) == dp.noise_seed(image_seed(0, "a", "noise", 10))
    assert dp.noise_seed(image_seed(0, "a", "noise", 10)) != dp.noise_seed(image_seed(0, "b", "noise", 10))
    assert 0 <= dp.noise_seed(5) < 2**63
    with pytest.raises(ValueError, match="seed"):
        dp.noise_seed(-1)


# ------------------------------------------------------------------------------------- preprocessing


@pytest.mark.parametrize("preset", sorted(PREPROCESSING_PRESETS))
def test_preprocessing_within_one_grey_level_of_pillow(real_images, preset):
    """Resize (Pillow's two rounded passes), crop, channel order and normalisation against
    :meth:`Preprocessing.__call__`: every value within 1 grey level (0-255 scale), and at most 2 % of
    the values differ at all (measured: 0-1 %; a single rounded pass instead of two gave up to 7 grey
    levels on bicubic near saturated pixels)."""
    pre = PREPROCESSING_PRESETS[preset]
    scale = torch.tensor(pre.std).view(3, 1, 1)
    images = [*real_images, _synthetic()["checker-40x33"], np.ascontiguousarray(real_images[0][:, :300])]
    for image in images:
        reference = pre(image)
        device = dp.preprocess(_tensor(image), pre)
        assert device.shape == reference.shape == (3, pre.crop_size, pre.crop_size)
        grey_levels = ((device - reference) * scale).abs()
        assert grey_levels.max() <= 1 + 1e-3, (preset, image.shape, float(grey_levels.max()))
        assert (grey_levels > 1e-3).float().mean() <= 0.02


def test_device_stage_stacks_mixed_sizes_and_conditions(real_images):
    pre = PREPROCESSING_PRESETS["torchvision"]
    images = [real_images[0], real_images[1][:200, :300].copy(), _synthetic()["checker-40x33"]]
    entries = [None, ("blur", 3.0, 0), ("contrast", 0.5, 0)]
    batch = dp.device_stage(images, entries, pre, "cpu")
    assert batch.shape == (3, 3, 224, 224) and batch.dtype == torch.float32
    expected = pre(distort(images[1], "blur", 3.0))
    assert ((batch[1] - expected) * torch.tensor(pre.std).view(3, 1, 1)).abs().max() <= 2 + 1e-3
    with pytest.raises(ValueError, match="computes blur, noise, contrast only"):
        dp.device_stage(images[:1], [("jpeg", 20, 0)], pre, "cpu")
    with pytest.raises(ValueError, match="uint8"):
        dp.device_stage([images[0].astype(np.float32)], [None], pre, "cpu")


# ------------------------------------------------------------------------------------------ fallback


@dataclass(frozen=True)
class _SubclassedPreprocessing(Preprocessing):
    pass


def _stub(preprocessing, name="stub"):
    return types.SimpleNamespace(name=name, preprocessing=preprocessing)


def test_unsupported_preprocessing_is_named():
    assert dp.unsupported_reason(PREPROCESSING_PRESETS["efficientnet_lite"]) is None
    assert "lanczos" in dp.unsupported_reason(Preprocessing(256, 224, "lanczos"))
    assert "nearest" in dp.unsupported_reason(Preprocessing(256, 224, "nearest"))
    assert "custom preprocessing" in dp.unsupported_reason(lambda image: image)
    assert "_SubclassedPreprocessing" in dp.unsupported_reason(_SubclassedPreprocessing(256, 224))


def test_resolve_pipeline_rules(capsys):
    good, bad = _stub(Preprocessing(256, 224)), _stub(Preprocessing(256, 224, "lanczos"), "lanczos-net")
    assert dp.resolve_pipeline("auto", "cpu", good) == "reference"
    assert dp.resolve_pipeline(None, "cuda", good) == "device"  # only inspects the device's type
    assert dp.resolve_pipeline("device", "cpu", good) == "device"
    assert dp.resolve_pipeline("Reference", "cuda", good) == "reference"
    assert dp.resolve_pipeline("auto", "cuda", bad) == "reference"
    assert dp.resolve_pipeline("auto", "cuda:0", bad) == "reference"
    note = capsys.readouterr().err.strip().splitlines()
    assert len(note) == 1 and "lanczos-net uses the reference (CPU) pipeline" in note[0] and "lanczos" in note[0]
    with pytest.raises(ValueError, match=r"model lanczos-net cannot use the device pipeline: interpolation 'lanczos'"):
        dp.resolve_pipeline("device", "cpu", bad)
    with pytest.raises(ValueError, match="pipeline must be one of auto, device, reference"):
        dp.resolve_pipeline("gpu", "cpu", good)


def test_pipeline_setting_resolves_from_every_layer():
    assert resolve("pipeline").value == "auto"
    assert resolve("pipeline", environ={"ROBUSTNESS_PIPELINE": " Device "}).value == "device"
    assert resolve("pipeline", environ={}, ini="reference").value == "reference"
    with pytest.raises(SettingError, match=r"\$ROBUSTNESS_PIPELINE='gpu': must be one of auto, device, reference"):
        resolve("pipeline", environ={"ROBUSTNESS_PIPELINE": "gpu"})


def test_evaluate_device_pipeline_refuses_unsupported_preprocessing(tmp_path):
    model = tiny_model()
    model.preprocessing = Preprocessing(36, 32, "lanczos")
    with pytest.raises(ValueError, match="cannot use the device pipeline"):
        evaluate(model, make_dataset(tmp_path / "data", 2), ["contrast"], pipeline="device", device="cpu")


# ----------------------------------------------------------------------------------------------- cache


def test_condition_keys_separate_the_pipelines():
    key = PredictionCache.condition_key
    assert key("blur", 3, 0) == key("blur", 3, 0, pipeline="reference") == key("blur", 3, 0, pipeline=None)
    assert key("blur", 3, 0, pipeline="device") != key("blur", 3, 0)
    assert key("clean", 0, 0, pipeline="device") != key("clean", 0, 0)
    with pytest.raises(ValueError, match="pipeline"):
        key("clean", 0, 0, pipeline="gpu")


def test_cache_never_serves_one_pipeline_to_the_other(tmp_path):
    """A device run's entries are not served to a reference run on the same cache (it computes every
    pair), nor the reverse; a repeated run of either is served from the cache."""
    dataset = make_dataset(tmp_path / "data", 4)
    conditions = {"blur": [2], "noise": [30]}
    pairs = len(dataset) * 3
    cache = PredictionCache(tmp_path / "cache")
    model = tiny_model()

    def seen(pipeline: str) -> int:
        before = model.net.seen
        evaluate(model, dataset, conditions, cache=cache, pipeline=pipeline, device="cpu", num_workers=0)
        return model.net.seen - before  # probe runs and the verification sample included

    assert seen("device") >= pairs
    assert seen("reference") >= pairs  # nothing served from the device run's entries
    assert seen("reference") < pairs  # its own entries are
    assert seen("device") < pairs


# ---------------------------------------------------------------------------------------------- engine


def test_engine_device_pipeline_matches_reference_on_tiny_model(tmp_path):
    """Same predictions for any batch size and worker count; clean and contrast inputs are within one
    grey level of the reference's, so a small model's top-1 agrees on most images."""
    dataset = make_dataset(tmp_path / "data", 6, size=(60, 44))
    model = tiny_model()
    conditions = {"blur": [2], "noise": [30], "jpeg": [10], "contrast": [0.5]}
    device = evaluate(model, dataset, conditions, pipeline="device", device="cpu", num_workers=0, batch_size=4)
    again = evaluate(model, dataset, conditions, pipeline="device", device="cpu", num_workers=2, batch_size=1)
    reference = evaluate(model, dataset, conditions, pipeline="reference", device="cpu", num_workers=0)
    for a, b, r in zip(device, again, reference):
        assert np.array_equal(a.predictions, b.predictions), a.distortion
        assert a.n == r.n == len(dataset)
    agree = np.mean([(a.predictions[:, 0] == r.predictions[:, 0]).mean() for a, r in zip(device, reference)])
    assert agree >= 0.75, agree


def test_engine_device_pipeline_agrees_with_reference_on_real_images(shared_image_paths):
    """EfficientNet-Lite0 on 8 shared images: clean, blur and contrast inputs are within 1 grey level
    of the reference's, so top-1 agrees on at least 7 of 8 images in each; noise is another draw of the
    same distribution (not the same pixels), so it counts only in the overall agreement (>= 85 %)."""
    from robustness import load_dataset, load_model

    dataset = load_dataset(shared_image_paths[0].parents[1], limit=8)
    model = load_model("efficientnet_lite0")
    conditions = {"blur": [3], "noise": [20], "contrast": [0.5]}
    device = evaluate(model, dataset, conditions, pipeline="device", device="cpu", num_workers=0, batch_size=8)
    reference = evaluate(model, dataset, conditions, pipeline="reference", device="cpu", num_workers=0, batch_size=8)
    agreement = {
        a.distortion: float((a.predictions[:, 0] == r.predictions[:, 0]).mean()) for a, r in zip(device, reference)
    }
    assert all(agreement[name] >= 7 / 8 for name in ("clean", "blur", "contrast")), agreement
    assert np.mean(list(agreement.values())) >= 0.85, agreement


def test_one_call_with_a_device_and_a_reference_model_equals_separate_calls(tmp_path, monkeypatch):
    """Several models in one call, one on each pipeline (as ``auto`` on CUDA gives when one model's
    preprocessing cannot be reproduced): each gets what its own call gives, with 2 workers."""
    import robustness.evaluation as engine

    dataset = make_dataset(tmp_path / "data", 4, size=(52, 40))
    conditions = {"blur": [2], "noise": [30], "jpeg": [10], "contrast": [0.5]}
    on_device, on_reference = tiny_model(0, "on-device"), tiny_model(1, "on-reference")
    alone = {
        "on-device": evaluate(on_device, dataset, conditions, pipeline="device", device="cpu", num_workers=0),
        "on-reference": evaluate(on_reference, dataset, conditions, pipeline="reference", device="cpu", num_workers=0),
    }
    chosen = {"on-device": "device", "on-reference": "reference"}
    monkeypatch.setattr(engine, "resolve_pipeline", lambda pipeline, device, model: chosen[model.name])
    together = evaluate([on_device, on_reference], dataset, conditions, device="cpu", num_workers=2, batch_size=3)
    for name, results in together.items():
        for a, b in zip(results, alone[name]):
            assert np.array_equal(a.predictions, b.predictions), (name, a.distortion)


def test_a_device_pipeline_run_says_so_in_its_provenance(tmp_path):
    """Device-pipeline numbers differ from the paper's reference path (noise draws, resize within 1
    grey level), but its run folder looked exactly like a reference run's: provenance.json (and the
    provenance inside predictions.npz) now says ``"pipeline": "device"``; a reference run's provenance
    is unchanged (no new field), so existing run folders still compare equal."""
    import json

    from robustness import cli
    from robustness.models import register_model, unregister_model

    dataset = make_dataset(tmp_path / "data", 3)
    register_model("tiny-device-prov", Preprocessing(36, 32, "bilinear"))(lambda: tiny_model().net)
    try:
        for pipeline in ("device", "reference"):
            out = tmp_path / pipeline
            status = cli.main(
                ["run", "--model", "tiny-device-prov", "--data", str(dataset.root), "--distortion", "noise=30",
                 "--pipeline", pipeline, "--device", "cpu", "--workers", "0", "--no-cache", "--no-report",
                 "--no-progress", "--output", str(out)]
            )  # fmt: skip
            assert status == 0
            provenance = json.loads((out / "provenance.json").read_text())
            if pipeline == "device":
                assert provenance["pipeline"] == "device"
            else:
                assert "pipeline" not in provenance
    finally:
        unregister_model("tiny-device-prov")
