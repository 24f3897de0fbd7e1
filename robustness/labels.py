"""Label spaces: the class list a dataset's labels index, and the model outputs it must match.

A dataset's labels are indices into its **class list** (:class:`ClassList`), in the model's output
order. The ImageNet-1k list (the 1000 ILSVRC2012 wnids, sorted, with human-readable names) is the
default; any single-label classifier brings its own list:

* a folder of ``<class name>/<file>`` folders: the sorted folder names (the
  ``torchvision.datasets.ImageFolder`` convention), unless a class list gives the order;
* a class list file (``classes.txt`` in the data folder, or ``classes=`` / ``--classes FILE``): one
  class name per line, in the model's output order; blank lines and lines starting with ``#`` are
  ignored;
* a sequence of names (``classes=["bird", "cat", "dog"]``).

The model's output width must equal the class count (:func:`check_output_width`). A model trained on
ImageNet-1k and evaluated on a subset of its classes (the ImageNet-R / ImageNet-A convention) is
supported explicitly by :func:`restrict_to_classes`: its 1000 logits are restricted to the dataset's
classes (wnids), never silently.

Metrics that depend on the class count (:func:`applicable_metrics`): top-1 and balanced accuracy
always; top-k (k = 2..5) only with more than k classes (with k or fewer it is 100% by construction).

This module imports neither torch nor numpy at import time.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

__all__ = [
    "imagenet_wnids",
    "imagenet_class_names",
    "ClassList",
    "ClassListError",
    "CLASS_FILE_NAME",
    "imagenet_class_list",
    "read_class_file",
    "class_list",
    "named_class_list",
    "applicable_metrics",
    "balanced_accuracy",
    "output_width",
    "check_output_width",
    "width_mismatch",
    "restrict_to_classes",
    "MAX_CLASSES",
]


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


#: The class list file looked for in a data folder.
CLASS_FILE_NAME = "classes.txt"

#: The most classes a model may have: the prediction cache stores class indices as ``int16``.
MAX_CLASSES = 32767


class ClassListError(ValueError):
    """A class list is empty, has duplicates, or does not match the model or the data (the message says which)."""


@dataclass(frozen=True)
class ClassList:
    """The classes a dataset's labels index, in the model's output order.

    Attributes:
        ids: one identifier per class, unique: an ImageNet wnid (``n01440764``) or the class's
            folder / file name (``bird``). Labels are positions in this tuple.
        names: a human-readable name per class (the first ImageNet synonym, e.g. ``tench``; for
            other lists the id itself), used in reports.
        source: where the list came from, for messages (``ImageNet-1k (packaged)``,
            ``sorted folder names of /data/val``, ``/data/val/classes.txt``).

    Raises:
        ClassListError: no class, ``ids`` and ``names`` of different lengths, an empty or repeated id.
    """

    ids: tuple[str, ...]
    names: tuple[str, ...]
    source: str = ""

    def __post_init__(self):
        object.__setattr__(self, "ids", tuple(str(i) for i in self.ids))
        object.__setattr__(self, "names", tuple(str(n) for n in self.names))
        where = f" ({self.source})" if self.source else ""
        if not self.ids:
            raise ClassListError(f"the class list{where} is empty")
        if len(self.ids) != len(self.names):
            raise ClassListError(f"the class list{where} has {len(self.ids)} ids but {len(self.names)} names")
        if len(self.ids) > MAX_CLASSES:
            raise ClassListError(
                f"the class list{where} has {len(self.ids)} classes; at most {MAX_CLASSES} are supported"
            )
        seen: set[str] = set()
        for position, class_id in enumerate(self.ids):
            if not class_id.strip():
                raise ClassListError(f"the class list{where} has an empty name at position {position}")
            if class_id in seen:
                raise ClassListError(f"the class list{where} names class {class_id!r} twice")
            seen.add(class_id)

    def __len__(self) -> int:
        return len(self.ids)

    def index(self, class_id: str) -> int:
        """The label (position) of ``class_id``; ``ClassListError`` naming the list when absent."""
        try:
            return self.ids.index(class_id)
        except ValueError:
            raise ClassListError(f"class {class_id!r} is not in the class list ({self.source})") from None

    @property
    def is_imagenet(self) -> bool:
        """Whether this is the full ImageNet-1k list in class-index order (the paper's setup)."""
        return self.ids == imagenet_wnids()

    @property
    def digest(self) -> str:
        """SHA-256 (first 16 hex digits) of the ids joined by newlines: two lists share a digest only
        when they name the same classes in the same order (names and source do not count)."""
        return hashlib.sha256("\n".join(self.ids).encode()).hexdigest()[:16]

    def describe(self) -> str:
        """``1000 classes (ImageNet-1k (packaged))`` or ``3 classes: bird, cat, dog (sorted folder names of ...)``."""
        if len(self) <= 10:
            return f"{len(self)} classes: {', '.join(self.ids)} ({self.source})"
        return f"{len(self)} classes ({self.source})"

    def to_record(self) -> dict:
        """JSON provenance: ``{"count", "digest", "source", "ids", "names"}``; for the ImageNet-1k
        list only count, digest and source (the list is packaged)."""
        record = {"count": len(self), "digest": self.digest, "source": self.source}
        if not self.is_imagenet:
            record["ids"] = list(self.ids)
            record["names"] = list(self.names)
        return record


def imagenet_class_list() -> ClassList:
    """The 1000 ILSVRC2012 classes: wnids in sorted order (the torchvision / Caffe class index) and
    their first synonym as the name (``robustness/data/imagenet_classes.tsv``)."""
    return ClassList(imagenet_wnids(), imagenet_class_names(), "ImageNet-1k (packaged)")


def named_class_list(ids: Sequence[str], source: str) -> ClassList:
    """A :class:`ClassList` of ``ids`` in that order; ImageNet wnids get their human-readable names,
    other ids are their own name. ``source`` says where the list came from."""
    table = dict(zip(imagenet_wnids(), imagenet_class_names()))
    return ClassList(tuple(ids), tuple(table.get(i, i) for i in ids), source)


def read_class_file(path: str | os.PathLike) -> ClassList:
    """Read a class list file: one class name per line, in the model's output order (line 1 = index 0).

    Blank lines and lines starting with ``#`` are skipped; surrounding spaces are stripped. ImageNet
    wnids get their human-readable names.

    Raises:
        ClassListError: the file cannot be read, lists no class, or repeats a class (the message
            names the file and line).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise ClassListError(f"cannot read class list {path}: {error}") from None
    ids: list[str] = []
    lines: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        name = line.strip()
        if not name or name.startswith("#"):
            continue
        if name in lines:
            raise ClassListError(f"{path}:{number}: class {name!r} already listed on line {lines[name]}")
        lines[name] = number
        ids.append(name)
    if not ids:
        raise ClassListError(f"{path}: the class list names no class (one name per line)")
    return named_class_list(ids, str(path))


def class_list(classes: ClassList | str | os.PathLike | Sequence[str], source: str = "classes=") -> ClassList:
    """A :class:`ClassList` from a list, a class list file (:func:`read_class_file`) or a sequence of names.

    Raises:
        ClassListError: see :func:`read_class_file` and :class:`ClassList`.
    """
    if isinstance(classes, ClassList):
        return classes
    if isinstance(classes, (str, os.PathLike)):
        return read_class_file(classes)
    return named_class_list([str(c) for c in classes], f"{source} argument")


def applicable_metrics(num_classes: int) -> tuple[str, ...]:
    """The gateable metrics that mean something with ``num_classes`` classes, in
    :data:`robustness.names.METRICS` order: ``top1`` and ``balanced_accuracy`` always, ``topK``
    (K = 2..5) only when there are more than K classes (with K or fewer every class is in the top K,
    so top-K accuracy is 100% by construction)."""
    from .names import METRICS, top_k

    return tuple(m for m in METRICS if (top_k(m) or 1) < max(num_classes, 2))


def balanced_accuracy(labels, predicted) -> float:
    """Balanced accuracy: the mean over classes present in ``labels`` of each class's recall.

    The definition of ``sklearn.metrics.balanced_accuracy_score`` (``adjusted=False``; classes that
    appear only among the predictions are ignored), after Brodersen et al., "The balanced accuracy
    and its posterior distribution", ICPR 2010. Equals top-1 accuracy when every class has the same
    number of images.

    Args:
        labels: int ``(n,)`` true class indices, n >= 1.
        predicted: int ``(n,)`` top-1 class indices.

    Returns:
        a fraction in [0, 1].

    Raises:
        ValueError: empty input or shapes that differ.
    """
    import numpy as np

    labels = np.asarray(labels).reshape(-1)
    predicted = np.asarray(predicted).reshape(-1)
    if labels.shape != predicted.shape or labels.size == 0:
        raise ValueError(
            f"balanced accuracy needs two equal, non-empty (n,) arrays, got {labels.shape}, {predicted.shape}"
        )
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    hits = np.bincount(inverse, weights=(predicted == labels).astype(np.float64), minlength=len(classes))
    return float(np.mean(hits / counts))


def output_width(model, *, probe: bool = True) -> int | None:
    """How many class logits ``model`` (a :class:`robustness.Classifier`) returns: its
    ``num_classes`` when recorded at load time (:func:`robustness.load_model` records it), else
    one probe forward pass on a zero image, else (``probe=False``) ``None``."""
    width = getattr(model, "num_classes", None)
    if width is not None:
        return int(width)
    if not probe:
        return None
    import torch

    probe = torch.zeros((1, *model.preprocessing.input_size))
    device = next((p.device for p in model.parameters()), None)
    if device is not None:
        probe = probe.to(device)
    with torch.inference_mode():
        out = model(probe)
    if getattr(out, "ndim", None) != 2:
        raise ClassListError(
            f"model {model.name} returns shape {tuple(getattr(out, 'shape', ()))}; expected logits (N, classes)"
        )
    return int(out.shape[1])


def check_output_width(model, classes: ClassList, *, probe: bool = True) -> None:
    """Raise :class:`ClassListError` unless ``model`` outputs one logit per class of ``classes``.

    The message names both numbers and where each came from, and for an ImageNet-1k model on a
    subset of its classes, the restriction option. With ``probe=False`` a model whose width was
    not recorded at load time (a :class:`robustness.Classifier` built directly) is not run here;
    the engine then checks its first batch (:func:`width_mismatch`).
    """
    width = output_width(model, probe=probe)
    if width is None or width == len(classes):
        return
    raise width_mismatch(model, width, classes, "its logits' width, measured at load")


def width_mismatch(model, width: int, classes: ClassList, measured: str) -> ClassListError:
    """The error for a model of ``width`` outputs on ``classes`` (``measured``: how the width was found)."""
    hint = ""
    if width == 1000 and all(i.startswith("n") and i[1:].isdigit() for i in classes.ids):
        hint = (
            "; to score an ImageNet-1k model on a subset of its classes, restrict its logits to the dataset's "
            "classes (restrict_to_dataset_classes=True, CLI --restrict-to-dataset-classes)"
        )
    return ClassListError(
        f"model {model.name} outputs {width} classes ({measured}), but the dataset has {classes.describe()}; "
        f"the model's outputs must be the dataset's classes in the same order{hint}"
    )


def restrict_to_classes(model, classes: ClassList, model_classes: ClassList | None = None):
    """An ImageNet-1k model restricted to a subset of its classes (ImageNet-R / ImageNet-A convention).

    The returned classifier's logits are ``model``'s logits at the positions of ``classes``' ids in
    ``model_classes`` (default ImageNet-1k), in ``classes``' order: ``(N, len(classes))``. Its name
    is ``model``'s name; its weights digest and module code differ, so the prediction cache keeps its
    entries apart from the unrestricted model's.

    Raises:
        ClassListError: a class of ``classes`` that the model does not output (the message names it),
            or a model whose width is not ``len(model_classes)``.
    """
    from ._restrict import RestrictedLogits
    from .models import Classifier

    model_classes = model_classes or imagenet_class_list()
    width = output_width(model)
    if width != len(model_classes):
        raise ClassListError(
            f"cannot restrict model {model.name}: it outputs {width} classes, not the {len(model_classes)} "
            f"of {model_classes.source}"
        )
    missing = [i for i in classes.ids if i not in model_classes.ids]
    if missing:
        raise ClassListError(
            f"cannot restrict model {model.name} to the dataset's classes ({classes.source}): "
            f"{', '.join(missing[:5])} {'is' if len(missing) == 1 else 'are'} not among its {len(model_classes)} "
            f"classes ({model_classes.source})"
        )
    indices = [model_classes.index(i) for i in classes.ids]
    net = RestrictedLogits(model, indices)
    digest = hashlib.sha256(f"{model.weights_digest}:{','.join(map(str, indices))}".encode()).hexdigest()[:16]
    restricted = Classifier(net, model.preprocessing, model.name, digest, devices=getattr(model, "devices", None))
    restricted.num_classes = len(indices)
    restricted.restricted_from = model_classes.source
    return restricted
