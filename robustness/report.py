"""Results shown: the terminal table, the accuracy-vs-level figure, and :func:`figure_png`, the one way
every figure of the package becomes PNG bytes. A run folder's files (``results.json``, per-image
predictions, provenance) are written and read by :mod:`robustness.runs`."""

from __future__ import annotations

import io
import os
from collections import defaultdict
from collections.abc import Sequence

from ._io import atomic_write
from .distortions import DISTORTIONS
from .evaluation import CLEAN, ConditionResult
from .names import DISTORTION_NAMES, format_level

__all__ = [
    "format_table",
    "plot_accuracy_vs_level",
    "accuracy_vs_level_figure",
    "figure_png",
    "write_figure",
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
