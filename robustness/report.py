"""Results out: the terminal table, ``results.json`` and the accuracy-vs-level figure."""

from __future__ import annotations

import json
import os
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Sequence

from .distortions import DISTORTIONS
from .evaluation import CLEAN, ConditionResult

__all__ = ["format_table", "write_results_json", "read_results_json", "plot_accuracy_vs_level", "atomic_write"]


def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: a temporary file in the same folder, fsync, rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def format_table(results: Sequence[ConditionResult]) -> str:
    """A plain-text table, one row per (model, condition): distortion, level, top-1 %, top-5 %, n."""
    lines = [f"{'model':<20} {'distortion':<10} {'level':>7} {'top-1 %':>8} {'top-5 %':>8} {'n':>6}"]
    lines.append("-" * len(lines[0]))
    for r in results:
        unit = "" if r.distortion == CLEAN else DISTORTIONS[r.distortion].unit
        level = "-" if r.distortion == CLEAN else f"{r.level:g}"
        lines.append(f"{r.model:<20} {r.distortion:<10} {level:>7} {100 * r.top1:8.1f} {100 * r.top5:8.1f} {r.n:>6}"
                     + (f"  ({DISTORTIONS[r.distortion].parameter}, {unit})" if unit else ""))
    return "\n".join(lines)


def write_results_json(results: Sequence[ConditionResult], path: str | os.PathLike) -> None:
    """Write the records (model, distortion, level, top1, top5, n) as a JSON list, atomically."""
    records = [r.to_record() for r in results]
    atomic_write(path, (json.dumps(records, indent=2) + "\n").encode())


def read_results_json(path: str | os.PathLike) -> list[dict]:
    """Read a ``results.json`` written by :func:`write_results_json`.

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
    return records


def plot_accuracy_vs_level(results: Sequence[ConditionResult] | Sequence[dict], path: str | os.PathLike) -> None:
    """Five panels (one per distortion) of top-1 accuracy (%) against level, like the paper's Fig. 2.

    Each model is one line; its clean top-1 is a dotted horizontal line. Written atomically as PNG.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [r.to_record() if isinstance(r, ConditionResult) else r for r in results]
    by_model: dict[str, dict[str, list[tuple[float, float]]]] = defaultdict(lambda: defaultdict(list))
    clean: dict[str, float] = {}
    for r in records:
        if r["distortion"] == CLEAN:
            clean[r["model"]] = r["top1"]
        else:
            by_model[r["model"]][r["distortion"]].append((r["level"], r["top1"]))
    names = list(DISTORTIONS)
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.6), sharey=True)
    for ax, name in zip(axes, names):
        spec = DISTORTIONS[name]
        for index, model in enumerate(sorted(set(by_model) | set(clean))):
            color = f"C{index}"
            points = sorted(by_model[model][name])
            if points:
                ax.plot([p[0] for p in points], [100 * p[1] for p in points], "o-", color=color, label=model, ms=4)
            if model in clean:
                ax.axhline(100 * clean[model], color=color, ls=":", lw=1)
        ax.set_title(f"{name}")
        ax.set_xlabel(f"{spec.parameter} ({spec.unit})")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("top-1 accuracy (%)")
    axes[-1].legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=110)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)
