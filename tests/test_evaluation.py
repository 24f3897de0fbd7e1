"""The evaluation engine: same numbers for any batch size / worker count, unreadable images skipped.

Uses a tiny random-weight classifier (``tiny_model``) and small synthetic images so the whole file
runs in seconds; ``test_cache.py`` imports the helpers from here.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from robustness import Classifier, Preprocessing, evaluate
from robustness.datasets import imagenet_wnids, load_dataset
from robustness.evaluation import Condition, SkippedImagesWarning, default_num_workers

SHARED_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "imagenet-val-1024"
CONDITIONS = {"blur": [2], "noise": [30], "jpeg": [10], "contrast": [0.5]}


class _TinyNet(torch.nn.Module):
    """Conv -> pool -> linear to 1000 logits; counts the images it has seen (``seen``)."""

    def __init__(self, seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.conv = torch.nn.Conv2d(3, 8, 3, stride=2)
        self.fc = torch.nn.Linear(8 * 4, 1000)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=generator))
        self.seen = 0
        self.fail_after: int | None = None  # raise KeyboardInterrupt once this many images were seen

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fail_after is not None and self.seen >= self.fail_after:
            raise KeyboardInterrupt("simulated interruption")
        self.seen += x.shape[0]
        x = torch.nn.functional.adaptive_avg_pool2d(torch.relu(self.conv(x)), 2)
        return self.fc(x.flatten(1))


def tiny_model(seed: int = 0, name: str = "tiny") -> Classifier:
    """A :class:`Classifier` around :class:`_TinyNet`: input 32x32 from a 36-pixel resize."""
    return Classifier(_TinyNet(seed), Preprocessing(36, 32, "bilinear"), name)


def make_dataset(root: Path, count: int = 5, *, size=(48, 40), seed: int = 0, fmt: str = "PNG"):
    """``count`` random RGB images (``size`` = (width, height)) in ``root/<wnid>/img<k>.png``."""
    rng = np.random.default_rng(seed)
    wnids = imagenet_wnids()
    for k in range(count):
        folder = root / wnids[k % 7]
        folder.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"img{k:03d}.{fmt.lower()}", format=fmt)
    return load_dataset(root)


def truncated_jpeg(path: Path, seed: int = 1) -> Path:
    """Write a JPEG cut off half-way through its data (a file Pillow refuses to decode)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    return path


def table(results) -> list[tuple]:
    return [(r.distortion, r.level, r.top1, r.top5, r.n, r.image_ids, r.predictions.tolist()) for r in results]


@pytest.fixture
def dataset(tmp_path):
    return make_dataset(tmp_path / "data", 5)


def test_same_results_for_any_batch_size_and_worker_count(dataset):
    model = tiny_model()
    reference = table(evaluate(model, dataset, CONDITIONS, batch_size=32, num_workers=0))
    assert table(evaluate(model, dataset, CONDITIONS, batch_size=1, num_workers=0)) == reference
    assert table(evaluate(model, dataset, CONDITIONS, batch_size=3, num_workers=2, device="cpu")) == reference
    assert [r[0] for r in reference] == ["clean", "blur", "noise", "jpeg", "contrast"]
    assert all(r[4] == 5 for r in reference)


def test_explicit_conditions_and_duplicates(dataset):
    model = tiny_model()
    conditions = [Condition("noise", 30), Condition("clean", 0), Condition("noise", 30)]
    results = evaluate(model, dataset, conditions, num_workers=0)
    assert [(r.distortion, r.level) for r in results] == [("noise", 30), ("clean", 0), ("noise", 30)]
    assert results[0].predictions.tolist() == results[2].predictions.tolist()
    assert model.net.seen == 2 * len(dataset)


def test_truncated_image_is_skipped_and_reported(tmp_path):
    root = tmp_path / "data"
    good = make_dataset(root, 4)
    bad = truncated_jpeg(root / imagenet_wnids()[3] / "img999.jpg")
    dataset = load_dataset(root)
    assert len(dataset) == 5
    model = tiny_model()
    with pytest.warns(SkippedImagesWarning, match="img999.jpg"):
        results = evaluate(model, dataset, CONDITIONS, batch_size=2, num_workers=2, device="cpu")
    reference = evaluate(model, good, CONDITIONS, num_workers=0)
    for r, ref in zip(results, reference):
        assert r.n == 4 and bad.name not in " ".join(r.image_ids)
        assert list(r.skipped) == [f"{imagenet_wnids()[3]}/img999.jpg"]
        assert str(bad) in r.skipped[f"{imagenet_wnids()[3]}/img999.jpg"]
        assert (r.top1, r.top5, r.image_ids, r.predictions.tolist()) == (
            ref.top1,
            ref.top5,
            ref.image_ids,
            ref.predictions.tolist(),
        )


def test_every_image_unreadable_is_an_error(tmp_path):
    root = tmp_path / "data"
    truncated_jpeg(root / imagenet_wnids()[0] / "a.jpg")
    (root / imagenet_wnids()[0] / "b.png").write_bytes(b"not an image at all")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="no image"):
            evaluate(tiny_model(), load_dataset(root), ["contrast"], num_workers=0)


def test_bad_logits_shape_is_an_error(dataset):
    model = Classifier(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(10)), Preprocessing(36, 32), "bad")
    with pytest.raises(ValueError, match=r"expected \(N, 1000\)"):
        evaluate(model, dataset, [Condition("clean", 0)], num_workers=0)


def test_default_workers():
    assert 1 <= default_num_workers("cpu") <= 2
    assert default_num_workers("cuda") >= default_num_workers("cpu")


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="shared ImageNet images not present")
def test_real_images_batch_and_workers_invariant():
    dataset = load_dataset(SHARED_DATA, limit=3)
    model = tiny_model()
    conditions = {"noise": [50], "jpeg": [4]}
    a = table(evaluate(model, dataset, conditions, batch_size=4, num_workers=0))
    b = table(evaluate(model, dataset, conditions, batch_size=1, num_workers=2, device="cpu"))
    assert a == b


def test_distortion_argument_forms_expand_to_conditions():
    from robustness.evaluation import Condition, conditions_for

    assert conditions_for("blur", clean=False) == [Condition("blur", s) for s in range(1, 10)]
    assert conditions_for([], clean=True) == [Condition("clean", 0)]
    assert conditions_for({"jpeg": [10]}, clean=False) == [Condition("jpeg", 10)]


def test_jpeg2000_tolerance_misses_are_counted_in_results_cache_and_json(tmp_path):
    """A mid-grey image has no lossy JPEG 2000 encode (robustness.distortions.distort_with_info says
    so): each JPEG 2000 level counts it as a tolerance miss; random-noise images land within 0.5 dB.
    The count survives the prediction cache and is written to results.json."""
    from robustness.cache import PredictionCache
    from robustness.report import format_table
    from robustness.runs import read_results_json, write_results_json

    make_dataset(tmp_path / "data", 3)
    grey = tmp_path / "data" / imagenet_wnids()[0] / "grey.png"
    Image.fromarray(np.full((40, 48, 3), 128, dtype=np.uint8)).save(grey)
    dataset = load_dataset(tmp_path / "data")
    net = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten(), torch.nn.Linear(12, 1000))
    model = Classifier(net, Preprocessing(36, 32, "bilinear"), "tiny")
    conditions = {"jpeg2000": [30, 40], "contrast": [0.5]}
    cache = PredictionCache(tmp_path / "cache", flush_interval=0)
    for _ in range(2):  # computed, then served from the cache
        results = evaluate(model, dataset, conditions, num_workers=0, cache=cache)
        assert [(r.distortion, r.tolerance_misses) for r in results] == [
            ("clean", 0),
            ("jpeg2000", 1),
            ("jpeg2000", 1),
            ("contrast", 0),
        ]
    assert [r.tolerance_misses for r in evaluate(model, dataset, conditions, num_workers=0)] == [0, 1, 1, 0]
    write_results_json(results, tmp_path / "results.json")
    assert [r["tolerance_misses"] for r in read_results_json(tmp_path / "results.json")] == [0, 1, 1, 0]
    assert "1 of 4 images missed" in format_table(results)
