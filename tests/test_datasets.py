"""Datasets: folder layout, flat ILSVRC2012 validation folder + devkit, CSV manifests,
deterministic subsets. Images are symlinked from the shared set into temporary folders, never copied
into the repository."""

from __future__ import annotations

import collections
import csv
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from robustness.datasets import (
    DatasetError,
    ImageDataset,
    Sample,
    imagenet_wnids,
    load_dataset,
    read_devkit_labels,
    resolve_devkit_dir,
)

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "imagenet-val-1024"
META = REPO.parent / "shared" / "data" / "imagenet-meta"
pytestmark = pytest.mark.skipif(not (DATA.is_dir() and META.is_dir()), reason="shared data not available")


@pytest.fixture(scope="module")
def shared():
    """The shared 1024-image set and its labels.csv rows."""
    with open(DATA / "labels.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    return load_dataset(DATA), rows


@pytest.fixture(autouse=True)
def _no_devkit_env(monkeypatch):
    monkeypatch.delenv("ROBUSTNESS_DEVKIT", raising=False)


def _flat_folder(tmp_path: Path, rows, count: int = 12) -> Path:
    flat = tmp_path / "val"
    flat.mkdir()
    for row in rows[:count]:
        (flat / row["filename"]).symlink_to(DATA / row["path"])
    return flat


# ------------------------------------------------------------------------------ folder layout


def test_folder_layout_uses_global_class_indices(shared):
    dataset, rows = shared
    assert len(dataset) == 1024 == len(rows)
    by_id = {row["path"]: int(row["class_index"]) for row in rows}
    assert all(sample.label == by_id[sample.image_id] for sample in dataset)
    image, label = dataset.load(0)
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3 and label == dataset[0].label
    assert [s.image_id for s in dataset.limit(3)] == [s.image_id for s in dataset][:3]


# ------------------------------------------------------------------------------ flat ILSVRC2012 val + devkit


def test_devkit_ground_truth_and_csv_agree():
    """The devkit's ground truth (ILSVRC2012_IDs mapped through meta.mat) equals the 50,000-row csv."""
    from_devkit = read_devkit_labels(META)
    assert len(from_devkit) == 50_000 and set(from_devkit.values()) == set(range(1000))
    with open(META / "ILSVRC2012_val_wnid.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {int(r["filename"][15:23]): int(r["class_index"]) for r in rows} == from_devkit
    assert from_devkit[1] == imagenet_wnids().index("n01751748") == 65


def test_flat_validation_folder_labelled_by_devkit(shared, tmp_path):
    dataset, rows = shared
    flat = _flat_folder(tmp_path, rows)
    flat_set = load_dataset(flat, devkit=META)
    want = {row["filename"]: int(row["class_index"]) for row in rows[:12]}
    assert {s.image_id: s.label for s in flat_set} == want
    assert [s.image_id for s in flat_set] == sorted(want)  # official validation order
    assert flat_set.load(0)[0].dtype == np.uint8


@pytest.mark.parametrize("layout", ["ground truth + meta.mat in data/", "val_wnid.csv only", "env var"])
def test_devkit_forms(shared, tmp_path, monkeypatch, layout):
    _, rows = shared
    flat = _flat_folder(tmp_path, rows, 4)
    devkit = tmp_path / "devkit"
    if layout.startswith("ground truth"):
        (devkit / "data").mkdir(parents=True)
        for name in ("ILSVRC2012_validation_ground_truth.txt", "meta.mat"):
            (devkit / "data" / name).symlink_to(META / name)
    elif layout == "val_wnid.csv only":
        devkit.mkdir()
        (devkit / "ILSVRC2012_val_wnid.csv").symlink_to(META / "ILSVRC2012_val_wnid.csv")
    else:
        devkit = META
        monkeypatch.setenv("ROBUSTNESS_DEVKIT", str(META))
    kwargs = {} if layout == "env var" else {"devkit": devkit}
    labels = {s.image_id: s.label for s in load_dataset(flat, **kwargs)}
    assert labels == {row["filename"]: int(row["class_index"]) for row in rows[:4]}


def test_flat_folder_errors_name_the_problem(shared, tmp_path):
    _, rows = shared
    flat = _flat_folder(tmp_path, rows, 2)
    empty = tmp_path / "empty-devkit"
    empty.mkdir()
    with pytest.raises(DatasetError, match=f"devkit folder {empty} holds neither"):
        load_dataset(flat, devkit=empty)
    (flat / "holiday.jpg").symlink_to(DATA / rows[0]["path"])
    with pytest.raises(DatasetError, match="holiday.jpg: a flat folder must hold ILSVRC2012 validation files"):
        load_dataset(flat, devkit=META)
    assert resolve_devkit_dir(META) == META.resolve()


# ------------------------------------------------------------------------------ CSV manifest


def test_csv_manifest_with_wnid_and_index_labels(shared, tmp_path):
    _, rows = shared
    manifest = tmp_path / "manifest.csv"
    with open(manifest, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label"])
        writer.writerow([rows[0]["path"], rows[0]["wnid"]])  # relative to --data, wnid
        writer.writerow([rows[1]["path"], rows[1]["class_index"]])  # class index
        writer.writerow([str(DATA / rows[2]["path"]), rows[2]["wnid"]])  # absolute path
    dataset = load_dataset(DATA, manifest=manifest)
    assert {s.image_id: s.label for s in dataset} == {r["path"]: int(r["class_index"]) for r in rows[:3]}
    # Relative to the manifest's own folder when no data folder is given; a .csv as `data` is a manifest.
    local = tmp_path / "imgs"
    local.mkdir()
    (local / "a.JPEG").symlink_to(DATA / rows[5]["path"])
    (tmp_path / "local.csv").write_text(f"path,wnid\nimgs/a.JPEG,{rows[5]['wnid']}\n")
    only = load_dataset(tmp_path / "local.csv")
    assert [(s.image_id, s.label) for s in only] == [("imgs/a.JPEG", int(rows[5]["class_index"]))]


@pytest.mark.parametrize(
    "body, message",
    [
        (
            "path,label\nx.JPEG,n99999999\n",
            r"manifest.csv:2: label 'n99999999' is neither an ImageNet wnid nor a class index",
        ),
        ("path,label\nx.JPEG,1000\n", "manifest.csv:2: class_index 1000 is outside 0-999"),
        ("path,label\nx.JPEG,\n", "manifest.csv:2: row has no label"),
        ("file,label\nx.JPEG,3\n", "manifest.csv: needs a 'path' column"),
        ("path,label\nmissing.JPEG,3\n", "manifest.csv: image missing.JPEG not found"),
        ("path,wnid,class_index\nx.JPEG,n01440764,5\n", "class_index 5 disagrees with wnid n01440764"),
    ],
)
def test_manifest_errors_name_file_line_and_value(tmp_path, body, message):
    (tmp_path / "x.JPEG").symlink_to(next(DATA.glob("*/*.JPEG")))
    (tmp_path / "manifest.csv").write_text(body)
    with pytest.raises(DatasetError, match=message):
        load_dataset(manifest=tmp_path / "manifest.csv")


# ------------------------------------------------------------------------------ subsets


def test_per_class_subset_is_deterministic_and_seeded(shared):
    dataset, _ = shared
    one = dataset.subset(per_class=1, seed=0)
    counts = collections.Counter(s.label for s in one)
    assert len(counts) == len({s.label for s in dataset}) == len(one)  # 424 classes, one image each
    assert [s.image_id for s in one] == [s.image_id for s in dataset.subset(per_class=1, seed=0)]
    assert [s.image_id for s in one] != [s.image_id for s in dataset.subset(per_class=1, seed=1)]
    # Independent of the input order, and returned in dataset order.
    shuffled = ImageDataset(list(reversed(dataset.samples)), dataset.root)
    assert [s.image_id for s in shuffled.subset(per_class=1)] == [s.image_id for s in one]
    assert [s.image_id for s in load_dataset(DATA, per_class=1)] == [s.image_id for s in one]


def test_total_subset_spreads_over_classes(shared):
    dataset, _ = shared
    subset = load_dataset(DATA, total=500, subset_seed=3)
    counts = collections.Counter(s.label for s in subset)
    assert len(subset) == 500 and max(counts.values()) - min(counts.values()) <= 1 and len(counts) == 424
    assert set(s.image_id for s in subset) <= set(s.image_id for s in dataset)
    with pytest.raises(ValueError, match="subset total 2000 exceeds the 1024 images"):
        dataset.subset(total=2000)
    with pytest.raises(ValueError, match="per_class must be an integer >= 1, got 0"):
        dataset.subset(per_class=0)


@settings(max_examples=40, deadline=None)
@given(labels=st.lists(st.integers(0, 6), min_size=1, max_size=60), seed=st.integers(0, 3), data=st.data())
def test_total_subset_balance_property(labels, seed, data):
    """Classes that keep fewer images than others only do so because they ran out of images."""
    samples = [Sample(f"/x/{i}.JPEG", label, f"{i:03d}.JPEG") for i, label in enumerate(labels)]
    dataset = ImageDataset(samples, "/x")
    total = data.draw(st.integers(1, len(samples)))
    subset = dataset.subset(total=total, seed=seed)
    assert len(subset) == total and len({s.image_id for s in subset}) == total
    have = collections.Counter(labels)
    got = collections.Counter(s.label for s in subset)
    top = max(got.values())
    assert all(got[c] >= top - 1 or got[c] == have[c] for c in have)


def test_labels_csv_contradicting_a_wnid_folder_is_an_error(tmp_path):
    import numpy as np
    from PIL import Image

    from robustness.datasets import DatasetError, load_dataset

    folder = tmp_path / "n01443537"  # goldfish, class 1
    folder.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / "a.JPEG")
    (tmp_path / "labels.csv").write_text("path,wnid\n./n01443537/a.JPEG,n01440764\n")
    with pytest.raises(DatasetError, match="contradicts its folder n01443537"):
        load_dataset(tmp_path)
    (tmp_path / "labels.csv").write_text("path,wnid\n./n01443537/a.JPEG,n01443537\nn01443537/gone.JPEG,n01443537\n")
    with pytest.raises(DatasetError, match="not found"):
        load_dataset(tmp_path)
    (tmp_path / "labels.csv").write_text("path,wnid\n./n01443537/a.JPEG,n01443537\n")
    assert [s.label for s in load_dataset(tmp_path)] == [1]


@pytest.mark.parametrize(
    "header, row, classes",
    [("path,wnid", ",n01440764", None), ("path,label", " ,bird", ["bird", "cat"])],
    ids=["imagenet manifest", "class-name manifest"],
)
def test_manifest_row_with_an_empty_path_is_named(tmp_path, header, row, classes):
    from robustness.datasets import DatasetError, load_dataset

    manifest = tmp_path / "m.csv"
    manifest.write_text(f"{header}\n{row}\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"m\.csv:2: empty path"):
        load_dataset(manifest=manifest, classes=classes)
