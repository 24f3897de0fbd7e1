"""Results out: the terminal table, ``results.json``, the accuracy-vs-level figure, per-image predictions and
provenance, and :func:`figure_png`, the one way every figure of the package becomes PNG bytes."""

from __future__ import annotations

import io
import json
import math
import os
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from ._checks import is_number
from ._io import atomic_write
from .distortions import DISTORTIONS
from .evaluation import CLEAN, ConditionResult
from .names import DISTORTION_NAMES, format_level

__all__ = [
    "format_table",
    "write_results_json",
    "read_results_json",
    "plot_accuracy_vs_level",
    "accuracy_vs_level_figure",
    "figure_png",
    "write_figure",
    "run_provenance",
    "write_predictions",
    "read_predictions",
]


def _condition_text(result: ConditionResult) -> str:
    """``model distortion level`` for messages: ``lite0 blur 3``, ``lite0 clean 0``."""
    return f"{result.model} {result.distortion} {result.level:g}"


def format_table(results: Sequence[ConditionResult]) -> str:
    """A plain-text table, one row per (model, condition): distortion, level, top-1 %, top-5 %, n,
    and balanced accuracy % when computed. Top-5 shows ``-`` with 5 classes or fewer (100% by
    construction). Below the rows, a line naming the class list when it is not ImageNet-1k."""
    balanced = any(r.balanced_accuracy is not None for r in results)
    head = f"{'model':<20} {'distortion':<10} {'level':>7} {'top-1 %':>8} {'top-5 %':>8} {'n':>6}"
    lines = [head + (f" {'bal. acc %':>10}" if balanced else "")]
    lines.append("-" * len(lines[0]))
    for r in results:
        label = "" if r.distortion == CLEAN else DISTORTIONS[r.distortion].label
        level = "-" if r.distortion == CLEAN else format_level(r.level)
        top5 = f"{100 * r.top5:8.1f}" if r.num_classes > 5 else f"{'-':>8}"
        bal = ""
        if balanced:
            bal = f" {'-':>10}" if r.balanced_accuracy is None else f" {100 * r.balanced_accuracy:10.1f}"
        lines.append(
            f"{r.model:<20} {r.distortion:<10} {level:>7} {100 * r.top1:8.1f} {top5} {r.n:>6}{bal}"
            + (f"  ({label})" if label else "")
        )
    lists = {r.classes.digest: r.classes for r in results if r.classes is not None and not r.classes.is_imagenet}
    for classes in lists.values():
        lines.append(f"classes: {classes.describe()}")
    misses = [r for r in results if r.tolerance_misses]
    for r in misses:
        lines.append(
            f"note: {_condition_text(r)}: {r.tolerance_misses} of {r.n} images missed the "
            "distortion's tolerance (JPEG 2000: closest encode more than 0.5 dB from the target PSNR)"
        )
    return "\n".join(lines)


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


def accuracy_vs_level_figure(results: Sequence[ConditionResult] | Sequence[dict]):
    """The accuracy-vs-level figure as a matplotlib ``Figure`` (object API; see :func:`plot_accuracy_vs_level`).

    One panel per distortion: the paper's five, then any other distortion in ``results`` (one added
    with :func:`robustness.register_distortion`), in registry order. Each model is one line through its
    measured levels, plotted at their values in the distortion's unit, so any grid, evenly spaced or
    not, is drawn to scale (the points are marked); its clean top-1 is a dotted horizontal line.
    ``figure.axes[i]`` is the panel of the ``i``-th distortion, titled with its name.
    """
    from matplotlib.figure import Figure  # the object API: no pyplot, the caller's backend untouched
    from matplotlib.ticker import MaxNLocator

    records = [r.to_record() if isinstance(r, ConditionResult) else r for r in results]
    by_model: dict[str, dict[str, list[tuple[float, float]]]] = defaultdict(lambda: defaultdict(list))
    clean: dict[str, float] = {}
    for r in records:
        if r["distortion"] == CLEAN:
            clean[r["model"]] = r["top1"]
        else:
            by_model[r["model"]][r["distortion"]].append((r["level"], r["top1"]))
    measured = {name for curves in by_model.values() for name in curves}
    names = [d for d in DISTORTIONS if d in DISTORTION_NAMES or d in measured]
    names += sorted(measured - set(names))  # not registered in this process: no unit known
    fig = Figure(figsize=(4 * len(names), 3.6))
    axes = fig.subplots(1, len(names), sharey=True, squeeze=False)[0]
    for ax, name in zip(axes, names):
        spec = DISTORTIONS.get(name)
        for index, model in enumerate(sorted(set(by_model) | set(clean))):
            color = f"C{index}"
            points = sorted(by_model[model][name])
            if points:
                ax.plot([p[0] for p in points], [100 * p[1] for p in points], "o-", color=color, label=model, ms=4)
            if model in clean:
                ax.axhline(100 * clean[model], color=color, ls=":", lw=1)
        ax.set_title(f"{name}")
        ax.set_xlabel(spec.label if spec else "level")
        if spec and spec.integer:  # integer grids (JPEG quality): no ticks at 2.5, 7.5
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("top-1 accuracy (%)")
    legend = {}  # one entry per model across panels (a panel may lack a model)
    for panel in axes:
        for handle, label in zip(*panel.get_legend_handles_labels()):
            legend.setdefault(label, handle)
    if legend:
        axes[-1].legend(list(legend.values()), list(legend), loc="lower left", fontsize=8)
    fig.tight_layout()
    return fig


def plot_accuracy_vs_level(results: Sequence[ConditionResult] | Sequence[dict], path: str | os.PathLike) -> None:
    """Top-1 accuracy (%) against level, one panel per distortion (like the paper's Fig. 2), as PNG.

    The figure is :func:`accuracy_vs_level_figure`'s: each model one line through its measured levels
    (any grid, drawn to scale), its clean top-1 dotted. Written atomically.
    """
    fig = accuracy_vs_level_figure(results)
    write_figure(fig, path, dpi=110)


def figure_png(fig, *, dpi: int) -> bytes:
    """A matplotlib figure as PNG bytes, at ``dpi`` dots per inch (the size in pixels is the figure's
    size in inches times ``dpi``). The project's one way to render a figure: the report's figures, the
    HTML report's embedded curves and the activation plots all come through here.

    ``fig`` is a :class:`matplotlib.figure.Figure` made with the object API (no pyplot): there is no
    global figure to close and the caller's backend is untouched.
    """
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def write_figure(fig, path: str | os.PathLike, *, dpi: int) -> None:
    """Write :func:`figure_png` to ``path`` atomically (:func:`robustness._io.atomic_write`: the
    umask's mode, like every other output file)."""
    atomic_write(path, figure_png(fig, dpi=dpi))


# ------------------------------------------------------------------ per-image predictions and provenance

#: Version of the ``predictions.npz`` layout; bumped on incompatible changes.
PREDICTIONS_FORMAT = 1


def run_provenance(
    model, dataset, *, seed: int, command: Sequence[str] | None = None, thresholds: str | os.PathLike | None = None
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
    return {
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
            raise ValueError(f"result {_condition_text(r)} has no per-image predictions")
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
