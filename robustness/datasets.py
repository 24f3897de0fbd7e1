"""Labelled ImageNet validation images.

Class indices are always global ImageNet-1k indices: the position of the wnid in the sorted list of
the 1000 ILSVRC2012 wnids (the torchvision / Caffe order, shipped as ``robustness/data/imagenet_classes.tsv``),
never the local folder order of a subset.

The dataset location is a setting: the ``data`` argument, else the ``ROBUSTNESS_DATA`` environment
variable, else ``../shared/data/imagenet-val-1024`` next to the working directory when it exists.
"""

from __future__ import annotations

import csv
import functools
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Sequence

import numpy as np

from .images import load_image

__all__ = [
    "Sample",
    "ImageDataset",
    "DatasetError",
    "imagenet_wnids",
    "imagenet_class_names",
    "load_dataset",
    "resolve_data_dir",
    "DATA_ENV_VAR",
    "IMAGE_EXTENSIONS",
]

DATA_ENV_VAR = "ROBUSTNESS_DATA"
DEFAULT_DATA_DIR = Path("..") / "shared" / "data" / "imagenet-val-1024"
IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".bmp", ".ppm", ".tif", ".tiff", ".webp", ".gif")


class DatasetError(ValueError):
    """The dataset folder, a label file or a label is missing or malformed; the message says which."""


@functools.lru_cache(maxsize=1)
def _class_table() -> tuple[tuple[str, str], ...]:
    text = resources.files("robustness").joinpath("data/imagenet_classes.tsv").read_text(encoding="utf-8")
    rows = tuple(tuple(line.split("\t", 1)) for line in text.splitlines() if line.strip())
    assert len(rows) == 1000, "robustness/data/imagenet_classes.tsv must list 1000 wnids"
    return rows  # type: ignore[return-value]


def imagenet_wnids() -> tuple[str, ...]:
    """The 1000 ILSVRC2012 wnids in class-index order (sorted), e.g. ``imagenet_wnids()[0] == "n01440764"``."""
    return tuple(row[0] for row in _class_table())


def imagenet_class_names() -> tuple[str, ...]:
    """Human-readable names of the 1000 classes in class-index order (first synonym, e.g. ``"tench"``)."""
    return tuple(row[1].split(",")[0].strip() for row in _class_table())


@functools.lru_cache(maxsize=1)
def _wnid_to_index() -> dict[str, int]:
    return {wnid: index for index, wnid in enumerate(imagenet_wnids())}


@dataclass(frozen=True)
class Sample:
    """One labelled image: ``path`` (absolute), ``label`` (global class index 0-999), ``image_id``
    (the path relative to the dataset root, with ``/`` separators: stable across machines)."""

    path: str
    label: int
    image_id: str


class ImageDataset(Sequence[Sample]):
    """An ordered, labelled list of images; ``dataset[i]`` is a :class:`Sample`.

    Order: sorted by file name, then by relative path. For ILSVRC2012 validation files
    (``ILSVRC2012_val_00000001.JPEG`` ...) this is the official validation order, which is shuffled
    across classes, so the first N images of a subset spread over many classes.
    """

    def __init__(self, samples: Sequence[Sample], root: str | os.PathLike, description: str = ""):
        self.samples = sorted(samples, key=lambda s: (Path(s.image_id).name, s.image_id))
        self.root = Path(root)
        self.description = description or str(root)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return ImageDataset(self.samples[index], self.root, self.description)
        return self.samples[index]

    def load(self, index: int) -> tuple[np.ndarray, int]:
        """Return ``(image uint8 (H, W, 3) RGB, label)`` for sample ``index`` (see :func:`load_image`)."""
        sample = self.samples[index]
        return load_image(sample.path), sample.label

    def limit(self, count: int | None) -> "ImageDataset":
        """The first ``count`` samples in the dataset's order (all when ``None``)."""
        if count is None:
            return self
        if count < 1:
            raise ValueError(f"image limit must be >= 1, got {count}")
        return self[:count]

    def __repr__(self) -> str:
        return f"ImageDataset({self.description!r}, {len(self)} images)"


def resolve_data_dir(data: str | os.PathLike | None = None) -> Path:
    """Where the images are: ``data`` if given, else ``$ROBUSTNESS_DATA``, else the shared default.

    Raises:
        DatasetError: if no location is given and the default folder does not exist, or if the
            chosen folder does not exist.
    """
    if data is None or str(data) == "":
        data = os.environ.get(DATA_ENV_VAR) or None
    if data is None:
        if DEFAULT_DATA_DIR.is_dir():
            data = DEFAULT_DATA_DIR
        else:
            raise DatasetError(
                f"no dataset given: pass --data DIR, set {DATA_ENV_VAR}, or set robustness_data in "
                f"pytest's configuration (the default {DEFAULT_DATA_DIR} does not exist here)"
            )
    path = Path(data).expanduser()
    if not path.is_dir():
        raise DatasetError(f"dataset folder {path} does not exist or is not a folder")
    return path.resolve()


def _read_labels_csv(path: Path) -> dict[str, int]:
    """Map relative path -> class index from a ``labels.csv`` with columns path and wnid or class_index."""
    table = _wnid_to_index()
    labels: dict[str, int] = {}
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        fields = set(reader.fieldnames or ())
        if "path" not in fields or not fields & {"wnid", "class_index"}:
            raise DatasetError(f"{path}: needs a 'path' column and a 'wnid' or 'class_index' column, has {sorted(fields)}")
        for line, row in enumerate(reader, start=2):
            rel = row["path"].replace("\\", "/")
            wnid = (row.get("wnid") or "").strip()
            index_text = (row.get("class_index") or "").strip()
            if wnid and wnid not in table:
                raise DatasetError(f"{path}:{line}: unknown wnid {wnid!r}")
            if index_text:
                try:
                    index = int(index_text)
                except ValueError:
                    raise DatasetError(f"{path}:{line}: class_index {index_text!r} is not an integer") from None
                if not 0 <= index < 1000:
                    raise DatasetError(f"{path}:{line}: class_index {index} is outside 0-999")
                if wnid and table[wnid] != index:
                    raise DatasetError(
                        f"{path}:{line}: class_index {index} disagrees with wnid {wnid} (index {table[wnid]})"
                    )
            elif wnid:
                index = table[wnid]
            else:
                raise DatasetError(f"{path}:{line}: row has neither a wnid nor a class_index")
            labels[rel] = index
    return labels


def load_dataset(data: str | os.PathLike | None = None, *, limit: int | None = None) -> ImageDataset:
    """Load a labelled ImageNet image folder in the ``<wnid>/<file>`` layout.

    Labels come from the folder's ``labels.csv`` when present (columns ``path`` and ``wnid`` and/or
    ``class_index``; every image must be listed), otherwise from each image's parent folder name,
    which must be one of the 1000 ImageNet wnids. Either way the label is the global class index.

    Args:
        data: the folder (see :func:`resolve_data_dir` for the default).
        limit: keep only the first ``limit`` images in the dataset's order (file name order).

    Returns:
        an :class:`ImageDataset`.

    Raises:
        DatasetError: missing folder, no images, an image in a folder that is not a wnid, an image
            missing from ``labels.csv``, or a malformed ``labels.csv``.
    """
    root = resolve_data_dir(data)
    files = sorted(
        p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file() and p.parent != root
    )
    if not files:
        raise DatasetError(f"dataset folder {root} holds no images in <wnid>/<file> sub-folders")
    labels_csv = root / "labels.csv"
    csv_labels = _read_labels_csv(labels_csv) if labels_csv.is_file() else None
    table = _wnid_to_index()
    samples = []
    for file in files:
        rel = file.relative_to(root).as_posix()
        if csv_labels is not None:
            if rel not in csv_labels:
                raise DatasetError(f"{labels_csv}: no label for image {rel}")
            label = csv_labels[rel]
        else:
            wnid = file.parent.name
            if wnid not in table:
                raise DatasetError(f"{file}: parent folder {wnid!r} is not an ImageNet wnid and there is no labels.csv")
            label = table[wnid]
        samples.append(Sample(str(file), label, rel))
    return ImageDataset(samples, root).limit(limit)
