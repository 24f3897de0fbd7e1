"""Labelled images: ImageNet validation images by default, or any single-label classifier's own classes.

A label is an index into the dataset's class list (:attr:`ImageDataset.classes`, a
:class:`robustness.labels.ClassList`), in the model's output order. For ImageNet that is the global
ImageNet-1k index: the position of the wnid in the sorted list of the 1000 ILSVRC2012 wnids (the
torchvision / Caffe order, shipped as ``robustness/data/imagenet_classes.tsv``), never the local
folder order of a subset. For a team's own folders (``<class name>/<file>``) it is the position in
the sorted folder names (the ``torchvision.datasets.ImageFolder`` convention) unless a class list
file (``classes.txt`` in the folder, or ``classes=``) gives the order.

The dataset location is a setting: the ``data`` argument, else the ``ROBUSTNESS_DATA`` environment
variable, else ``../shared/data/imagenet-val-1024`` next to the working directory when it exists.

Three layouts are read (:func:`load_dataset`):

* a folder of ``<wnid>/<file>`` sub-folders (torchvision ImageFolder), labelled by its ``labels.csv``
  when present, else by the folder names;
* a folder of ``<class name>/<file>`` sub-folders with any names: the classes are the sorted top-level
  folder names, or the class list (``classes.txt`` / ``classes=``) in that order;
* the flat ILSVRC2012 validation folder (``ILSVRC2012_val_00000001.JPEG`` ...), labelled by the
  devkit's ground truth (``ILSVRC2012_validation_ground_truth.txt`` + ``meta.mat``, or the 50,000-row
  ``ILSVRC2012_val_wnid.csv``) found in the devkit folder: the ``devkit`` argument, else
  ``$ROBUSTNESS_DEVKIT``, else the data folder itself, else ``../shared/data/imagenet-meta``;
* a CSV manifest with columns ``path`` and ``label`` (a wnid or a class index; or columns ``wnid`` /
  ``class_index``), paths relative to the manifest's folder (or to ``data`` when given) or absolute;
  with a class list (``classes=``), ``label`` holds class names or indices into that list; labels
  that are neither wnids nor numbers, without a class list, make the classes the sorted label names.

:meth:`ImageDataset.subset` draws a deterministic, seeded subset: N images per class, or N in total
spread evenly over the classes.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .images import load_image
from .labels import (
    CLASS_FILE_NAME,
    ClassList,
    ClassListError,
    class_list,
    imagenet_class_list,
    imagenet_class_names,
    imagenet_wnids,
    named_class_list,
    read_class_file,
)

__all__ = [
    "coverage_problem",
    "Sample",
    "ImageDataset",
    "DatasetError",
    "imagenet_wnids",
    "imagenet_class_names",
    "load_dataset",
    "resolve_data_dir",
    "DATA_ENV_VAR",
    "DEVKIT_ENV_VAR",
    "IMAGE_EXTENSIONS",
    "read_devkit_labels",
    "resolve_devkit_dir",
]

DATA_ENV_VAR = "ROBUSTNESS_DATA"
DEFAULT_DATA_DIR = Path("..") / "shared" / "data" / "imagenet-val-1024"
DEVKIT_ENV_VAR = "ROBUSTNESS_DEVKIT"
DEFAULT_DEVKIT_DIR = Path("..") / "shared" / "data" / "imagenet-meta"
_VAL_NAME = re.compile(r"^ILSVRC2012_val_(\d{8})\.(jpeg|jpg|png)$", re.IGNORECASE)
IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".bmp", ".ppm", ".tif", ".tiff", ".webp", ".gif")


class DatasetError(ClassListError):
    """The dataset folder, a label file or a label is missing or malformed; the message says which."""


@functools.lru_cache(maxsize=1)
def _wnid_to_index() -> dict[str, int]:
    return {wnid: index for index, wnid in enumerate(imagenet_wnids())}


@dataclass(frozen=True)
class Sample:
    """One labelled image: ``path`` (absolute), ``label`` (index into the dataset's class list; for
    ImageNet the global class index 0-999), ``image_id``
    (the path relative to the dataset root, with ``/`` separators: stable across machines)."""

    path: str
    label: int
    image_id: str


class ImageDataset(Sequence[Sample]):
    """An ordered, labelled list of images; ``dataset[i]`` is a :class:`Sample`.

    Order: sorted by file name, then by relative path. For ILSVRC2012 validation files
    (``ILSVRC2012_val_00000001.JPEG`` ...) this is the official validation order, which is shuffled
    across classes, so the first N images of a subset spread over many classes.

    ``classes`` (a :class:`robustness.labels.ClassList`, default ImageNet-1k) is what the labels
    index, in the model's output order; every label must be a valid index into it.

    Raises:
        DatasetError: a label outside ``0 .. len(classes) - 1``.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        root: str | os.PathLike,
        description: str = "",
        classes: ClassList | None = None,
    ):
        self.samples = sorted(samples, key=lambda s: (Path(s.image_id).name, s.image_id))
        self.root = Path(root)
        self.description = description or str(root)
        self.classes = classes if classes is not None else imagenet_class_list()
        bad = next((s for s in self.samples if not 0 <= s.label < len(self.classes)), None)
        if bad is not None:
            raise DatasetError(f"{bad.path}: label {bad.label} is outside the class list ({self.classes.describe()})")

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return ImageDataset(self.samples[index], self.root, self.description, self.classes)
        return self.samples[index]

    def load(self, index: int) -> tuple[np.ndarray, int]:
        """Return ``(image uint8 (H, W, 3) RGB, label)`` for sample ``index`` (see :func:`load_image`)."""
        sample = self.samples[index]
        return load_image(sample.path), sample.label

    def limit(self, count: int | None) -> ImageDataset:
        """The first ``count`` samples in the dataset's order (all when ``None``)."""
        if count is None:
            return self
        if count < 1:
            raise ValueError(f"image limit must be >= 1, got {count}")
        return self[:count]

    def subset(self, per_class: int | None = None, total: int | None = None, seed: int = 0) -> ImageDataset:
        """A deterministic, seeded subset, returned in the dataset's order.

        Each image gets a key ``sha256(f"{seed}:{image_id}")``; within a class, images are ranked by
        that key, so the choice of an image depends only on the seed and on the other images of its
        class, not on the machine, the file system order or the other classes.

        Args:
            per_class: keep the first ``per_class`` images of each class (all of a class with fewer).
            total: keep ``total`` images spread evenly over the classes: every class's rank-0 image
                first (classes in seeded order), then every rank-1 image, and so on, so class counts
                differ by at most one where classes have enough images. Applied after ``per_class``.
            seed: the seed of the ranking.

        Raises:
            ValueError: ``per_class`` or ``total`` below 1, or ``total`` above the number of images.
        """
        if per_class is None and total is None:
            return self
        for key, value in (("per_class", per_class), ("total", total)):
            if value is not None and (isinstance(value, bool) or int(value) != value or value < 1):
                raise ValueError(f"subset {key} must be an integer >= 1, got {value!r}")
        key = lambda text: hashlib.sha256(f"{seed}:{text}".encode()).hexdigest()  # noqa: E731
        by_class: dict[int, list[Sample]] = {}
        for sample in self.samples:
            by_class.setdefault(sample.label, []).append(sample)
        ranked: list[tuple[int, str, Sample]] = []
        for label, members in by_class.items():
            members = sorted(members, key=lambda s: key(s.image_id))
            if per_class is not None:
                members = members[:per_class]
            class_key = key(f"class{label}")
            ranked.extend((rank, class_key, sample) for rank, sample in enumerate(members))
        if total is not None:
            if total > len(ranked):
                raise ValueError(
                    f"subset total {total} exceeds the {len(ranked)} images available in {self.description}"
                )
            ranked = sorted(ranked, key=lambda item: (item[0], item[1]))[:total]
        parts = [
            f"per_class={per_class}" if per_class is not None else "",
            f"total={total}" if total is not None else "",
        ]
        note = ", ".join(p for p in parts if p)
        return ImageDataset(
            [item[2] for item in ranked], self.root, f"{self.description} [subset {note}, seed {seed}]", self.classes
        )

    def present_classes(self) -> ImageDataset:
        """The same images with the class list cut down to the classes that have images, in the
        list's order, and labels renumbered into it (for an ImageNet-1k model restricted to the
        classes of an ImageNet subset, :func:`robustness.labels.restrict_to_classes`)."""
        used = sorted({s.label for s in self.samples})
        if len(used) == len(self.classes):
            return self
        new = {old: i for i, old in enumerate(used)}
        classes = ClassList(
            tuple(self.classes.ids[i] for i in used),
            tuple(self.classes.names[i] for i in used),
            f"the {len(used)} classes with images in {self.description}, of {self.classes.source}",
        )
        samples = [Sample(s.path, new[s.label], s.image_id) for s in self.samples]
        return ImageDataset(samples, self.root, self.description, classes)

    def __repr__(self) -> str:
        return f"ImageDataset({self.description!r}, {len(self)} images)"


def _manifest_path(row: dict, manifest: Path, line: int) -> str:
    """A manifest row's ``path``, with ``/`` separators and no leading ``./``.

    Raises:
        DatasetError: the path is empty (naming the manifest and the line).
    """
    rel = (row["path"] or "").strip().replace("\\", "/")
    while rel.startswith("./"):
        rel = rel[2:]
    if not rel:
        raise DatasetError(f"{manifest}:{line}: empty path")
    return rel


def coverage_problem(full: ImageDataset, sample: ImageDataset) -> str | None:
    """Why ``sample`` (the first N images of ``full``) is a biased sample of an own-classes dataset, or
    ``None``.

    The first N images in file-name order interleave the classes of ImageNet's validation files
    (``ILSVRC2012_val_*`` names are in random class order), but not those of a team folder whose files
    are named per class (``bird_001.jpg``, ...): there the first N may be one class only, and accuracy
    measured on it says nothing about the others. For a class list other than ImageNet-1k this returns
    a message when the sample holds fewer classes than it could (``min(classes with images, N)``).
    ImageNet-1k datasets return ``None`` (a 100-image sample of 1000 classes is the paper's setup).
    """
    if full.classes.is_imagenet or len(sample) >= len(full):
        return None
    present = {s.label for s in full.samples}
    covered = {s.label for s in sample.samples}
    if len(covered) >= min(len(present), len(sample)):
        return None
    missing = sorted(full.classes.names[i] for i in present - covered)
    shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
    return (
        f"the first {len(sample)} images of {full.root} in file-name order hold only {len(covered)} of the "
        f"{len(present)} classes with images (none of: {shown}), so their accuracy says nothing about the "
        "others: use all images, or name the files so that the classes interleave (the order is by file "
        "name, then path)"
    )


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
    """Map path -> class index from a CSV with a ``path`` column and a ``wnid``, ``class_index`` or
    ``label`` (wnid or class index) column; the error names the file, line and value."""
    table = _wnid_to_index()
    labels: dict[str, int] = {}
    try:
        handle = open(path, newline="", encoding="utf-8-sig")  # noqa: SIM115 - closed by the `with` below
    except OSError as error:
        raise DatasetError(f"cannot read {path}: {error}") from None
    with handle:
        reader = csv.DictReader(handle)
        fields = set(reader.fieldnames or ())
        if "path" not in fields or not fields & {"wnid", "class_index", "label"}:
            raise DatasetError(
                f"{path}: needs a 'path' column and a 'label', 'wnid' or 'class_index' column, has {sorted(fields)}"
            )
        for line, row in enumerate(reader, start=2):
            rel = _manifest_path(row, path, line)
            wnid = (row.get("wnid") or "").strip()
            index_text = (row.get("class_index") or "").strip()
            label_text = (row.get("label") or "").strip()
            if label_text:
                if label_text in table:
                    wnid = wnid or label_text
                    if wnid != label_text:
                        raise DatasetError(f"{path}:{line}: label {label_text} disagrees with wnid {wnid}")
                elif re.fullmatch(r"[+-]?\d+", label_text):
                    index_text = index_text or label_text
                    if index_text != label_text:
                        raise DatasetError(f"{path}:{line}: label {label_text} disagrees with class_index {index_text}")
                else:
                    raise DatasetError(
                        f"{path}:{line}: label {label_text!r} is neither an ImageNet wnid nor a class index 0-999"
                    )
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
                raise DatasetError(f"{path}:{line}: row has no label (wnid or class index)")
            if rel in labels and labels[rel] != index:
                raise DatasetError(f"{path}:{line}: {rel} is listed twice with different labels")
            labels[rel] = index
    return labels


def resolve_devkit_dir(devkit: str | os.PathLike | None = None, data_dir: Path | None = None) -> Path:
    """The ILSVRC2012 devkit folder: ``devkit``, else ``$ROBUSTNESS_DEVKIT``, else ``data_dir`` when it
    holds devkit files, else ``../shared/data/imagenet-meta`` relative to the working directory.

    Raises:
        DatasetError: the chosen folder does not exist or holds no devkit files.
    """
    candidates: list[Path] = []
    if devkit is not None and str(devkit) != "":
        candidates = [Path(devkit).expanduser()]
    elif os.environ.get(DEVKIT_ENV_VAR):
        candidates = [Path(os.environ[DEVKIT_ENV_VAR]).expanduser()]
    else:
        candidates = ([data_dir] if data_dir is not None else []) + [DEFAULT_DEVKIT_DIR]
    for folder in candidates:
        if _devkit_files(folder) is not None:
            return folder.resolve()
    if len(candidates) == 1 or devkit is not None:
        raise DatasetError(
            f"devkit folder {candidates[0]} holds neither ILSVRC2012_validation_ground_truth.txt + meta.mat "
            f"(directly, in data/ or in ILSVRC2012_devkit_t12/data/) nor ILSVRC2012_val_wnid.csv"
        )
    raise DatasetError(
        f"a flat ILSVRC2012 validation folder needs the devkit's ground truth: pass devkit=DIR (CLI --devkit), "
        f"set ${DEVKIT_ENV_VAR}, or put the devkit files in the data folder (looked in {', '.join(map(str, candidates))})"
    )


def _devkit_files(folder: Path) -> tuple[str, Path, Path | None] | None:
    """``("devkit", ground_truth, meta_mat)`` or ``("csv", val_wnid_csv, None)`` or ``None``."""
    if not folder.is_dir():
        return None
    for sub in (folder, folder / "data", folder / "ILSVRC2012_devkit_t12" / "data"):
        truth, meta = sub / "ILSVRC2012_validation_ground_truth.txt", sub / "meta.mat"
        if truth.is_file() and meta.is_file():
            return ("devkit", truth, meta)
    if (folder / "ILSVRC2012_val_wnid.csv").is_file():
        return ("csv", folder / "ILSVRC2012_val_wnid.csv", None)
    return None


@functools.lru_cache(maxsize=4)
def read_devkit_labels(devkit: str | os.PathLike) -> dict[int, int]:
    """Ground-truth class index (sorted-wnid order, 0-999) of every ILSVRC2012 validation image.

    Reads the devkit's ``ILSVRC2012_validation_ground_truth.txt`` (line ``i`` = the 1-based
    ILSVRC2012_ID of ``ILSVRC2012_val_{i:08d}.JPEG``) and ``meta.mat`` (ILSVRC2012_ID -> wnid, as
    torchvision's ``datasets.ImageNet`` parses it), or else ``ILSVRC2012_val_wnid.csv`` (columns
    filename, wnid[, class_index]).

    Returns:
        ``{image number (1-50000): class index}``.

    Raises:
        DatasetError: missing or malformed files (the message names the file and line).
    """
    folder = Path(devkit)
    found = _devkit_files(folder)
    if found is None:
        raise DatasetError(
            f"{folder}: no ILSVRC2012 devkit files (ground truth + meta.mat, or ILSVRC2012_val_wnid.csv)"
        )
    table = _wnid_to_index()
    kind, first, meta_path = found
    labels: dict[int, int] = {}
    if kind == "devkit":
        try:
            from scipy.io import loadmat

            synsets = loadmat(str(meta_path), squeeze_me=True)["synsets"]
            id_to_wnid = {int(row[0]): str(row[1]) for row in synsets if int(row[4]) == 0}
        except Exception as error:  # noqa: BLE001 - scipy.io and a malformed .mat raise many types
            raise DatasetError(f"{meta_path}: cannot read the devkit synsets ({error})") from None
        if len(id_to_wnid) != 1000 or set(id_to_wnid.values()) != set(table):
            raise DatasetError(f"{meta_path}: expected the 1000 ILSVRC2012 leaf synsets, found {len(id_to_wnid)}")
        with open(first, encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                text = line.strip()
                if not text:
                    continue
                try:
                    labels[number] = table[id_to_wnid[int(text)]]
                except (ValueError, KeyError):
                    raise DatasetError(f"{first}:{number}: {text!r} is not an ILSVRC2012_ID 1-1000") from None
        return labels
    with open(first, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        if not {"filename", "wnid"} <= set(reader.fieldnames or ()):
            raise DatasetError(f"{first}: needs columns filename and wnid, has {reader.fieldnames}")
        for line, row in enumerate(reader, start=2):
            match = _VAL_NAME.match(row["filename"].strip())
            if not match or row["wnid"].strip() not in table:
                raise DatasetError(f"{first}:{line}: bad row {row['filename']!r}, {row['wnid']!r}")
            labels[int(match.group(1))] = table[row["wnid"].strip()]
    return labels


def _flat_val_samples(root: Path, files: list[Path], devkit: str | os.PathLike | None) -> list[Sample]:
    folder = resolve_devkit_dir(devkit, root)
    truth = read_devkit_labels(folder)
    samples = []
    for file in files:
        match = _VAL_NAME.match(file.name)
        if not match:
            raise DatasetError(
                f"{file}: a flat folder must hold ILSVRC2012 validation files (ILSVRC2012_val_NNNNNNNN.JPEG); "
                f"for other names use <wnid>/ sub-folders or a CSV manifest"
            )
        number = int(match.group(1))
        if number not in truth:
            raise DatasetError(f"{file}: image number {number} has no ground truth in {folder}")
        samples.append(Sample(str(file), truth[number], file.name))
    return samples


def _manifest_samples(manifest: Path, root: Path, classes: ClassList | None) -> tuple[list[Sample], ClassList]:
    if classes is None or _all_wnids(classes.ids):
        imagenet = _imagenet_manifest_labels(manifest) if classes is None else _read_labels_csv(manifest)
        if imagenet is not None:
            labels = imagenet if classes is None else _relabel(imagenet, classes, manifest)
            classes = classes or imagenet_class_list()
        else:  # class names without a class list: the sorted names
            labels, classes = _read_named_labels_csv(manifest, None)
    else:
        labels, classes = _read_named_labels_csv(manifest, classes)
    if not labels:
        raise DatasetError(f"{manifest}: the manifest lists no images")
    samples = []
    for rel, label in labels.items():
        file = Path(rel) if Path(rel).is_absolute() else root / rel
        if not file.is_file():
            raise DatasetError(f"{manifest}: image {rel} not found (looked at {file})")
        try:
            image_id = file.resolve().relative_to(root).as_posix()
        except ValueError:
            image_id = rel
        samples.append(Sample(str(file.resolve()), label, image_id))
    return samples, classes


def _all_wnids(ids) -> bool:
    table = _wnid_to_index()
    return all(i in table for i in ids)


def _imagenet_manifest_labels(manifest: Path) -> dict[str, int] | None:
    """The manifest read the ImageNet way, or ``None`` when its ``label`` column holds only names that
    look like neither wnids nor numbers (then the labels are class names); a mix is read the ImageNet
    way, so a mistyped wnid is an error, not a new class."""
    try:
        handle = open(manifest, newline="", encoding="utf-8-sig")  # noqa: SIM115 - closed by the `with` below
    except OSError as error:
        raise DatasetError(f"cannot read {manifest}: {error}") from None
    with handle:
        reader = csv.DictReader(handle)
        fields = set(reader.fieldnames or ())
        if "label" in fields and not fields & {"wnid", "class_index"}:
            texts = [(row.get("label") or "").strip() for row in reader]
            imagenet_like = [bool(re.fullmatch(r"n\d{8}|[+-]?\d+", t)) for t in texts if t]
            if imagenet_like and not any(imagenet_like):  # class names only (a mix is an ImageNet error)
                return None
    return _read_labels_csv(manifest)


def _relabel(labels: dict[str, int], classes: ClassList, where: Path) -> dict[str, int]:
    """ImageNet-1k class indices -> positions in ``classes`` (a list of wnids)."""
    wnids = imagenet_wnids()
    out = {}
    for rel, index in labels.items():
        wnid = wnids[index]
        if wnid not in classes.ids:
            raise DatasetError(
                f"{where}: image {rel} has class {wnid} ({imagenet_class_names()[index]}), which is not in the "
                f"class list ({classes.source})"
            )
        out[rel] = classes.ids.index(wnid)
    return out


def _read_named_labels_csv(path: Path, classes: ClassList | None) -> tuple[dict[str, int], ClassList]:
    """Map path -> label from a CSV with ``path`` and ``label`` columns, where a label is a class name
    of ``classes`` or an index into it (a name wins when a class is named by digits). Without
    ``classes`` the labels are names and the class list is their sorted set."""
    try:
        handle = open(path, newline="", encoding="utf-8-sig")  # noqa: SIM115 - closed by the `with` below
    except OSError as error:
        raise DatasetError(f"cannot read {path}: {error}") from None
    rows: list[tuple[int, str, str]] = []
    with handle:
        reader = csv.DictReader(handle)
        fields = set(reader.fieldnames or ())
        if not {"path", "label"} <= fields:
            raise DatasetError(
                f"{path}: needs a 'path' and a 'label' column (class name or index), has {sorted(fields)}"
            )
        for line, row in enumerate(reader, start=2):
            rel = _manifest_path(row, path, line)
            text = (row["label"] or "").strip()
            if not text:
                raise DatasetError(f"{path}:{line}: row has no label")
            rows.append((line, rel, text))
    if classes is None:
        names = sorted({text for _, _, text in rows})
        classes = named_class_list(names, f"sorted label names of {path}")
    labels: dict[str, int] = {}
    for line, rel, text in rows:
        if text in classes.ids:
            index = classes.ids.index(text)
        elif re.fullmatch(r"\d+", text) and int(text) < len(classes):
            index = int(text)
        else:
            raise DatasetError(
                f"{path}:{line}: label {text!r} is neither a class name nor an index 0-{len(classes) - 1} "
                f"of the class list ({classes.describe()})"
            )
        if rel in labels and labels[rel] != index:
            raise DatasetError(f"{path}:{line}: {rel} is listed twice with different labels")
        labels[rel] = index
    return labels, classes


def load_dataset(
    data: str | os.PathLike | None = None,
    *,
    limit: int | None = None,
    manifest: str | os.PathLike | None = None,
    devkit: str | os.PathLike | None = None,
    per_class: int | None = None,
    total: int | None = None,
    subset_seed: int = 0,
    classes: ClassList | str | os.PathLike | Sequence[str] | None = None,
) -> ImageDataset:
    """Load labelled images: ImageNet validation images, or a classifier's own classes.

    Layouts (see the module doc):

    * ``manifest`` given, or ``data`` is a ``.csv`` file: the CSV manifest (columns ``path`` and
      ``label``, or ``wnid`` / ``class_index``); paths are relative to ``data`` when it is a folder,
      else to the manifest's folder. With a class list, ``label`` is a class name or an index into it.
    * ``data`` holds ``<wnid>/<file>`` sub-folders: labels from the folder's ``labels.csv`` when
      present (every image must be listed), otherwise from each image's parent folder name.
    * ``data`` holds ``<class name>/<file>`` sub-folders whose names are not all wnids (and no
      ``labels.csv``): each image's class is its top-level folder; the classes are the sorted
      folder names (``torchvision.datasets.ImageFolder``) unless a class list gives the order.
    * ``data`` holds ``ILSVRC2012_val_NNNNNNNN.JPEG`` files directly: labels from the devkit (see
      :func:`resolve_devkit_dir`).

    The class list (:attr:`ImageDataset.classes`) is ``classes`` when given, else ``classes.txt``
    in the data folder when present (one name per line, :func:`robustness.labels.read_class_file`),
    else ImageNet-1k for wnid folders, ILSVRC2012 files and wnid / index manifests, else the sorted
    folder (or label) names. A class list of wnids turns ImageNet labels into positions in that
    list (ImageNet-R / ImageNet-A style subsets).

    Args:
        data: the folder (see :func:`resolve_data_dir` for the default) or a manifest CSV.
        limit: keep only the first ``limit`` images in the dataset's order (file name order), after
            the subset.
        manifest: a CSV manifest.
        devkit: the ILSVRC2012 devkit folder, for a flat validation folder.
        per_class, total, subset_seed: a deterministic subset (see :meth:`ImageDataset.subset`).
        classes: the class list: a :class:`robustness.labels.ClassList`, a class list file, or a
            sequence of class names, in the model's output order.

    Returns:
        an :class:`ImageDataset`.

    Raises:
        DatasetError: missing folder, no images, a folder mixing wnid and other folder names, an
            image whose folder or label is not in the class list, an image missing from
            ``labels.csv``, a malformed CSV or class list, a flat file without ground truth.
    """
    try:
        return _load_dataset(data, limit, manifest, devkit, per_class, total, subset_seed, classes)
    except DatasetError:
        raise
    except ClassListError as error:
        raise DatasetError(str(error)) from None


def _load_dataset(data, limit, manifest, devkit, per_class, total, subset_seed, classes) -> ImageDataset:
    explicit = class_list(classes) if classes is not None else None
    if manifest is None and data is not None and str(data).lower().endswith(".csv") and Path(data).is_file():
        manifest, data = data, None
    if manifest is not None:
        manifest = Path(manifest).expanduser()
        if not manifest.is_file():
            raise DatasetError(f"manifest {manifest} does not exist")
        root = resolve_data_dir(data) if data is not None else manifest.resolve().parent
        samples, found = _manifest_samples(manifest.resolve(), root, explicit)
        dataset = ImageDataset(samples, root, f"{manifest}", found)
        return dataset.subset(per_class, total, subset_seed).limit(limit)

    root = resolve_data_dir(data)
    if explicit is None and (root / CLASS_FILE_NAME).is_file():
        explicit = read_class_file(root / CLASS_FILE_NAME)
    images = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    files = [p for p in images if p.parent != root]
    flat = [p for p in images if p.parent == root]
    if not files and flat:
        samples = _flat_val_samples(root, flat, devkit)
        if explicit is not None:
            relabelled = _relabel({s.image_id: s.label for s in samples}, explicit, root)
            samples = [Sample(s.path, relabelled[s.image_id], s.image_id) for s in samples]
        dataset = ImageDataset(samples, root, f"{root} (flat ILSVRC2012 val)", explicit)
        return dataset.subset(per_class, total, subset_seed).limit(limit)
    if not files:
        raise DatasetError(
            f"dataset folder {root} holds no images in <class>/<file> sub-folders or ILSVRC2012_val_* files"
        )
    labels_csv = root / "labels.csv"
    table = _wnid_to_index()
    if labels_csv.is_file() and explicit is not None and not _all_wnids(explicit.ids):
        named, _ = _read_named_labels_csv(labels_csv, explicit)
        samples = _listed_samples(root, files, labels_csv, named)
        return ImageDataset(samples, root, classes=explicit).subset(per_class, total, subset_seed).limit(limit)
    parents = sorted({file.parent.name for file in files})
    own = [name for name in parents if name not in table]
    if not labels_csv.is_file() and own and (explicit is None or not _all_wnids(explicit.ids)):
        if explicit is None and len(own) < len(parents):
            wnids = [name for name in parents if name in table]
            raise DatasetError(
                f"{root}: folder {own[0]!r} is not an ImageNet wnid but {wnids[0]!r}"
                f"{f' and {len(wnids) - 1} more' if len(wnids) > 1 else ''} are; name every folder by its class "
                f"and list the classes in {root / CLASS_FILE_NAME} (one per line, in the model's output order), "
                f"or use wnid folders only"
            )
        return _own_class_dataset(root, files, explicit).subset(per_class, total, subset_seed).limit(limit)
    csv_labels = _read_labels_csv(labels_csv) if labels_csv.is_file() else None
    samples = []
    for file in files:
        rel = file.relative_to(root).as_posix()
        if csv_labels is not None:
            if rel not in csv_labels:
                raise DatasetError(f"{labels_csv}: no label for image {rel}")
            label = csv_labels[rel]
            folder = file.parent.name
            if folder in table and table[folder] != label:
                raise DatasetError(
                    f"{labels_csv}: label {label} ({imagenet_wnids()[label]}) for {rel} contradicts "
                    f"its folder {folder} (class {table[folder]})"
                )
        else:
            wnid = file.parent.name
            if wnid not in table:
                raise DatasetError(f"{file}: parent folder {wnid!r} is not an ImageNet wnid and there is no labels.csv")
            label = table[wnid]
        samples.append(Sample(str(file), label, rel))
    if csv_labels is not None:
        found = {sample.image_id for sample in samples}
        missing = sorted(set(csv_labels) - found)
        if missing:
            raise DatasetError(
                f"{labels_csv}: {len(missing)} listed image(s) not found under {root}, e.g. {', '.join(missing[:3])}"
            )
    if explicit is not None:
        relabelled = _relabel({s.image_id: s.label for s in samples}, explicit, root)
        samples = [Sample(s.path, relabelled[s.image_id], s.image_id) for s in samples]
    return ImageDataset(samples, root, classes=explicit).subset(per_class, total, subset_seed).limit(limit)


def _listed_samples(root: Path, files: list[Path], labels_csv: Path, labels: dict[str, int]) -> list[Sample]:
    samples = []
    for file in files:
        rel = file.relative_to(root).as_posix()
        if rel not in labels:
            raise DatasetError(f"{labels_csv}: no label for image {rel}")
        samples.append(Sample(str(file), labels[rel], rel))
    missing = sorted(set(labels) - {s.image_id for s in samples})
    if missing:
        raise DatasetError(
            f"{labels_csv}: {len(missing)} listed image(s) not found under {root}, e.g. {', '.join(missing[:3])}"
        )
    return samples


def _own_class_dataset(root: Path, files: list[Path], classes: ClassList | None) -> ImageDataset:
    """``<class name>/<file>`` folders: each image's class is its top-level folder under ``root``."""
    folders = sorted({file.relative_to(root).parts[0] for file in files})
    if classes is None:
        classes = named_class_list(folders, f"sorted folder names of {root}")
    samples = []
    for file in files:
        rel = file.relative_to(root).as_posix()
        folder = file.relative_to(root).parts[0]
        if folder not in classes.ids:
            raise DatasetError(f"{file}: folder {folder!r} is not a class of the class list ({classes.describe()})")
        samples.append(Sample(str(file), classes.ids.index(folder), rel))
    return ImageDataset(samples, root, classes=classes)
