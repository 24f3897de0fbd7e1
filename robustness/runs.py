"""A run folder's files: ``results.json`` (one record per condition), ``predictions.npz`` (per-image
top-5 predictions with the labels) and the provenance stored with them (model, weights, preprocessing,
dataset, class list, seed, versions, command), written atomically and read back with checks that name
the file and the record. :mod:`robustness.report` shows results; :mod:`robustness.html_report` reads
run folders through this module."""

from __future__ import annotations

import io
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ._checks import is_number
from ._io import atomic_write

if TYPE_CHECKING:
    from .evaluation import ConditionResult

__all__ = [
    "PREDICTIONS_FORMAT",
    "write_results_json",
    "read_results_json",
    "run_provenance",
    "write_predictions",
    "read_predictions",
]


def write_results_json(results: Sequence[ConditionResult], path: str | os.PathLike) -> None:
    """Write the records (model, distortion, level, top1, top5, n, tolerance_misses, balanced_accuracy,
    num_classes; :meth:`ConditionResult.to_record`) as a JSON list, atomically."""
    records = [r.to_record() for r in results]
    atomic_write(path, (json.dumps(records, indent=2) + "\n").encode())


def read_results_json(path: str | os.PathLike) -> list[dict]:
    """Read a ``results.json`` written by :func:`write_results_json`.

    ``top5`` may be ``null`` (5 classes or fewer); ``balanced_accuracy`` and ``num_classes`` are
    optional (absent in results written before class lists existed, which are ImageNet-1k's).

    Raises:
        ValueError: the file is not a JSON list of records with the required keys (naming the file).
    """
    try:
        records = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: cannot read results ({error})") from None
    required = {"model", "distortion", "level", "top1", "top5", "n"}
    if not isinstance(records, list) or not all(isinstance(r, dict) and required <= set(r) for r in records):
        raise ValueError(f"{path}: expected a JSON list of records with keys {sorted(required)}")
    for index, record in enumerate(records):
        where = f"{path}: record {index} ({record.get('distortion')!r}, level {record.get('level')!r})"
        n = record["n"]
        if not is_number(n, integer=True) or n < 1:
            raise ValueError(f"{where}: n must be an integer >= 1, got {n!r}")
        for key in ("top1", "top5", "balanced_accuracy"):
            value = record.get(key)
            if value is None and key != "top1":
                continue
            if not is_number(value) or not 0.0 <= value <= 1.0:
                raise ValueError(f"{where}: {key} must be a fraction in [0, 1], got {value!r}")
        level = record["level"]
        if not is_number(level) or not math.isfinite(level):
            raise ValueError(f"{where}: level must be a finite number, got {level!r}")
        misses = record.get("tolerance_misses", 0)  # absent in results written before it existed
        if not is_number(misses, integer=True) or not 0 <= misses <= n:
            raise ValueError(f"{where}: tolerance_misses must be an integer in [0, n={n}], got {misses!r}")
    return records


# ------------------------------------------------------------------ per-image predictions and provenance

#: Version of the ``predictions.npz`` layout; bumped on incompatible changes.
PREDICTIONS_FORMAT = 1


def run_provenance(
    model,
    dataset,
    *,
    seed: int,
    command: Sequence[str] | None = None,
    thresholds: str | os.PathLike | None = None,
    device: dict | None = None,
    pipeline: str | None = None,
) -> dict:
    """What a run was: model name, weights digest, preprocessing, dataset root and image count, seed,
    package versions, UTC date, the command line and the class list (``classes``:
    :meth:`robustness.labels.ClassList.to_record`: count, digest, source, and for lists other than
    ImageNet-1k the ids and names), as a JSON-ready dict.

    Args:
        model: the :class:`robustness.models.Classifier` that was evaluated.
        dataset: the :class:`robustness.datasets.ImageDataset` it was evaluated on.
        seed: the base noise seed.
        command: the command line (default ``sys.argv``).
        thresholds: the thresholds file used, if any.
        device: what the inference device was (:func:`robustness.cache.device_identity` under the
            run's :func:`robustness.evaluation.inference_settings`, plus the model's input ``dtype``;
            issue 12), stored as ``device`` when given.
        pipeline: the pipeline the results came from (:attr:`robustness.evaluation.ConditionResult.pipeline`);
            ``"device"`` is stored as ``pipeline`` (its numbers differ from the reference path within
            the tolerance of docs/caching.md); ``None`` or ``"reference"`` add nothing, so a
            reference run's provenance is as before.
    """
    import datetime as _dt
    import platform
    import sys

    versions = {"python": platform.python_version()}
    for package in ("robustness", "torch", "torchvision", "numpy", "scipy", "PIL", "matplotlib"):
        try:
            module = __import__(package)
            versions[package] = str(getattr(module, "__version__", "unknown"))
        except ImportError:  # pragma: no cover - all are dependencies
            versions[package] = "missing"
    preprocessing = getattr(model, "preprocessing", None)
    record = {
        "model": model.name,
        "weights_digest": model.weights_digest,
        "preprocessing": preprocessing.to_dict() if hasattr(preprocessing, "to_dict") else None,
        "dataset_root": str(dataset.root),
        "images": len(dataset),
        "seed": int(seed),
        "versions": versions,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": list(sys.argv if command is None else command),
        "thresholds": None if thresholds is None else str(thresholds),
        "classes": dataset.classes.to_record() if hasattr(dataset, "classes") else None,
    }
    if device is not None:
        record["device"] = dict(device)
    if pipeline not in (None, "reference"):
        record["pipeline"] = str(pipeline)
    return record


def write_predictions(
    results: Sequence[ConditionResult], path: str | os.PathLike, provenance: dict | None = None
) -> None:
    """Write every image's top-5 predictions per condition to ``path`` (``.npz``), atomically.

    Arrays in the file:
        ``image_ids``: str ``(n,)``; ``labels``: int16 ``(n,)`` global class indices;
        ``distortion``: str ``(C,)`` and ``level``: float64 ``(C,)``, the conditions (``"clean"``, 0 first);
        ``predictions``: int16 ``(C, n, 5)`` top-5 class indices, best first;
        ``meta``: a JSON string with ``format``, ``model`` and the ``provenance`` dict.

    All results must be of one model and the same images.

    Raises:
        ValueError: mixed models, differing image lists, or results without per-image predictions.
    """
    import numpy as np

    results = list(results)
    if not results:
        raise ValueError("no results to write")
    first = results[0]
    for r in results:
        if r.predictions is None or r.labels is None:
            raise ValueError(f"result {r.model} {r.distortion} {r.level:g} has no per-image predictions")
        if r.model != first.model or list(r.image_ids) != list(first.image_ids):
            raise ValueError("write_predictions needs results of one model on one image list")
    meta = {"format": PREDICTIONS_FORMAT, "model": first.model, "provenance": provenance or {}}
    buffer = io.BytesIO()
    np.savez_compressed(
        buffer,
        image_ids=np.asarray(list(first.image_ids), dtype=str),
        labels=np.asarray(first.labels, dtype=np.int16),
        distortion=np.asarray([r.distortion for r in results], dtype=str),
        level=np.asarray([float(r.level) for r in results], dtype=np.float64),
        predictions=np.stack([np.asarray(r.predictions, dtype=np.int16) for r in results]),
        meta=np.asarray(json.dumps(meta)),
    )
    atomic_write(path, buffer.getvalue())


def read_predictions(path: str | os.PathLike) -> dict:
    """Read a file written by :func:`write_predictions`.

    Returns:
        a dict with ``image_ids`` (list of str, n), ``labels`` (int64 ``(n,)``), ``conditions`` (list of
        ``(distortion, level)``, C), ``predictions`` (int64 ``(C, n, 5)``), ``model`` (str) and ``provenance`` (dict).

    Raises:
        ValueError: the file is missing, not an ``.npz`` of this layout, or inconsistent (naming the file).
    """
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in ("image_ids", "labels", "distortion", "level", "predictions", "meta")}
    except (OSError, ValueError, KeyError, EOFError) as error:
        raise ValueError(f"{path}: cannot read predictions ({error})") from None
    try:
        meta = json.loads(str(arrays["meta"]))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: corrupt metadata ({error})") from None
    predictions = arrays["predictions"].astype(np.int64)
    n, c = len(arrays["image_ids"]), len(arrays["distortion"])
    if predictions.shape != (c, n, 5) or arrays["labels"].shape != (n,) or arrays["level"].shape != (c,):
        raise ValueError(f"{path}: inconsistent shapes: predictions {predictions.shape}, {n} images, {c} conditions")
    return {
        "image_ids": [str(s) for s in arrays["image_ids"]],
        "labels": arrays["labels"].astype(np.int64),
        "conditions": [(str(d), float(v)) for d, v in zip(arrays["distortion"], arrays["level"])],
        "predictions": predictions,
        "model": str(meta.get("model", "")),
        "provenance": dict(meta.get("provenance") or {}),
    }
