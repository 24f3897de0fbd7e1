"""Label spaces (issue 11): class lists, class-name folders, manifests, output width, logit
restriction, balanced accuracy, and the class list in the cache key and the baseline.

Tiny models on tiny generated images (no real network) except where the shared images are used to
show that the ImageNet path keeps its labels.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from robustness import Classifier, Preprocessing, evaluate, load_model
from robustness.cache import PredictionCache
from robustness.datasets import DatasetError, imagenet_wnids, load_dataset
from robustness.evaluation import CLEAN, Condition, ConditionResult
from robustness.gate import load_baseline, save_baseline
from robustness.labels import (
    ClassList,
    ClassListError,
    applicable_metrics,
    balanced_accuracy,
    check_output_width,
    imagenet_class_list,
    read_class_file,
    restrict_to_classes,
)
from robustness.report import format_table
from robustness.runs import read_results_json, write_results_json
from robustness.thresholds import ThresholdsError, check_metrics, load_thresholds

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "imagenet-val-1024"
PRE = Preprocessing(8, 8, "nearest", mean=(0, 0, 0), std=(1, 1, 1))


class RedLevel(torch.nn.Module):
    """``classes`` logits; the largest is at the image's mean red level divided by 40 (so red 0-39 is
    class 0, 40-79 class 1, ...): accuracy controlled by the generated images' colour."""

    def __init__(self, classes: int):
        super().__init__()
        self.register_buffer("centres", torch.arange(classes, dtype=torch.float32))

    def forward(self, x):
        level = (x[:, 0].mean(dim=(1, 2)) / 40).floor()
        return -(self.centres[None, :] - level[:, None]).abs()


def make_folder(root: Path, counts: dict[str, int], wrong: dict[str, int] | None = None) -> Path:
    """``root/<name>/img_k.png``: solid images whose red level says class ``position of name in
    sorted(counts)``; the first ``wrong[name]`` images of a class are coloured as the next class."""
    names = sorted(counts)
    for position, name in enumerate(names):
        (root / name).mkdir(parents=True, exist_ok=True)
        for k in range(counts[name]):
            shown = (position + 1) % len(names) if k < (wrong or {}).get(name, 0) else position
            array = np.zeros((12, 12, 3), np.uint8)
            array[..., 0] = 40 * shown + 20
            Image.fromarray(array).save(root / name / f"img_{name}_{k}.png")
    return root


# ------------------------------------------------------------------------------------ class lists


def test_class_list_digest_is_ids_in_order_and_validates():
    a = ClassList(("bird", "cat", "dog"), ("bird", "cat", "dog"), "x")
    assert a.digest == ClassList(("bird", "cat", "dog"), ("Bird", "Cat", "Dog"), "y").digest  # ids only
    assert a.digest != ClassList(("cat", "bird", "dog"), ("cat", "bird", "dog")).digest  # order counts
    with pytest.raises(ClassListError, match="names class 'cat' twice"):
        ClassList(("cat", "cat"), ("a", "b"))
    with pytest.raises(ClassListError, match="is empty"):
        ClassList((), ())
    imagenet = imagenet_class_list()
    assert imagenet.is_imagenet and len(imagenet) == 1000 and imagenet.names[0] == "tench"
    assert not a.is_imagenet


def test_read_class_file_order_comments_and_errors(tmp_path):
    path = tmp_path / "classes.txt"
    path.write_text("# our classes, model output order\ndog\n\n cat \nn01440764\n")
    classes = read_class_file(path)
    assert classes.ids == ("dog", "cat", "n01440764")
    assert classes.names == ("dog", "cat", "tench")  # a wnid gets its ImageNet name
    path.write_text("dog\ncat\ndog\n")
    with pytest.raises(ClassListError, match=r"classes.txt:3: class 'dog' already listed on line 1"):
        read_class_file(path)
    path.write_text("# nothing\n")
    with pytest.raises(ClassListError, match="names no class"):
        read_class_file(path)


def test_applicable_metrics():
    # top-k (k >= 2) needs more than k classes (issue 11): top2 with 3 classes, never top3
    assert applicable_metrics(2) == ("top1", "balanced_accuracy")
    assert applicable_metrics(3) == ("top1", "top2", "balanced_accuracy")
    assert applicable_metrics(5) == ("top1", "top2", "top3", "top4", "balanced_accuracy")
    assert applicable_metrics(6) == ("top1", "top2", "top3", "top4", "top5", "balanced_accuracy")


# ------------------------------------------------------------------------------------ datasets


def test_class_name_folders_sorted_like_imagefolder(tmp_path):
    make_folder(tmp_path, {"dog": 2, "bird": 1, "cat": 1})
    dataset = load_dataset(tmp_path)
    assert dataset.classes.ids == ("bird", "cat", "dog")
    assert "sorted folder names" in dataset.classes.source
    assert {s.image_id: s.label for s in dataset} == {
        "bird/img_bird_0.png": 0,
        "cat/img_cat_0.png": 1,
        "dog/img_dog_0.png": 2,
        "dog/img_dog_1.png": 2,
    }
    # torchvision's ImageFolder convention, checked against torchvision itself
    from torchvision.datasets import ImageFolder

    assert tuple(ImageFolder(str(tmp_path)).classes) == dataset.classes.ids


def test_class_file_and_argument_give_the_order(tmp_path):
    make_folder(tmp_path, {"dog": 1, "bird": 1, "cat": 1})
    (tmp_path / "classes.txt").write_text("dog\nbird\ncat\n")
    dataset = load_dataset(tmp_path)
    assert dataset.classes.ids == ("dog", "bird", "cat")
    assert {s.image_id.split("/")[0]: s.label for s in dataset} == {"dog": 0, "bird": 1, "cat": 2}
    dataset = load_dataset(tmp_path, classes=["cat", "dog", "bird"])  # the argument wins over the file
    assert {s.image_id.split("/")[0]: s.label for s in dataset} == {"cat": 0, "dog": 1, "bird": 2}
    with pytest.raises(DatasetError, match=r"folder 'cat' is not a class of the class list \(2 classes: dog, bird"):
        load_dataset(tmp_path, classes=["dog", "bird"])


def test_folders_mixing_wnids_and_names_are_refused(tmp_path):
    """A mistyped wnid among wnid folders must not silently become a class of its own."""
    make_folder(tmp_path, {imagenet_wnids()[1]: 1, "n0144076": 1})
    with pytest.raises(DatasetError, match="folder 'n0144076' is not an ImageNet wnid but 'n01443537' are"):
        load_dataset(tmp_path)


def test_manifest_with_names_and_indices(tmp_path):
    make_folder(tmp_path, {"bird": 1, "cat": 1, "dog": 1})
    (tmp_path / "m.csv").write_text(
        "path,label\nbird/img_bird_0.png,bird\ncat/img_cat_0.png,cat\ndog/img_dog_0.png,dog\n"
    )
    dataset = load_dataset(tmp_path / "m.csv")
    assert dataset.classes.ids == ("bird", "cat", "dog") and "sorted label names" in dataset.classes.source
    (tmp_path / "m.csv").write_text("path,label\nbird/img_bird_0.png,2\ncat/img_cat_0.png,cat\ndog/img_dog_0.png,0\n")
    dataset = load_dataset(tmp_path / "m.csv", classes=["dog", "cat", "bird"])
    assert sorted((s.image_id, s.label) for s in dataset) == [
        ("bird/img_bird_0.png", 2),
        ("cat/img_cat_0.png", 1),
        ("dog/img_dog_0.png", 0),
    ]
    (tmp_path / "m.csv").write_text("path,label\nbird/img_bird_0.png,3\n")
    with pytest.raises(DatasetError, match=r"m.csv:2: label '3' is neither a class name nor an index 0-2"):
        load_dataset(tmp_path / "m.csv", classes=["dog", "cat", "bird"])


def test_imagenet_folder_keeps_global_labels_and_subset_list_renumbers():
    if not DATA.is_dir():
        pytest.skip("shared images not found")
    dataset = load_dataset(DATA, limit=16)
    assert dataset.classes.is_imagenet
    table = {w: i for i, w in enumerate(imagenet_wnids())}
    assert [s.label for s in dataset] == [table[Path(s.image_id).parent.name] for s in dataset]
    present = dataset.present_classes()
    assert len(present.classes) == len({s.label for s in dataset}) < 1000
    for before, after in zip(dataset, present):
        assert present.classes.ids[after.label] == imagenet_wnids()[before.label]


# ------------------------------------------------------------------------------------ models


def test_width_mismatch_names_both_numbers_and_sources(tmp_path):
    make_folder(tmp_path, {"bird": 1, "cat": 1, "dog": 1})
    dataset = load_dataset(tmp_path)
    model = load_model(RedLevel(1000), preprocessing=PRE, model_name="wide")
    with pytest.raises(
        ClassListError, match=r"model wide outputs 1000 classes .* dataset has 3 classes: bird, cat, dog"
    ):
        check_output_width(model, dataset.classes)
    with pytest.raises(ClassListError, match="outputs 1000 classes"):
        evaluate(model, dataset, {}, num_workers=0)
    check_output_width(load_model(RedLevel(3), preprocessing=PRE), dataset.classes)  # no error


def test_restriction_selects_the_subset_logits_explicitly():
    wnids = imagenet_wnids()
    subset = ClassList((wnids[7], wnids[2], wnids[5]), ("a", "b", "c"), "test subset")
    full = load_model(RedLevel(1000), preprocessing=PRE, model_name="full")
    restricted = restrict_to_classes(full, subset)
    x = torch.rand(4, 3, 8, 8) * 255
    with torch.inference_mode():
        assert torch.equal(restricted(x), full(x)[:, [7, 2, 5]])
    assert restricted.name == "full" and restricted.weights_digest != full.weights_digest
    with pytest.raises(ClassListError, match="'bird'|bird is not among its 1000 classes"):
        restrict_to_classes(full, ClassList(("bird",), ("bird",), "x"))


# ------------------------------------------------------------------------------------ metrics


@pytest.mark.parametrize("seed", range(5))
def test_balanced_accuracy_matches_sklearn(seed):
    from sklearn.metrics import balanced_accuracy_score

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, size=37)
    predicted = np.where(rng.random(37) < 0.6, labels, rng.integers(0, 6, size=37))  # also classes not in labels
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # sklearn: "y_pred contains classes not in y_true"
        expected = balanced_accuracy_score(labels, predicted)
    assert balanced_accuracy(labels, predicted) == pytest.approx(expected, abs=1e-12)


def test_balanced_accuracy_differs_from_top1_on_unbalanced_data(tmp_path):
    """bird: 6 images, 0 wrong; cat: 2 images, 1 wrong -> top-1 7/8, balanced (1 + 1/2) / 2."""
    make_folder(tmp_path / "data", {"bird": 6, "cat": 2}, wrong={"cat": 1})
    dataset = load_dataset(tmp_path / "data")
    model = load_model(RedLevel(2), preprocessing=PRE, model_name="red2")
    (clean,) = evaluate(model, dataset, [Condition(CLEAN, 0)], num_workers=0)
    assert clean.top1 == pytest.approx(7 / 8)
    assert clean.balanced_accuracy == pytest.approx(0.75)
    assert clean.predictions.shape == (8, 5) and (clean.predictions[:, 2:] == -1).all()  # top-2, padded
    write_results_json([clean], tmp_path / "results.json")
    (record,) = read_results_json(tmp_path / "results.json")
    assert record["top5"] is None and record["num_classes"] == 2 and record["balanced_accuracy"] == 0.75
    table = format_table([clean])
    assert "bal. acc %" in table and "75.0" in table and "classes: 2 classes: bird, cat" in table


def test_top5_bar_refused_for_five_classes_or_fewer(tmp_path):
    path = tmp_path / "thresholds.yaml"
    path.write_text("models:\n  m:\n    source: fixture\n    clean: {top1: 0.5, top5: 0.9}\n")
    thresholds = load_thresholds(path)
    check_metrics(thresholds, 6)  # more than 5 classes: fine
    with pytest.raises(
        ThresholdsError, match=r"thresholds.yaml:4: models.m.clean.top5: top5 needs more than 5 classes"
    ):
        check_metrics(thresholds, 5, "folder names")


def test_calibrate_refuses_an_existing_top5_bar_on_three_classes(tmp_path, monkeypatch, capsys):
    """calibrate on a 3-class folder whose entry already has a top5 bar: the gate's error (file, line,
    key, class count), not a KeyError traceback from recalculating a bar that was never measured."""
    from robustness.cli import main
    from robustness.models import register_model, unregister_model

    make_folder(tmp_path / "val", {"bird": 2, "cat": 2, "dog": 2})
    path = tmp_path / "thresholds.yaml"
    path.write_text("models:\n  _red3:\n    clean: {top1: 0.5, top5: 0.9}\n")
    monkeypatch.chdir(tmp_path)
    register_model("_red3", PRE)(lambda: RedLevel(3))
    try:
        code = main(
            ["calibrate", "--model", "_red3", "--data", "val", "--distortion", "contrast=0.5"]
            + ["--workers", "0", "--no-cache", "--no-progress", "--dry-run"]
        )
    finally:
        unregister_model("_red3")
    assert code == 2
    assert "thresholds.yaml:3: models._red3.clean.top5: top5 needs more than 5 classes" in capsys.readouterr().err


def test_balanced_accuracy_bar_passes_and_fails(tmp_path):
    from robustness.gate import judge

    path = tmp_path / "thresholds.yaml"
    path.write_text("models:\n  m:\n    source: fixture\n    clean: {balanced_accuracy: 0.8}\n")
    (threshold,) = load_thresholds(path).entries
    classes = ClassList(("a", "b"), ("a", "b"))
    result = ConditionResult("m", CLEAN, 0, 0.875, 1.0, 8, balanced_accuracy=0.75, classes=classes)
    verdict = judge(threshold, result)
    assert not verdict.passed
    assert "FAIL balanced_accuracy 75.0% < required 80.0%" in verdict.message()
    assert verdict.interval("balanced_accuracy") is None and verdict.interval("top1") is not None
    assert "top5" not in verdict.message()
    result.balanced_accuracy = 0.8
    assert judge(threshold, result).passed


# ------------------------------------------------------------------------------------ keys


def test_cache_key_includes_the_class_list_but_imagenet_keys_stay():
    key = PredictionCache.condition_key
    assert key("jpeg", 10, 0) == key("jpeg", 10, 0, classes=None)
    own = ClassList(("bird", "cat"), ("bird", "cat")).digest
    other = ClassList(("cat", "bird"), ("cat", "bird")).digest
    assert len({key("jpeg", 10, 0), key("jpeg", 10, 0, classes=own), key("jpeg", 10, 0, classes=other)}) == 3


def test_two_label_spaces_never_share_cache_entries(tmp_path):
    """The same model and images under two class orders: the second run computes (its labels index
    another list) instead of reusing the first's entries."""
    make_folder(tmp_path / "data", {"bird": 2, "cat": 2})
    model = load_model(RedLevel(2), preprocessing=PRE, model_name="red2")
    cache = PredictionCache(tmp_path / "cache", flush_interval=0)
    first = load_dataset(tmp_path / "data")
    second = load_dataset(tmp_path / "data", classes=["cat", "bird"])
    (a,) = evaluate(model, first, {}, num_workers=0, cache=cache)
    (b,) = evaluate(model, second, {}, num_workers=0, cache=cache)
    assert a.top1 == 1.0 and b.top1 == 0.0  # the model's order is bird, cat; the second list is reversed
    # <root>/<format>/<model key>/<condition key>/: one clean condition per class list
    conditions = sorted(p.relative_to(cache.root).parts for p in cache.root.glob("*/*/*") if p.is_dir())
    assert len(conditions) == 2 and conditions[0][:2] == conditions[1][:2], conditions


def test_baseline_of_another_class_list_is_not_paired(tmp_path):
    classes = ClassList(("a", "b", "c"), ("a", "b", "c"))
    preds = np.array([[0, 1, 2, -1, -1], [1, 0, 2, -1, -1]])
    result = ConditionResult(
        "m", "blur", 1.0, 1.0, 1.0, 2, ["x", "y"], np.array([0, 1]), preds, classes=classes, balanced_accuracy=1.0
    )
    save_baseline([result], tmp_path)
    baseline = load_baseline(tmp_path, "m", "blur")
    assert baseline.classes == classes.digest
    assert not isinstance(baseline.pair(result), str)
    result.classes = ClassList(("c", "b", "a"), ("c", "b", "a"))
    assert "another class list" in baseline.pair(result)


def test_provenance_records_the_class_list(tmp_path):
    from robustness.runs import run_provenance

    make_folder(tmp_path / "data", {"bird": 1, "cat": 1})
    dataset = load_dataset(tmp_path / "data")
    model = load_model(RedLevel(2), preprocessing=PRE, model_name="red2")
    record = json.loads(json.dumps(run_provenance(model, dataset, seed=0)))["classes"]
    assert record["ids"] == ["bird", "cat"] and record["digest"] == dataset.classes.digest
    assert "ids" not in imagenet_class_list().to_record()  # the packaged list is named by digest only


def test_classifier_subclass_keeps_its_width():
    classifier = Classifier(RedLevel(4), PRE, "four")
    from robustness.labels import output_width

    assert output_width(classifier) == 4  # probed: a Classifier built directly has no recorded width


def test_evaluate_restricted_to_an_imagenet_subset(tmp_path):
    """ImageNet-R / ImageNet-A convention: wnid folders of 3 classes, an ImageNet-1k model restricted
    to them only when asked; then 3 classes: top-1 and balanced accuracy, no top-5."""
    wnids = imagenet_wnids()
    make_folder(tmp_path / "data", {wnids[0]: 2, wnids[1]: 2, wnids[2]: 1}, wrong={wnids[0]: 1})
    dataset = load_dataset(tmp_path / "data")
    assert dataset.classes.is_imagenet  # wnid folders: the 1000-class list, global labels
    model = load_model(RedLevel(1000), preprocessing=PRE, model_name="imagenet1k")
    (full,) = evaluate(model, dataset, {}, num_workers=0)
    (sub,) = evaluate(model, dataset, {}, num_workers=0, restrict_to_dataset_classes=True)
    assert full.num_classes == 1000 and sub.num_classes == 3
    assert sub.classes.ids == wnids[:3] and sub.classes.names[0] == "tench"
    assert full.top1 == sub.top1 == pytest.approx(4 / 5)
    assert sub.balanced_accuracy == pytest.approx((1 / 2 + 1 + 1) / 3)
    assert sub.to_record()["top5"] is None and full.to_record()["top5"] == 1.0


# ------------------------------------------------------------------- a sample that covers the classes


def test_coverage_problem_names_a_one_class_sample(tmp_path):
    from robustness.datasets import coverage_problem

    full = load_dataset(make_folder(tmp_path / "blocked", {"bird": 3, "cat": 3, "dog": 3}))
    message = coverage_problem(full, full.limit(3))  # files img_bird_*, img_cat_*, ...: birds first
    assert message and "hold only 1 of the 3 classes" in message and "cat, dog" in message
    assert coverage_problem(full, full.limit(9)) is None
    assert "hold only 2 of the 3" in coverage_problem(full, full.limit(4))


def test_coverage_problem_accepts_interleaved_and_imagenet_samples(tmp_path):
    from robustness.datasets import coverage_problem

    root = tmp_path / "interleaved"
    for position, name in enumerate(["bird", "cat", "dog"]):
        (root / name).mkdir(parents=True)
        for k in range(3):
            Image.fromarray(np.full((8, 8, 3), 40 * position, np.uint8)).save(root / name / f"{k}_{name}.png")
    full = load_dataset(root)
    assert coverage_problem(full, full.limit(3)) is None
    assert coverage_problem(full, full.limit(2)) is None  # 2 images, 2 classes: as many as it can hold
    imagenet = load_dataset(make_folder(tmp_path / "wnids", {imagenet_wnids()[0]: 3, imagenet_wnids()[1]: 3}))
    assert imagenet.classes.is_imagenet and coverage_problem(imagenet, imagenet.limit(3)) is None
