"""``robustness report``: one self-contained HTML page per run (or several runs on the same axes).

Sections, in page order (each a ``<section>`` with that ``id``). The page writes its navigation bar
and its body from one list, :data:`SECTIONS` (id, heading, builder); add or reorder a section there
(a test checks that this list and ``docs/report.md`` follow it):

``summary``      one number per model and distortion: relative AUC and corruption error (formulas below);
``curves``       top-1 and top-5 accuracy against level, one panel per distortion, every model on the
                 same axes, 95% Wilson intervals as bands (the paper's Fig. 2);
``examples``     one image per distortion at every level (the paper's Fig. 1), with each model's top-1
                 label, marked right or wrong;
``classes``      per distortion, the classes that lose most and those that hold best, with counts;
``thresholds``   pass/fail and margin per level against a thresholds file, when one is given;
``provenance``   model, weights digest, preprocessing, dataset, image count, seed, versions, date.

Everything is embedded (PNG figures and JPEG thumbnails as ``data:`` URIs, inline CSS, no script), so
the file opens offline and can be attached to a release.

Summary numbers, computed per (model, distortion) over the levels that *every* model in the report
was measured at (so the numbers compare across models even when the runs used different grids):

* **relative AUC** (rAUC): the area under ``top1(level) / top1(clean)`` against the level (trapezoid
  rule, levels in the distortion's unit) divided by the level range, i.e. the mean share of clean
  accuracy kept over the range. 1.0 = nothing lost; with a single level it is that level's ratio.
* **corruption error** (CE), after ImageNet-C (Hendrycks & Dietterich, ICLR 2019, Sec. 3):
  ``CE = sum_s E_s(model) / sum_s E_s(baseline)`` with ``E_s = 1 - top1`` at level ``s``; the
  baseline (``--baseline``, default the first model) scores 1.0, lower is better. **Relative CE**
  subtracts each model's clean error first: ``sum_s (E_s - E_clean) / sum_s (E_s^base - E_clean^base)``
  (finite also when that denominator is negative; n/a only where it is 0, with the reason). ``mCE``
  (relative mCE) is the mean CE (relative CE) over the distortions where every model's value is
  defined; the page names them and any left out.

A distortion, level or clean result that not every run measured is left out of these numbers, and
the page says so (:func:`left_out_of_comparison`); the curves still show it.
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ._io import atomic_write
from .distortions import DISTORTIONS, format_level
from .evaluation import CLEAN, ConditionResult
from .report import figure_png
from .runs import read_predictions, read_results_json
from .stats import wilson_interval

__all__ = [
    "ReportError",
    "RunData",
    "load_run",
    "find_runs",
    "relative_auc",
    "corruption_error",
    "relative_corruption_error",
    "corruption_errors",
    "mean_corruption_errors",
    "left_out_of_comparison",
    "summary_table",
    "class_lists",
    "class_changes",
    "threshold_verdicts",
    "build_report",
    "write_report",
    "Section",
    "SECTIONS",
]

RESULTS_FILE = "results.json"
PREDICTIONS_FILE = "predictions.npz"
PROVENANCE_FILE = "provenance.json"


class ReportError(ValueError):
    """A run folder or file cannot be used for a report; the message names it."""


@dataclass
class RunData:
    """One run folder: ``records`` from results.json, plus predictions and provenance when present.

    Attributes:
        folder: the run folder.
        label: how the report names the run (the model name; ``model (folder)`` when two runs share a model).
        model: model name from results.json.
        records: results.json records (model, distortion, level, top1, top5, n); accuracies are fractions.
        predictions: :func:`robustness.runs.read_predictions` output, or ``None`` when the run has none.
        provenance: provenance.json (or the copy inside predictions.npz), ``{}`` when absent.
    """

    folder: Path
    label: str
    model: str
    records: list[dict]
    predictions: dict | None = None
    provenance: dict = field(default_factory=dict)

    def clean(self) -> dict | None:
        return next((r for r in self.records if r["distortion"] == CLEAN), None)

    def curve(self, distortion: str) -> list[dict]:
        """Records of ``distortion`` sorted by level."""
        return sorted((r for r in self.records if r["distortion"] == distortion), key=lambda r: float(r["level"]))

    def distortions(self) -> list[str]:
        present = {r["distortion"] for r in self.records}
        return [d for d in DISTORTIONS if d in present]


def load_run(folder: str | os.PathLike) -> RunData:
    """Read one run folder (``results.json`` required; ``predictions.npz`` and ``provenance.json`` optional).

    Raises:
        ReportError: missing or corrupt files, naming the file.
    """
    import json

    folder = Path(folder)
    results_path = folder / RESULTS_FILE
    if not results_path.is_file():
        raise ReportError(f"{results_path}: no such file (run 'robustness run --output {folder}' first)")
    try:
        records = read_results_json(results_path)
    except ValueError as error:
        raise ReportError(str(error)) from None
    if not records:
        raise ReportError(f"{results_path}: holds no results")
    models = sorted({str(r["model"]) for r in records})
    if len(models) != 1:
        raise ReportError(f"{results_path}: expected one model per run folder, found {models}")
    for r in records:
        if r["distortion"] != CLEAN and r["distortion"] not in DISTORTIONS:
            raise ReportError(
                f"{results_path}: unknown distortion {r['distortion']!r} (known: {', '.join(DISTORTIONS)}); "
                "a distortion of your own must be registered (robustness.register_distortion) before the report"
            )
        try:
            r["level"], r["top1"], r["top5"], r["n"] = (
                float(r["level"]),
                float(r["top1"]),
                math.nan if r["top5"] is None else float(r["top5"]),  # null: 5 classes or fewer
                int(r["n"]),
            )
        except (TypeError, ValueError):
            raise ReportError(f"{results_path}: non-numeric level/top1/top5/n in {r!r}") from None
    predictions = None
    if (folder / PREDICTIONS_FILE).exists():
        try:
            predictions = read_predictions(folder / PREDICTIONS_FILE)
        except ValueError as error:
            raise ReportError(str(error)) from None
    provenance = {}
    if (folder / PROVENANCE_FILE).exists():
        try:
            provenance = json.loads((folder / PROVENANCE_FILE).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as error:
            raise ReportError(f"{folder / PROVENANCE_FILE}: cannot read provenance ({error})") from None
        if not isinstance(provenance, dict):
            raise ReportError(f"{folder / PROVENANCE_FILE}: expected a JSON object")
    elif predictions is not None:
        provenance = predictions["provenance"]
    return RunData(folder, models[0], models[0], records, predictions, provenance)


def find_runs(paths: Iterable[str | os.PathLike]) -> list[RunData]:
    """Expand each path into run folders: a folder with ``results.json`` is a run; otherwise its
    immediate sub-folders that hold ``results.json`` are (sorted by name).

    Raises:
        ReportError: a path that does not exist, or holds no run.
    """
    runs: list[RunData] = []
    for path in paths:
        path = Path(path)
        if not path.exists():
            raise ReportError(f"{path}: no such results folder")
        if path.is_file():
            if path.name == RESULTS_FILE:
                path = path.parent
            else:
                raise ReportError(f"{path}: expected a run folder holding {RESULTS_FILE}")
        if (path / RESULTS_FILE).exists():
            runs.append(load_run(path))
            continue
        children = sorted(p for p in path.iterdir() if (p / RESULTS_FILE).is_file())
        if not children:
            raise ReportError(f"{path / RESULTS_FILE}: no such file, and no sub-folder holds one")
        runs.extend(load_run(child) for child in children)
    counts: dict[str, int] = {}
    for run in runs:
        counts[run.model] = counts.get(run.model, 0) + 1
    for run in runs:
        if counts[run.model] > 1:
            run.label = f"{run.model} ({run.folder.name})"
    return runs


# ------------------------------------------------------------------------------------------ numbers


def _common_levels(runs: Sequence[RunData], distortion: str) -> list[float]:
    """Levels of ``distortion`` that every run measured (``[]`` when a run lacks the distortion)."""
    sets = [{r["level"] for r in run.curve(distortion)} for run in runs]
    if not sets or not all(sets):
        return []
    return sorted(set.intersection(*sets))


def left_out_of_comparison(runs: Sequence[RunData]) -> list[str]:
    """What the summary numbers (rAUC, CE, mCE) leave out because not every run measured it.

    Returns:
        one sentence per gap, e.g. ``"jpeg: measured only by model_a"`` or ``"blur level 9: measured
        only by model_b"``; ``[]`` for a single run or runs with the same conditions.
    """
    if len(runs) < 2:
        return []
    notes = []
    for d in DISTORTIONS:
        having = [run.label for run in runs if run.curve(d)]
        if not having:
            continue
        if len(having) < len(runs):
            notes.append(f"{d}: measured only by {', '.join(having)}")
            continue
        common = set(_common_levels(runs, d))
        for level in sorted({r["level"] for run in runs for r in run.curve(d)} - common):
            by = [run.label for run in runs if any(r["level"] == level for r in run.curve(d))]
            notes.append(f"{d} level {level:g}: measured only by {', '.join(by)}")
    no_clean = [run.label for run in runs if run.clean() is None]
    if no_clean:
        notes.append(f"clean: not measured by {', '.join(no_clean)} (no rAUC or relative CE for it)")
    return notes


def relative_auc(levels: Sequence[float], top1: Sequence[float], clean_top1: float) -> float:
    """Mean share of clean top-1 kept over the level range (see the module docstring).

    Args:
        levels: levels in the distortion's unit, any order (at least one).
        top1: top-1 accuracy (fraction) at each level.
        clean_top1: clean top-1 accuracy (fraction).

    Returns:
        ``trapz(top1 / clean_top1, levels) / (max(levels) - min(levels))``; the single ratio for one
        level; ``nan`` when ``clean_top1`` is 0 or no levels are given.
    """
    if not len(levels) or clean_top1 <= 0:
        return math.nan
    order = np.argsort(np.asarray(levels, dtype=float))
    x = np.asarray(levels, dtype=float)[order]
    y = np.asarray(top1, dtype=float)[order] / clean_top1
    if len(x) == 1 or x[-1] == x[0]:
        return float(y.mean())
    area = float(np.sum((y[1:] + y[:-1]) * np.diff(x)) / 2.0)
    return area / float(x[-1] - x[0])


#: A summed error difference this close to 0 counts as 0: accuracies are k/n fractions, so a true
#: non-zero sum is at least 1/n (>= 1e-6 for any realistic n); float rounding stays far below 1e-9.
ZERO_DENOMINATOR = 1e-9


def corruption_error(errors: Sequence[float], baseline_errors: Sequence[float]) -> float:
    """ImageNet-C corruption error (Hendrycks & Dietterich, ICLR 2019, Sec. 3):
    ``CE = sum_s E_s / sum_s E_s^base``.

    Args:
        errors, baseline_errors: top-1 error rates ``1 - top1`` (fractions) of the model and of the
            baseline at the same levels ``s``, same order.

    Returns:
        the ratio (1.0 for the baseline itself, lower is better); ``nan`` only when the baseline's
        summed error is 0 (undefined: nothing to divide by).
    """
    e, base = np.asarray(errors, dtype=float), np.asarray(baseline_errors, dtype=float)
    denominator = float(base.sum())
    return math.nan if abs(denominator) <= ZERO_DENOMINATOR else float(e.sum()) / denominator


def relative_corruption_error(
    errors: Sequence[float], clean_error: float, baseline_errors: Sequence[float], baseline_clean_error: float
) -> float:
    """ImageNet-C relative corruption error (Hendrycks & Dietterich, ICLR 2019, Sec. 3):
    ``sum_s (E_s - E_clean) / sum_s (E_s^base - E_clean^base)``.

    Args:
        errors, baseline_errors: top-1 error rates (fractions) of the model and the baseline at the same levels.
        clean_error, baseline_clean_error: their clean top-1 error rates.

    Returns:
        the ratio, finite whenever the denominator is non-zero, **also when it is negative** (the
        baseline more accurate under the distortion than on clean images, e.g. a mild contrast
        change); ``nan`` only when the denominator is 0 (the baseline's errors sum to its clean
        error: undefined) or a clean error is ``nan`` (not measured).
    """
    e, base = np.asarray(errors, dtype=float), np.asarray(baseline_errors, dtype=float)
    if math.isnan(clean_error) or math.isnan(baseline_clean_error):
        return math.nan
    denominator = float((base - baseline_clean_error).sum())
    if abs(denominator) <= ZERO_DENOMINATOR:
        return math.nan
    return float((e - clean_error).sum()) / denominator


def _baseline_run(runs: Sequence[RunData], baseline: str | None) -> RunData:
    base = runs[0] if baseline is None else next((r for r in runs if baseline in (r.label, r.model)), None)
    if base is None:
        raise ReportError(
            f"baseline model {baseline!r} is not in the report; models: {', '.join(r.label for r in runs)}"
        )
    return base


def _ce_table(runs: Sequence[RunData], baseline: str | None) -> dict[str, dict[str, tuple[float, float, str, str]]]:
    """``{label: {distortion: (CE, relative CE, why CE is n/a, why relative CE is n/a)}}`` (reasons ``""`` when defined)."""
    if not runs:
        return {}
    base = _baseline_run(runs, baseline)
    out: dict[str, dict[str, tuple[float, float, str, str]]] = {run.label: {} for run in runs}
    for d in DISTORTIONS:
        levels = _common_levels(runs, d)
        if not levels:
            continue  # not measured by every run: left out (left_out_of_comparison says so)

        def errors(run: RunData, d: str = d, levels: list = levels) -> tuple[np.ndarray, float]:
            by_level = {r["level"]: r for r in run.curve(d)}
            clean = run.clean()
            return (
                np.array([1.0 - by_level[v]["top1"] for v in levels]),
                math.nan if clean is None else 1.0 - clean["top1"],
            )

        base_e, base_clean = errors(base)
        for run in runs:
            e, clean = errors(run)
            ce = corruption_error(e, base_e)
            rel = relative_corruption_error(e, clean, base_e, base_clean)
            why_ce = (
                ""
                if not math.isnan(ce)
                else f"undefined: the baseline {base.label} makes no top-1 error at these levels"
            )
            if not math.isnan(rel):
                why_rel = ""
            elif math.isnan(clean) or math.isnan(base_clean):
                who = run.label if math.isnan(clean) else base.label
                why_rel = f"undefined: no clean result for {who}"
            else:
                why_rel = (
                    f"undefined: the baseline {base.label}'s errors at these levels sum to its clean error "
                    "(denominator 0)"
                )
            out[run.label][d] = (ce, rel, why_ce, why_rel)
    return out


def corruption_errors(
    runs: Sequence[RunData], baseline: str | None = None
) -> dict[str, dict[str, tuple[float, float]]]:
    """ImageNet-C corruption error and relative corruption error per (run label, distortion).

    Computed with :func:`corruption_error` and :func:`relative_corruption_error` over the levels every
    run measured; a distortion that some run lacks is left out (see :func:`left_out_of_comparison`).
    Returns ``{label: {distortion: (CE, relative CE)}}``, ``nan`` only where the formula is undefined
    (zero denominator, or no clean result for relative CE). ``baseline`` is a run label or model name
    (default: the first run).

    Raises:
        ReportError: unknown baseline.
    """
    return {label: {d: values[:2] for d, values in by_d.items()} for label, by_d in _ce_table(runs, baseline).items()}


def mean_corruption_errors(ces: dict[str, dict[str, tuple[float, float]]]) -> dict[str, dict]:
    """mCE and relative mCE: the mean of CE (relative CE) over the distortions where **every** model's
    value is defined, so all models are averaged over the same distortions.

    Args:
        ces: :func:`corruption_errors` output.

    Returns:
        ``{"mce": {...}, "relative_mce": {...}}``, each ``{"values": {label: mean}, "distortions":
        [averaged, in registry order], "left_out": [distortions with an undefined value for some model]}``;
        ``values`` is empty when no distortion qualifies.
    """
    labels = list(ces)
    distortions = [d for d in DISTORTIONS if labels and all(d in ces[label] for label in labels)]
    out = {}
    for key, index in (("mce", 0), ("relative_mce", 1)):
        used = [d for d in distortions if all(not math.isnan(ces[label][d][index]) for label in labels)]
        values = {label: float(np.mean([ces[label][d][index] for d in used])) for label in labels} if used else {}
        out[key] = {"values": values, "distortions": used, "left_out": [d for d in distortions if d not in used]}
    return out


def summary_table(runs: Sequence[RunData], baseline: str | None = None) -> list[dict]:
    """One row per (run, distortion measured by every run): ``label, distortion, levels, clean_top1,
    rauc_top1, rauc_top5, ce, rel_ce, ce_note, rel_ce_note`` (the notes say why a value is n/a)."""
    table = _ce_table(runs, baseline)
    rows = []
    for run in runs:
        clean = run.clean()
        for d in run.distortions():
            levels = _common_levels(runs, d)
            if not levels:
                continue  # some run lacks this distortion: left_out_of_comparison() names it
            curve = [r for r in run.curve(d) if r["level"] in levels]
            row = {
                "label": run.label,
                "distortion": d,
                "levels": levels,
                "clean_top1": math.nan if clean is None else clean["top1"],
                "rauc_top1": math.nan,
                "rauc_top5": math.nan,
            }
            if clean is not None and curve:
                row["rauc_top1"] = relative_auc([r["level"] for r in curve], [r["top1"] for r in curve], clean["top1"])
                row["rauc_top5"] = relative_auc([r["level"] for r in curve], [r["top5"] for r in curve], clean["top5"])
            row["ce"], row["rel_ce"], row["ce_note"], row["rel_ce_note"] = table[run.label][d]
            rows.append(row)
    return rows


def class_changes(labels: np.ndarray, clean_top1: np.ndarray, distorted_top1: np.ndarray) -> list[dict]:
    """Per-class accuracy clean vs distorted (all levels pooled).

    Args:
        labels: int ``(n,)`` true class indices.
        clean_top1: int ``(n,)`` clean top-1 predictions.
        distorted_top1: int ``(K, n)`` top-1 predictions at K levels.

    Returns:
        one dict per class present: ``cls``, ``n`` (images), ``clean_correct`` (of n),
        ``distorted_correct`` (of ``distorted_total = K * n``), ``clean_acc``, ``distorted_acc``
        and ``drop = clean_acc - distorted_acc`` (fractions), sorted by ``drop`` descending.
    """
    labels = np.asarray(labels)
    distorted_top1 = np.atleast_2d(distorted_top1)
    rows = []
    for cls in np.unique(labels):
        mask = labels == cls
        n = int(mask.sum())
        clean_correct = int((clean_top1[mask] == cls).sum())
        distorted_correct = int((distorted_top1[:, mask] == cls).sum())
        total = int(distorted_top1.shape[0] * n)
        rows.append(
            {
                "cls": int(cls),
                "n": n,
                "clean_correct": clean_correct,
                "distorted_correct": distorted_correct,
                "distorted_total": total,
                "clean_acc": clean_correct / n,
                "distorted_acc": distorted_correct / total,
                "drop": clean_correct / n - distorted_correct / total,
            }
        )
    rows.sort(key=lambda r: (-r["drop"], -r["n"], r["cls"]))
    return rows


def class_lists(rows: Sequence[dict], top: int = 5) -> tuple[list[dict], list[dict]]:
    """The report's two class lists from :func:`class_changes` rows; no class is in both.

    Returns:
        ``(loses_most, holds_best)``: up to ``top`` classes with the largest positive ``drop`` (largest
        first), and up to ``top`` of the *other* classes that the model gets right on clean images at
        least once, smallest ``drop`` first (ties: higher distorted accuracy, more images).
    """
    losing = sorted((r for r in rows if r["drop"] > 0), key=lambda r: (-r["drop"], -r["n"], r["cls"]))[:top]
    shown = {r["cls"] for r in losing}
    holding = sorted(
        (r for r in rows if r["clean_correct"] > 0 and r["cls"] not in shown),
        key=lambda r: (r["drop"], -r["distorted_acc"], -r["n"], r["cls"]),
    )[:top]
    return losing, holding


def _same_condition(distortion: str, level: float, other_distortion: str, other_level: float) -> bool:
    """Whether two (distortion, level) pairs name one condition: clean at any level; levels equal
    up to float rounding (:func:`math.isclose`), as they come from JSON, NPZ and YAML."""
    return distortion == other_distortion and (distortion == CLEAN or math.isclose(level, other_level))


def _condition_index(conditions: Sequence[tuple[str, float]], distortion: str, level: float = 0.0) -> int | None:
    """Index of ``(distortion, level)`` in a predictions file's ``conditions`` (:func:`_same_condition`), or ``None``."""
    return next((k for k, (d, v) in enumerate(conditions) if _same_condition(d, v, distortion, level)), None)


def threshold_verdicts(runs: Sequence[RunData], thresholds_path: str | os.PathLike) -> list[dict]:
    """Pass/fail per (run, threshold entry, bar) using :func:`robustness.gate.judge`.

    Returns dicts with ``label``, ``condition`` (id), ``metric`` (the bar's key: ``top1`` ... ``top5``,
    ``balanced_accuracy``, ``top1_of_clean``, ...), ``measured`` (the value of the bar's metric: top-2 to
    top-4 are computed from the run's predictions.npz), ``threshold`` (the accuracy required; for a relative bar
    ``bar x clean``), ``margin = measured - threshold`` (fractions), ``n``, ``passed`` (bool, or
    ``None`` when the run did not measure that condition) and ``text`` (a one-line explanation).

    Raises:
        ReportError: the thresholds file is missing or invalid (naming it).
    """
    from .gate import judge
    from .thresholds import load_thresholds

    try:
        thresholds = load_thresholds(thresholds_path, allow_unregistered=True)
    except (ValueError, OSError) as error:
        raise ReportError(f"{error}") from None
    verdicts = []
    for run in runs:
        classes = _run_classes(run)
        clean_record = run.clean()
        clean = None if clean_record is None else _record_result(run, clean_record, classes)
        for threshold in thresholds.for_model(run.model):
            condition = threshold.condition
            record = next(
                (
                    r
                    for r in run.records
                    if _same_condition(r["distortion"], r["level"], condition.distortion, float(condition.level))
                ),
                None,
            )
            bars = threshold.bars()
            verdict = None
            why_not = "not measured by this run"
            if record is not None:
                result = _record_result(run, record, classes)
                try:
                    verdict = judge(threshold, result, clean=clean)
                except ValueError as error:  # a relative bar without a clean result; top-k without predictions
                    verdict, why_not = None, str(error)
            checks = {c.key: c for c in verdict.checks} if verdict is not None else {}
            for key, bar in bars.items():
                row = {
                    "label": run.label,
                    "condition": condition.id,
                    "metric": key,
                    "threshold": bar,
                    "measured": math.nan,
                    "margin": math.nan,
                    "n": 0,
                    "passed": None,
                    "text": f"{run.model} {condition.id}: {why_not}",
                }
                check = checks.get(key)
                if check is not None:
                    row.update(
                        measured=check.measured,
                        threshold=check.required,
                        margin=check.measured - check.required,
                        n=record["n"],
                        passed=check.passed,
                        text=f"{run.model} {condition.id}: {check.describe()}",
                    )
                verdicts.append(row)
    return verdicts


# ------------------------------------------------------------------------------------------ figures


def _png_data_uri(fig) -> str:
    return "data:image/png;base64," + base64.b64encode(figure_png(fig, dpi=90)).decode()


def _jpeg_data_uri(image: np.ndarray, height: int = 120) -> str:
    from PIL import Image

    pil = Image.fromarray(image)
    width = max(1, round(pil.width * height / pil.height))
    pil = pil.resize((width, height), Image.LANCZOS)
    buffer = io.BytesIO()
    pil.save(buffer, format="JPEG", quality=90)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def curves_figure(runs: Sequence[RunData]) -> str:
    """Top-1 (upper row) and top-5 (lower row) accuracy (%) vs level, one column per distortion, every
    run in one colour, 95% Wilson bands; clean accuracy dotted. Returns a PNG ``data:`` URI of
    :func:`curves_matplotlib_figure`."""
    return _png_data_uri(curves_matplotlib_figure(runs))


def curves_matplotlib_figure(runs: Sequence[RunData]):
    """The figure of :func:`curves_figure` as a matplotlib ``Figure`` (object API).

    ``figure.axes`` holds the top-1 row, then the top-5 row, one panel per distortion that some run
    measured (registry order). Each run's curve goes through its measured levels at their values in
    the distortion's unit, so uneven grids (``jpeg`` 50, 75, 90) are drawn to scale, points marked.
    """
    from matplotlib.figure import Figure  # the object API: no pyplot, the caller's backend untouched
    from matplotlib.ticker import MaxNLocator

    names = [d for d in DISTORTIONS if any(d in run.distortions() for run in runs)] or list(DISTORTIONS)
    fig = Figure(figsize=(3.3 * len(names), 5.6))
    axes = fig.subplots(2, len(names), sharey=True, squeeze=False)
    for row, metric in enumerate(("top1", "top5")):
        for col, name in enumerate(names):
            ax = axes[row][col]
            spec = DISTORTIONS[name]
            for index, run in enumerate(runs):
                color = f"C{index}"
                curve = run.curve(name)
                if curve and not any(math.isnan(r[metric]) for r in curve):  # top-5 of <= 5 classes: n/a
                    x = [r["level"] for r in curve]
                    y = [100 * r[metric] for r in curve]
                    bands = [wilson_interval(round(r[metric] * r["n"]), r["n"]) for r in curve]
                    ax.fill_between(
                        x, [100 * b[0] for b in bands], [100 * b[1] for b in bands], color=color, alpha=0.18, lw=0
                    )
                    ax.plot(x, y, "o-", color=color, ms=3.5, lw=1.5, label=run.label)
                clean = run.clean()
                if clean is not None and not math.isnan(clean[metric]):
                    ax.axhline(100 * clean[metric], color=color, ls=":", lw=1)
            if row == 0:
                ax.set_title(name)
            elif (  # measured, but no run has top-5 here (5 classes or fewer): say why the panel is empty
                not ax.get_lines()
                and any(run.curve(name) for run in runs)
                and all(math.isnan(r[metric]) for run in runs for r in run.curve(name))
            ):
                ax.text(0.5, 0.5, "top-5 n/a: 5 classes or fewer", transform=ax.transAxes, ha="center", fontsize=8)
            ax.set_xlabel(spec.label, fontsize=8)
            if spec.integer:  # integer grids (JPEG quality): no ticks at 2.5, 7.5
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_ylim(0, 100)
            ax.grid(alpha=0.3)
            ax.tick_params(labelsize=8)
        axes[row][0].set_ylabel(f"{'top-1' if metric == 'top1' else 'top-5'} accuracy (%)")
    legend = {}  # one entry per model across panels (a panel may lack a model)
    for panel in [a for row in axes for a in row]:
        for handle, label in zip(*panel.get_legend_handles_labels()):
            legend.setdefault(label, handle)
    if legend:
        axes[0][-1].legend(list(legend.values()), list(legend), loc="lower left", fontsize=7)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------------------ HTML

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:1250px;padding:0 18px 40px;color:#222}
h1{margin-bottom:4px} h2{border-bottom:2px solid #ddd;padding-bottom:4px;margin-top:34px}
nav a{margin-right:14px} .muted{color:#666;font-size:90%} .note{background:#f6f6f2;border-left:4px solid #ccc;padding:6px 10px;font-size:90%}
table{border-collapse:collapse;margin:8px 0;font-size:90%} th,td{border:1px solid #ddd;padding:3px 8px;text-align:right}
th{background:#f3f3f3} td.l,th.l{text-align:left}
.pass{color:#0a6b0a;font-weight:600} .fail{color:#b00020;font-weight:600} .na{color:#777}
.strip{display:flex;gap:6px;overflow-x:auto;padding-bottom:6px} figure{margin:0;text-align:center;font-size:78%}
figure img{display:block;height:120px;border:3px solid #ccc} figure.ok img{border-color:#2e7d32} figure.bad img{border-color:#c62828}
.ok-t{color:#2e7d32} .bad-t{color:#c62828} .grid2{display:flex;flex-wrap:wrap;gap:24px} img.curves{max-width:100%}
.tldr{font-size:105%;background:#eef4fb;border:1px solid #cfe0f3;padding:8px 12px}
"""


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def _pct(value: float, digits: int = 1) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.{digits}f}%"


def _num(value: float, digits: int = 3) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _level_text(distortion: str, level: float) -> str:
    if distortion == CLEAN:
        return "clean"
    spec = DISTORTIONS[distortion]
    return f"{spec.parameter} {format_level(level)}" + (
        "" if spec.unit in (spec.parameter, "fraction") else f" {spec.unit}"
    )


@dataclass(frozen=True)
class _Page:
    """What every section builder reads: the runs and :func:`build_report`'s options (see there)."""

    runs: Sequence[RunData]
    rows: list[dict]  # summary_table(runs, baseline)
    thresholds: str | os.PathLike | None
    baseline: str | None
    data: str | os.PathLike | None
    examples: int


def _run_classes(run):
    """The run's class list from its provenance (``None``: ImageNet-1k, or not recorded)."""
    from .labels import ClassList, ClassListError

    record = (getattr(run, "provenance", None) or {}).get("classes") or {}
    if isinstance(record, dict) and isinstance(record.get("ids"), list):
        try:
            names = record.get("names") if isinstance(record.get("names"), list) else record["ids"]
            return ClassList(tuple(record["ids"]), tuple(names), str(record.get("source", "")))
        except ClassListError:
            return None
    return None


def _record_result(run, record: dict, classes) -> ConditionResult:
    """A results.json record as a :class:`ConditionResult` for :func:`robustness.gate.judge`, with the
    run's per-image labels and top-5 predictions for that condition when predictions.npz has them (so
    top-2 to top-4 bars can be judged)."""
    balanced = record.get("balanced_accuracy")
    labels = predictions = None
    preds = run.predictions
    if preds is not None and len(preds["labels"]) == record["n"]:
        k = _condition_index(preds["conditions"], record["distortion"], float(record["level"]))
        if k is not None:
            labels, predictions = preds["labels"], preds["predictions"][k]
    return ConditionResult(
        run.model,
        record["distortion"],
        record["level"],
        record["top1"],
        record["top5"],
        record["n"],
        balanced_accuracy=None if balanced is None else float(balanced),
        classes=classes,
        labels=labels,
        predictions=predictions,
    )


def _class_names(run=None) -> tuple[str, ...]:
    """The class names of ``run``'s dataset (its provenance's class list), else ImageNet-1k's."""
    record = (getattr(run, "provenance", None) or {}).get("classes") or {}
    if isinstance(record, dict) and isinstance(record.get("names"), list):
        return tuple(str(n) for n in record["names"])
    from .datasets import imagenet_class_names

    return imagenet_class_names()


def _section_summary(page: _Page) -> str:
    runs, baseline, rows = page.runs, page.baseline, page.rows
    base = _baseline_run(runs, baseline).label
    lines = []
    worst = sorted((r for r in rows if not math.isnan(r["rauc_top1"])), key=lambda r: r["rauc_top1"])
    if worst:
        w = worst[0]
        lines.append(
            f"<p class='tldr'>Most damaging distortion: <b>{_e(w['distortion'])}</b> for <b>{_e(w['label'])}</b>, "
            f"which keeps on average {_pct(w['rauc_top1'], 0)} of its clean top-1 accuracy "
            f"({_pct(w['clean_top1'])}) over the measured levels.</p>"
        )
    lines.append(
        "<table><tr><th class='l'>model</th><th class='l'>distortion</th><th>levels compared</th><th>clean top-1</th>"
        "<th>rAUC top-1</th><th>rAUC top-5</th><th>CE</th><th>relative CE</th></tr>"
    )
    reasons: dict[str, int] = {}

    def value(number: float, why: str) -> str:
        if not why:
            return _num(number)
        mark = reasons.setdefault(why, len(reasons) + 1)
        return f"<span title='{_e(why)}'>n/a<sup>{mark}</sup></span>"

    for r in rows:
        levels = ", ".join(f"{v:g}" for v in r["levels"])
        lines.append(
            f"<tr><td class='l'>{_e(r['label'])}</td><td class='l'>{_e(r['distortion'])}</td><td>{_e(levels)}</td>"
            f"<td>{_pct(r['clean_top1'])}</td><td>{_num(r['rauc_top1'])}</td><td>{_num(r['rauc_top5'])}</td>"
            f"<td>{value(r['ce'], r['ce_note'])}</td><td>{value(r['rel_ce'], r['rel_ce_note'])}</td></tr>"
        )
    lines.append("</table>")
    for why, mark in reasons.items():
        lines.append(f"<p class='muted'><sup>{mark}</sup> n/a: {_e(why)}.</p>")
    means = mean_corruption_errors(corruption_errors(runs, baseline))
    for key, name in (("mce", "mCE"), ("relative_mce", "relative mCE")):
        m = means[key]
        if not m["values"]:
            continue
        text = (
            f"<p><b>{name}</b> = mean {'relative CE' if key == 'relative_mce' else 'CE'} over "
            f"{len(m['distortions'])} distortion{'s' * (len(m['distortions']) != 1)} "
            f"({_e(', '.join(m['distortions']))}): "
            + "; ".join(f"<b>{_e(k)}</b> {v:.3f}" for k, v in m["values"].items())
        )
        if m["left_out"]:
            text += f". Left out, undefined for some model: {_e(', '.join(m['left_out']))}"
        lines.append(text + ".</p>")
    gaps = left_out_of_comparison(runs)
    if gaps:
        lines.append(
            "<p class='note'><b>Not compared</b> (not measured by every run, so not in rAUC, CE or mCE; the curves "
            "below still show them): " + "; ".join(_e(g) for g in gaps) + ".</p>"
        )
    lines.append(
        "<p class='note'><b>rAUC</b> = area under top-1(level) / top-1(clean) against the level (trapezoid rule), divided "
        "by the level range: the average share of clean accuracy the model keeps over the levels; 1.0 = nothing lost. "
        f"<b>CE</b> (ImageNet-C, Hendrycks &amp; Dietterich 2019) = &Sigma;<sub>levels</sub> error(model) / "
        f"&Sigma;<sub>levels</sub> error(baseline), error = 1 &minus; top-1; the baseline <b>{_e(base)}</b> scores 1.0 and lower is "
        "better. <b>Relative CE</b> = &Sigma;<sub>levels</sub> (error &minus; clean error) of the model / the same sum of the "
        "baseline: negative when one of the two is more accurate under the distortion than on clean images and the other "
        "is not; n/a only where the baseline's sum is 0. All are computed on the levels every model "
        "in this report was measured at, so they compare models even when runs used different level grids.</p>"
    )
    return "\n".join(lines)


def _section_curves(page: _Page) -> str:
    runs = page.runs
    uri = curves_figure(runs)
    parts = [
        "<p>Top-1 (upper row) and top-5 (lower row) accuracy per distortion; one colour per model, shaded: 95% "
        "Wilson interval for the number of images; dotted: the model's clean accuracy. Higher is better.</p>",
        f"<img class='curves' alt='accuracy against level, one panel per distortion' src='{uri}'>",
        "<details><summary>the numbers</summary><table><tr><th class='l'>model</th><th class='l'>distortion</th>"
        "<th>level</th><th>top-1</th><th>95% interval</th><th>top-5</th><th>n</th></tr>",
    ]
    for run in runs:
        for r in [run.clean()] + [x for d in run.distortions() for x in run.curve(d)]:
            if r is None:
                continue
            low, high = wilson_interval(round(r["top1"] * r["n"]), r["n"])
            parts.append(
                f"<tr><td class='l'>{_e(run.label)}</td><td class='l'>{_e(r['distortion'])}</td>"
                f"<td>{_e(_level_text(r['distortion'], r['level']))}</td><td>{_pct(r['top1'])}</td>"
                f"<td>{_pct(low)}&ndash;{_pct(high)}</td><td>{_pct(r['top5'])}</td><td>{r['n']}</td></tr>"
            )
    parts.append("</table></details>")
    return "\n".join(parts)


def _pick_examples(run: RunData, count: int) -> list[int]:
    """Indices of images to show: clean-correct ones first (their fall is the story), dataset order."""
    preds = run.predictions
    clean_k = _condition_index(preds["conditions"], CLEAN)
    n = len(preds["image_ids"])
    if clean_k is None:
        return list(range(min(count, n)))
    correct = preds["predictions"][clean_k, :, 0] == preds["labels"]
    order = [i for i in range(n) if correct[i]] + [i for i in range(n) if not correct[i]]
    return order[:count]


def _section_examples(page: _Page) -> str:
    from .distortions import distort
    from .evaluation import image_seed
    from .images import ImageLoadError, load_image

    runs, data, count = page.runs, page.data, page.examples
    parts = [
        "<p>The same image at every level of each distortion (thumbnails re-encoded as JPEG quality 90 for the page). "
        "Under each: the level and each model's top-1 label, <span class='ok-t'>&#10004; right</span> or "
        "<span class='bad-t'>&#10008; wrong</span> (green / red frame: the first model).</p>",
    ]
    with_preds = [run for run in runs if run.predictions is not None]
    if not with_preds:
        parts.append(
            "<p class='na'>Not available: no run folder holds predictions.npz (written by <code>robustness run</code>).</p>"
        )
        return "\n".join(parts)
    first = with_preds[0]
    names = _class_names(first)
    root = Path(data) if data else Path(first.provenance.get("dataset_root", ""))
    seed = int(first.provenance.get("seed", 0))
    indices = _pick_examples(first, count)
    for d in DISTORTIONS:
        if d not in first.distortions():
            continue
        parts.append(f"<h3>{_e(d)}</h3>")
        for index in indices:
            image_id = first.predictions["image_ids"][index]
            label = int(first.predictions["labels"][index])
            try:
                image = load_image(root / image_id)
            except ImageLoadError as error:
                parts.append(f"<p class='na'>Image not available ({_e(error)}); pass <code>--data DIR</code>.</p>")
                break
            parts.append(
                f"<p class='muted'>{_e(image_id)} &mdash; true class: <b>{_e(names[label])}</b></p><div class='strip'>"
            )
            conditions = [(CLEAN, 0.0)] + [(d, r["level"]) for r in first.curve(d)]
            for distortion, level in conditions:
                shown = (
                    image
                    if distortion == CLEAN
                    else distort(image, d, level, seed=image_seed(seed, image_id, d, level))
                )
                captions, first_ok = [], None
                for run in with_preds:
                    p = run.predictions
                    k = _condition_index(p["conditions"], distortion, level)
                    if k is None or image_id not in p["image_ids"]:
                        continue
                    i = p["image_ids"].index(image_id)
                    top1 = int(p["predictions"][k, i, 0])
                    ok = top1 == label
                    first_ok = ok if first_ok is None else first_ok
                    who = f"{_e(run.label)}: " if len(with_preds) > 1 else ""
                    captions.append(
                        f"<span class='{'ok-t' if ok else 'bad-t'}'>{who}{'&#10004;' if ok else '&#10008;'} {_e(names[top1])}</span>"
                    )
                css = "" if first_ok is None else ("ok" if first_ok else "bad")
                level_text = _e(_level_text(distortion, level))
                parts.append(
                    f"<figure class='{css}'><img alt='{_e(d)} {level_text}' "
                    f"src='{_jpeg_data_uri(shown)}'><figcaption><b>{level_text}</b><br>"
                    + "<br>".join(captions)
                    + "</figcaption></figure>"
                )
            parts.append("</div>")
    parts.append("")  # </section> on a line of its own
    return "\n".join(parts)


def _section_classes(page: _Page, top: int = 5) -> str:
    runs = page.runs
    parts = [
        "<p>Per class: clean top-1 correct out of its images, and distorted top-1 correct pooled over all levels of the "
        "distortion (images &times; levels). With a few images per class these are anecdotes, not estimates: read the counts.</p>",
    ]
    with_preds = [run for run in runs if run.predictions is not None]
    if not with_preds:
        parts.append("<p class='na'>Not available: no run folder holds predictions.npz.</p>")
        return "\n".join(parts)
    for run in with_preds:
        names = _class_names(run)
        p = run.predictions
        clean_k = _condition_index(p["conditions"], CLEAN)
        if clean_k is None:
            parts.append(f"<p class='na'>{_e(run.label)}: no clean condition in predictions.npz.</p>")
            continue
        parts.append(f"<h3>{_e(run.label)}</h3><div class='grid2'>")
        for d in run.distortions():
            ks = [k for k, c in enumerate(p["conditions"]) if c[0] == d]
            if not ks:
                continue
            rows = class_changes(p["labels"], p["predictions"][clean_k, :, 0], p["predictions"][ks, :, 0])
            losing, holding = class_lists(rows, top)
            table = [
                f"<div><b>{_e(d)}</b> ({len(ks)} levels)<table><tr><th class='l'></th><th class='l'>class</th>"
                "<th>clean</th><th>distorted</th><th>drop</th></tr>"
            ]
            for title, chosen in (("loses most", losing), ("holds best", holding)):
                if not chosen:
                    table.append(f"<tr><td class='l'>{title}</td><td class='l na' colspan='4'>no class</td></tr>")
                for j, r in enumerate(chosen):
                    head = f"<td class='l' rowspan='{len(chosen)}'>{title}</td>" if j == 0 else ""
                    table.append(
                        f"<tr>{head}<td class='l'>{_e(names[r['cls']])}</td><td>{r['clean_correct']}/{r['n']}</td>"
                        f"<td>{r['distorted_correct']}/{r['distorted_total']}</td><td>{100 * r['drop']:+.0f} pp</td></tr>"
                    )
            table.append("</table></div>")
            parts.append("".join(table))
        parts.append("</div>")
    parts.append("")  # </section> on a line of its own
    return "\n".join(parts)


def _section_thresholds(page: _Page) -> str:
    runs, thresholds = page.runs, page.thresholds
    parts = []
    if thresholds is None:
        parts.append(
            "<p class='na'>No thresholds file was given (<code>--thresholds thresholds.yaml</code>), so there is no verdict.</p>"
        )
        return "\n".join(parts)
    verdicts = threshold_verdicts(runs, thresholds)
    failed = sum(1 for v in verdicts if v["passed"] is False)
    passed = sum(1 for v in verdicts if v["passed"] is True)
    missing = sum(1 for v in verdicts if v["passed"] is None)
    verdict = (
        "<span class='fail'>FAIL</span>"
        if failed
        else ("<span class='pass'>PASS</span>" if passed else "<span class='na'>no verdict</span>")
    )
    parts.append(
        f"<p class='tldr'>{verdict}: {passed} passed, {failed} failed, {missing} not measured by this run "
        f"(file <code>{_e(thresholds)}</code>). Margin = measured &minus; threshold, in percentage points; a result "
        "equal to its threshold passes.</p>"
    )
    if not verdicts:
        parts.append("<p class='na'>The file has no entries for the models in this report.</p>")
    else:
        parts.append(
            "<table><tr><th class='l'>model</th><th class='l'>condition</th><th>bar</th><th>measured</th>"
            "<th>required</th><th>margin</th><th>n</th><th class='l'>verdict</th></tr>"
        )
        for v in verdicts:
            cls = "na" if v["passed"] is None else ("pass" if v["passed"] else "fail")
            word = "not measured" if v["passed"] is None else ("pass" if v["passed"] else "FAIL")
            margin = "n/a" if math.isnan(v["margin"]) else f"{100 * v['margin']:+.1f} pp"
            parts.append(
                f"<tr title='{_e(v['text'])}'><td class='l'>{_e(v['label'])}</td><td class='l'>{_e(v['condition'])}</td>"
                f"<td>{v['metric']}</td><td>{_pct(v['measured'])}</td><td>{_pct(v['threshold'])}</td><td>{margin}</td>"
                f"<td>{v['n']}</td><td class='l {cls}'>{word}</td></tr>"
            )
        parts.append("</table>")
    parts.append("")  # </section> on a line of its own
    return "\n".join(parts)


def _classes_text(record) -> str:
    """``3 (bird, cat, dog; sorted folder names of ...), digest ...`` from provenance's ``classes``."""
    if not isinstance(record, dict):
        return "ImageNet-1k (not recorded)"
    names = record.get("ids") or []
    listed = f"{', '.join(map(str, names[:20]))}{', ...' if len(names) > 20 else ''}; " if names else ""
    return f"{record.get('count')} ({listed}{record.get('source', '')}), digest {record.get('digest')}"


def _section_provenance(page: _Page) -> str:
    runs = page.runs
    parts = []
    for run in runs:
        p = run.provenance
        clean = run.clean()
        prep = p.get("preprocessing") or {}
        prep_text = ", ".join(f"{k}={v}" for k, v in prep.items()) if prep else "not recorded"
        versions = ", ".join(f"{k} {v}" for k, v in (p.get("versions") or {}).items()) or "not recorded"
        rows = [
            ("model", run.model),
            ("run folder", str(run.folder)),
            ("weights digest (SHA-256, 16 hex)", p.get("weights_digest", "not recorded")),
            ("preprocessing", prep_text),
            ("dataset", p.get("dataset_root", "not recorded")),
            ("images", p.get("images", clean["n"] if clean else "not recorded")),
            ("classes", _classes_text(p.get("classes"))),
            ("noise seed", p.get("seed", "not recorded")),
            ("thresholds file", p.get("thresholds") or "none"),
            ("versions", versions),
            ("date (UTC)", p.get("date", "not recorded")),
            ("command", " ".join(p.get("command", [])) or "not recorded"),
        ]
        parts.append(
            f"<h3>{_e(run.label)}</h3><table>"
            + "".join(f"<tr><th class='l'>{_e(k)}</th><td class='l'>{_e(v)}</td></tr>" for k, v in rows)
            + "</table>"
        )
        if not p:
            parts.append(
                "<p class='na'>This run folder has no provenance.json (written by <code>robustness run</code>).</p>"
            )
    parts.append("")  # </section> on a line of its own
    return "\n".join(parts)


@dataclass(frozen=True)
class Section:
    """One section of the report page.

    Attributes:
        id: the ``<section>`` element's ``id``, also the navigation link's text and anchor (``#summary``).
        title: its ``<h2>`` heading.
        build: ``build(page) -> str``, the HTML between the heading and ``</section>``: the heading's
            line break comes first, so a body that ends with a line break puts ``</section>`` on a line
            of its own.
    """

    id: str
    title: str
    build: Callable[[_Page], str] = field(repr=False)

    def html(self, page: _Page) -> str:
        """The whole ``<section>`` element."""
        return f"<section id='{self.id}'><h2>{_e(self.title)}</h2>\n{self.build(page)}</section>"


#: The page's sections in page order. The navigation bar and the body are both written from this one
#: list (and ``tests/test_report_html.py`` checks the module docstring and ``docs/report.md`` against it).
SECTIONS: tuple[Section, ...] = (
    Section("summary", "Summary: one number per model and distortion", _section_summary),
    Section("curves", "Accuracy against distortion level", _section_curves),
    Section("examples", "What the distortions look like, and what the model says", _section_examples),
    Section("classes", "Which classes suffer", _section_classes),
    Section("thresholds", "Thresholds verdicts", _section_thresholds),
    Section("provenance", "Provenance", _section_provenance),
)


def _navigation() -> str:
    return "<nav>" + "".join(f"<a href='#{s.id}'>{_e(s.id)}</a>" for s in SECTIONS) + "</nav>"


def build_report(
    runs: Sequence[RunData],
    *,
    thresholds: str | os.PathLike | None = None,
    baseline: str | None = None,
    data: str | os.PathLike | None = None,
    examples: int = 1,
) -> str:
    """The report page as an HTML string (see the module docstring for the sections).

    Args:
        runs: run folders from :func:`find_runs` (one model each; several share the axes).
        thresholds: thresholds file whose verdicts to show, or ``None``.
        baseline: model (run label) that normalises CE; default the first run.
        data: image folder for the example strips; default each run's recorded dataset root.
        examples: images per distortion in the example strips.
    """
    if not runs:
        raise ReportError("no runs to report on")
    page = _Page(runs, summary_table(runs, baseline), thresholds, baseline, data, examples)
    models = ", ".join(run.label for run in runs)
    n = ", ".join(str((run.clean() or run.records[0])["n"]) for run in runs)
    title = f"Robustness report: {models}"
    body = [
        f"<h1>{_e(title)}</h1>",
        f"<p class='muted'>How blur, noise, JPEG, JPEG 2000 and contrast reduction (Dodge &amp; Karam 2016, arXiv:1604.04004) "
        f"change ImageNet classification accuracy. Images per condition: {_e(n)}.</p>",
        _navigation(),
        *(section.html(page) for section in SECTIONS),
    ]
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<link rel='icon' href='data:,'><title>{_e(title)}</title><style>{_CSS}</style></head><body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


def write_report(
    results: Sequence[str | os.PathLike],
    output: str | os.PathLike,
    *,
    thresholds=None,
    baseline=None,
    data=None,
    examples: int = 1,
) -> Path:
    """Read run folders (see :func:`find_runs`), build the page and write it to ``output`` atomically.

    Returns:
        the path written.

    Raises:
        ReportError: unreadable run folders or thresholds file, unknown baseline (naming the culprit).
    """
    runs = find_runs(results)
    page = build_report(runs, thresholds=thresholds, baseline=baseline, data=data, examples=examples)
    output = Path(output)
    atomic_write(output, page.encode("utf-8"))  # mode: 0666 less the umask, or the replaced file's
    return output
