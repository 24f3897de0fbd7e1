"""The gate: compare measured accuracy with thresholds, without pytest.

* :func:`judge` turns a :class:`~robustness.thresholds.Threshold` and a measured
  :class:`~robustness.ConditionResult` into a :class:`Verdict`: every bar (absolute or relative to
  clean), ``n``, the measured accuracy with its 95% Wilson interval and, when a baseline is stored
  and the thresholds file enables it, the paired McNemar check against the baseline.
* :class:`GateSession` evaluates each (model, distortion) once, at every level the thresholds file
  lists for that model, and serves results and verdicts.
* :func:`save_baseline` / :func:`load_baseline` store per-image top-5 predictions (written by
  calibration) for the paired check.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ._io import safe_name
from .conditions import CLEAN, Condition
from .datasets import ImageDataset
from .distortions import DISTORTIONS
from .labels import ClassListError, applicable_metrics, imagenet_class_list
from .names import format_level
from .stats import McNemarResult, correct, mcnemar, wilson_interval
from .thresholds import METRICS, PAIRED_METRICS, PairedSettings, Threshold, Thresholds, check_metrics

if TYPE_CHECKING:  # the engine and the models need torch: imported where a model is loaded or evaluated
    from .evaluation import ConditionResult
    from .models import Classifier

__all__ = [
    "Check",
    "PairedCheck",
    "Verdict",
    "GateSession",
    "GateError",
    "ThresholdFailure",
    "judge",
    "check_threshold",
    "condition_label",
    "save_baseline",
    "load_baseline",
    "Baseline",
]


class ThresholdFailure(AssertionError):
    """A measured accuracy fell below its threshold (or dropped significantly against the baseline).

    Attributes:
        verdict: the failing :class:`Verdict` (``None`` when raised without one).
    """

    def __init__(self, message: str, verdict: Verdict | None = None):
        super().__init__(message)
        self.verdict = verdict


class GateError(ValueError):
    """The gate cannot judge: e.g. fewer readable images than asked for (the message says what to fix)."""


def condition_label(condition: Condition) -> str:
    """``clean``, ``blur level 3 (sigma (px))`` or ``jpeg level 10 (quality)``: the parameter is named once."""
    if condition.distortion == CLEAN:
        return CLEAN
    spec = DISTORTIONS[condition.distortion]
    return f"{spec.name} level {condition.level:g} ({spec.label})"


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


@dataclass(frozen=True)
class Check:
    """One bar of a threshold.

    Attributes:
        key: the bar's key in the file (``top1`` ... ``top5``, ``balanced_accuracy``, or one of them
            with ``_of_clean``).
        metric: ``top1`` ... ``top5`` (top-k accuracy) or ``balanced_accuracy``.
        measured: the measured accuracy.
        required: the accuracy needed (for relative bars: ``bar * clean``).
        bar: the value written in the file.
        clean: the clean accuracy a relative bar refers to (``None`` for absolute bars).
    """

    key: str
    metric: str
    measured: float
    required: float
    bar: float
    clean: float | None = None

    @property
    def passed(self) -> bool:
        # tolerate float noise: a result equal to its bar passes
        return self.measured >= self.required - 1e-12

    def describe(self) -> str:
        sign = ">=" if self.passed else "<"
        text = f"{self.metric} {_pct(self.measured)} {sign} required {_pct(self.required)}"
        if self.clean is not None:
            text += f" ({self.bar:g} x clean {_pct(self.clean)}, {self.key})"
        return text


@dataclass(frozen=True)
class PairedCheck:
    """The McNemar check against the baseline: ``passed`` unless a drop is significant at ``alpha``."""

    metric: str
    alpha: float
    result: McNemarResult

    @property
    def passed(self) -> bool:
        return not self.result.significant_drop(self.alpha)

    def describe(self) -> str:
        r = self.result
        verdict = "significant drop" if not self.passed else "no significant drop"
        return (
            f"paired vs baseline: {self.metric} {_pct(r.baseline)} -> {_pct(r.candidate)} on the same "
            f"{r.n} images ({r.b} lost, {r.c} gained), one-sided McNemar p={r.p_value:.3g}: {verdict} "
            f"at alpha {self.alpha:g}"
        )


@dataclass
class Verdict:
    """The outcome of one gate case.

    Attributes:
        threshold: the thresholds entry.
        result: the measured :class:`ConditionResult`.
        checks: one :class:`Check` per bar.
        paired: the :class:`PairedCheck`, ``None`` when not configured or no baseline matches.
        notes: why a configured paired check did not run, and similar remarks.
        source: ``file:line`` of the entry, when known.
    """

    threshold: Threshold
    result: ConditionResult
    checks: list[Check]
    paired: PairedCheck | None = None
    notes: list[str] = field(default_factory=list)
    source: str | None = None

    def __repr__(self) -> str:
        return f"<Verdict {self.threshold.id}: {'pass' if self.passed else 'FAIL'}>"

    @property
    def n(self) -> int:
        return self.result.n

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks) and (self.paired is None or self.paired.passed)

    def interval(self, metric: str) -> tuple[float, float] | None:
        """95% Wilson interval of the measured ``metric``: for ``top1`` ... ``top5``, proportions of
        images (counts of images right); ``None`` for ``balanced_accuracy`` (a mean of per-class
        recalls, not a binomial proportion, so the Wilson interval does not apply) and for a metric
        not measured."""
        if metric not in PAIRED_METRICS:
            return None
        value = self.result.metric(metric)
        if value is None:
            return None
        return wilson_interval(int(round(value * self.n)), self.n)

    def metrics(self) -> list[str]:
        """The metrics shown and recorded for this result: those of :data:`METRICS` that apply to
        the dataset's class count (:func:`robustness.labels.applicable_metrics`) and were computed;
        top-2 to top-4 only when a bar uses them, balanced accuracy only for class lists other than
        ImageNet-1k or when a bar uses it (so ImageNet gate messages read as before)."""
        allowed = applicable_metrics(self.result.num_classes)
        own = self.result.classes is not None and not self.result.classes.is_imagenet
        barred = {key.replace("_of_clean", "") for key in self.threshold.bars()}
        return [
            m
            for m in METRICS
            if m in allowed
            and (m in ("top1", "top5") or (m == "balanced_accuracy" and own) or m in barred)
            and self.result.metric(m) is not None
        ]

    def measured_line(self) -> str:
        parts = []
        for metric in self.metrics():
            interval = self.interval(metric)
            ci = "" if interval is None else f" (95% CI {_pct(interval[0])}-{_pct(interval[1])})"
            parts.append(f"{metric} {_pct(self.result.metric(metric))}{ci}")
        return ", ".join(parts) + f", n={self.n} images"

    def message(self) -> str:
        """Multi-line explanation: what was measured, every bar, the paired check, where the entry is."""
        causes = []
        if not all(c.passed for c in self.checks):
            causes.append("BELOW THRESHOLD")
        if self.paired is not None and not self.paired.passed:
            causes.append("SIGNIFICANT DROP VS BASELINE")
        head = f"{self.threshold.model} {condition_label(self.threshold.condition)}: " + (
            " AND ".join(causes) if causes else "passes"
        )
        lines = [head, "  measured " + self.measured_line()]
        lines += ["  " + ("ok   " if c.passed else "FAIL ") + c.describe() for c in self.checks]
        if self.paired is not None:
            lines.append("  " + ("ok   " if self.paired.passed else "FAIL ") + self.paired.describe())
        lines += [f"  note: {note}" for note in self.notes]
        if self.source:
            lines.append(f"  threshold set at {self.source}")
        return "\n".join(lines)

    def check(self) -> None:
        """Raise :class:`ThresholdFailure` (with :meth:`message`) unless the verdict passes."""
        __tracebackhide__ = True  # pytest: show the test's line, not this one
        if not self.passed:
            raise ThresholdFailure(self.message(), self)

    def properties(self) -> list[tuple[str, Any]]:
        """Flat ``(name, value)`` pairs for JUnit XML (``record_property``), all prefixed ``robustness_``."""
        t, r = self.threshold, self.result
        props: list[tuple[str, Any]] = [
            ("robustness_model", t.model),
            ("robustness_distortion", t.condition.distortion),
            ("robustness_level", format_level(t.condition.level)),
            ("robustness_n", r.n),
        ]
        for metric in self.metrics():
            props.append((f"robustness_{metric}", round(r.metric(metric), 6)))
            interval = self.interval(metric)
            if interval is not None:
                props += [
                    (f"robustness_{metric}_ci_low", round(interval[0], 6)),
                    (f"robustness_{metric}_ci_high", round(interval[1], 6)),
                ]
        for c in self.checks:
            props.append((f"robustness_{c.key}_required", round(c.required, 6)))
        if self.paired is not None:
            p = self.paired.result
            props += [
                ("robustness_paired_metric", self.paired.metric),
                ("robustness_paired_baseline", round(p.baseline, 6)),
                ("robustness_paired_lost", p.b),
                ("robustness_paired_gained", p.c),
                ("robustness_paired_p", float(f"{p.p_value:.6g}")),
            ]
        props.append(("robustness_passed", self.passed))
        return props


def judge(
    threshold: Threshold,
    result: ConditionResult,
    *,
    clean: ConditionResult | None = None,
    baseline: Baseline | None = None,
    paired: PairedSettings | None = None,
    source: str | None = None,
) -> Verdict:
    """Compare ``result`` with every bar of ``threshold`` (and the baseline, when given).

    Args:
        threshold: the thresholds entry.
        result: the measured result for its condition.
        clean: the same model's clean result (needed for ``*_of_clean`` bars).
        baseline: stored baseline predictions (:func:`load_baseline`) for the paired check.
        paired: the paired-check settings; the check runs only when this and ``baseline`` are given.
        source: ``file:line`` shown in the message.

    Raises:
        ValueError: a relative bar without ``clean``; a bar on a metric that does not apply to the
            dataset's class count (top-k with k classes or fewer) or was not computed (top-2 to
            top-4 of a result without per-image predictions).
    """
    checks = []
    allowed = applicable_metrics(result.num_classes)
    for key, bar in threshold.bars().items():
        metric = key.replace("_of_clean", "")
        measured = result.metric(metric) if metric in allowed else None
        if metric not in allowed or measured is None:
            raise ValueError(
                f"{threshold.id}: a {key} bar cannot be judged on {result.num_classes} classes"
                + ("" if metric not in allowed else f" ({metric} was not computed for this result)")
            )
        if key in METRICS:
            checks.append(Check(key, metric, measured, bar, bar))
        else:
            if clean is None:
                raise ValueError(
                    f"{threshold.id}: {key} needs the model's clean result "
                    "(use the robustness_verdict fixture or pass clean=)"
                )
            base = clean.metric(metric)
            if base is None:
                raise ValueError(f"{threshold.id}: {key} needs the clean {metric}, which was not computed")
            checks.append(Check(key, metric, measured, bar * base, bar, base))
    verdict = Verdict(threshold, result, checks, source=source)
    if paired is not None:
        if baseline is None:
            verdict.notes.append(
                "paired check skipped: no stored baseline for this model and condition "
                "(run `robustness calibrate` to store one)"
            )
        else:
            pairs = baseline.pair(result)
            if isinstance(pairs, str):
                verdict.notes.append(f"paired check skipped: {pairs}")
            else:
                base_correct, cand_correct = pairs
                verdict.paired = PairedCheck(
                    paired.metric,
                    paired.alpha,
                    mcnemar(
                        correct(base_correct[0], base_correct[1], paired.metric),
                        correct(cand_correct[0], cand_correct[1], paired.metric),
                    ),
                )
    return verdict


def check_threshold(threshold: Threshold, result: ConditionResult, clean: ConditionResult | None = None) -> None:
    """Raise :class:`ThresholdFailure` if ``result`` is below any bar of ``threshold``.

    A result equal to the threshold passes. Relative (``*_of_clean``) bars need ``clean``. The
    message gives the measured value, its 95% Wilson interval, each bar and the image count.
    """
    __tracebackhide__ = True
    judge(threshold, result, clean=clean).check()


# ------------------------------------------------------------------------------------------ baseline


@dataclass
class Baseline:
    """Stored per-image top-5 predictions of one model for the levels of one distortion.

    ``classes`` is the digest of the class list the labels and predictions index
    (:attr:`robustness.labels.ClassList.digest`); baselines written before class lists existed
    are ImageNet-1k's. ``pipeline`` is the pipeline the predictions came from
    (:attr:`robustness.evaluation.ConditionResult.pipeline`); baselines written before it was stored
    are ``"reference"``'s."""

    model: str
    distortion: str
    seed: int
    image_ids: list[str]
    labels: np.ndarray
    levels: list[float]
    predictions: np.ndarray  # (levels, n, 5)
    classes: str = ""
    pipeline: str = "reference"

    def __post_init__(self):
        if not self.classes:
            self.classes = imagenet_class_list().digest

    def pair(
        self, result: ConditionResult
    ) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]] | str:
        """``((baseline_preds, labels), (candidate_preds, labels))`` on the shared images, or a reason string."""
        keys = [format_level(v) for v in self.levels]
        key = format_level(result.level)
        if key not in keys:
            return f"the baseline has no {result.distortion} level {key}"
        digest = (result.classes or imagenet_class_list()).digest
        if digest != self.classes:
            return f"the baseline was measured with another class list (digest {self.classes}, this run {digest})"
        pipeline = getattr(result, "pipeline", "reference")
        if pipeline != self.pipeline and result.distortion in PAIRED_PIPELINE_SENSITIVE:
            # the two pipelines draw the noise differently: image i's prediction of one is not paired
            # with image i's of the other (docs/caching.md#device-side-pipeline)
            return (
                f"the baseline was measured with the {self.pipeline} pipeline, this run uses the {pipeline} "
                f"pipeline, which draws other {result.distortion} per image"
            )
        if result.predictions is None or not result.image_ids:
            return "the result carries no per-image predictions"
        index = {image_id: i for i, image_id in enumerate(self.image_ids)}
        rows = [(i, index[image_id]) for i, image_id in enumerate(result.image_ids) if image_id in index]
        if not rows:
            return "the baseline was measured on other images"
        cand_rows = np.array([r[0] for r in rows])
        base_rows = np.array([r[1] for r in rows])
        labels = np.asarray(result.labels)[cand_rows]
        if not np.array_equal(labels, self.labels[base_rows]):
            return "the baseline's labels differ from this dataset's"
        base = self.predictions[keys.index(key)][base_rows]
        return (base, labels), (np.asarray(result.predictions)[cand_rows], labels)


#: Distortions whose per-image output differs between the reference and the device pipeline beyond
#: the documented 1-grey-level tolerance (the noise is drawn from another generator), so a baseline of
#: one pipeline is not paired with a run of the other (:meth:`Baseline.pair`).
PAIRED_PIPELINE_SENSITIVE = frozenset({"noise"})


def _baseline_file(folder: Path, model: str, distortion: str) -> Path:
    return Path(folder) / safe_name(model) / f"{safe_name(distortion)}.npz"


def save_baseline(
    results: Sequence[ConditionResult], folder: str | os.PathLike, *, seed: int = 0, model: str | None = None
) -> list[Path]:
    """Store the per-image predictions of ``results`` as baselines, one ``.npz`` per (model, distortion).

    Files: ``<folder>/<model>/<distortion>.npz`` (image ids, labels, levels, int16 top-5 predictions,
    seed, the class list's digest, the pipeline), written atomically. Levels already stored for that distortion and not in ``results`` are kept.
    Returns the files written.
    """
    from ._io import atomic_write

    groups: dict[tuple[str, str], list[ConditionResult]] = {}
    for r in results:
        groups.setdefault((model or r.model, r.distortion), []).append(r)
    written = []
    for (name, distortion), items in groups.items():
        path = _baseline_file(Path(folder), name, distortion)
        image_ids = list(items[0].image_ids)
        levels = {format_level(r.level): (float(r.level), np.asarray(r.predictions)) for r in items}
        classes = (items[0].classes or imagenet_class_list()).digest
        pipeline = getattr(items[0], "pipeline", "reference")
        old = load_baseline(folder, name, distortion)
        if (
            old is not None
            and old.image_ids == image_ids
            and old.seed == seed
            and old.classes == classes
            and old.pipeline == pipeline
        ):
            for level, preds in zip(old.levels, old.predictions):
                levels.setdefault(format_level(level), (float(level), preds))
        ordered = sorted(levels.values(), key=lambda item: item[0])
        buffer = io.BytesIO()
        np.savez_compressed(
            buffer,
            model=np.array(name),
            distortion=np.array(distortion),
            seed=np.array(seed),
            image_ids=np.array(image_ids),
            labels=np.asarray(items[0].labels, dtype=np.int16),
            levels=np.array([lv for lv, _ in ordered], dtype=np.float64),
            predictions=np.stack([p for _, p in ordered]).astype(np.int16),
            classes=np.array(classes),
            pipeline=np.array(pipeline),
        )
        atomic_write(path, buffer.getvalue())
        written.append(path)
    return written


def load_baseline(folder: str | os.PathLike, model: str, distortion: str) -> Baseline | None:
    """The stored :class:`Baseline` for (model, distortion), or ``None`` when there is none."""
    path = _baseline_file(Path(folder), model, distortion)
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as data:
        return Baseline(
            str(data["model"]),
            str(data["distortion"]),
            int(data["seed"]),
            [str(x) for x in data["image_ids"]],
            data["labels"].astype(np.int64),
            [float(x) for x in data["levels"]],
            data["predictions"].astype(np.int64),
            str(data["classes"]) if "classes" in data.files else "",
            str(data["pipeline"]) if "pipeline" in data.files else "reference",
        )


# ------------------------------------------------------------------------------------------ session


@contextlib.contextmanager
def _label_space_errors():
    """A model whose outputs do not match the dataset's class list is a :class:`GateError` (one
    clear line in the gate), not a traceback."""
    try:
        yield
    except ClassListError as error:
        raise GateError(str(error)) from None


class GateSession:
    """Lazily evaluates and memoises results per (model name, distortion), and judges them.

    Args:
        dataset: the images to evaluate.
        thresholds: the parsed thresholds (which levels are evaluated together, the seed, the paired check).
        device, batch_size, num_workers: passed to :func:`robustness.evaluate`.
        pipeline: ``auto``, ``device`` or ``reference`` (:func:`robustness.evaluate`'s option of that
            name); ``None`` leaves evaluate's default (``auto``).
        cache: the prediction cache, passed to :func:`robustness.evaluate` when not ``None``.
        evaluate_options: further keyword arguments for :func:`robustness.evaluate`.
        allow_fewer_images: judge on the readable images when some of ``dataset`` cannot be read
            (default ``thresholds.allow_fewer_images``); otherwise an unreadable image raises
            :class:`GateError`, since the result would rest on fewer images than asked for.
        restrict_to_dataset_classes: score ImageNet-1k models on the dataset's classes only
            (:func:`robustness.evaluate`'s option of that name).

    Raises:
        robustness.thresholds.ThresholdsError: a bar on a metric that does not apply to the
            dataset's class count (:func:`robustness.thresholds.check_metrics`).

    Attributes:
        skipped: unreadable images left out so far: image id -> reason.
    """

    def __init__(
        self,
        dataset: ImageDataset,
        thresholds: Thresholds,
        *,
        device=None,
        pipeline: str | None = None,
        batch_size: int = 32,
        num_workers: int | None = None,
        cache=None,
        evaluate_options: dict | None = None,
        allow_fewer_images: bool | None = None,
        restrict_to_dataset_classes: bool = False,
    ):
        self.dataset = dataset
        self.thresholds = thresholds
        self.device = device
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.evaluate_options = dict(evaluate_options or {})
        if cache is not None:
            self.evaluate_options["cache"] = cache
        if pipeline is not None:
            self.evaluate_options["pipeline"] = pipeline
        if restrict_to_dataset_classes:
            self.evaluate_options["restrict_to_dataset_classes"] = True
        if allow_fewer_images is None:
            allow_fewer_images = bool(getattr(thresholds, "allow_fewer_images", False))
        self.allow_fewer_images = allow_fewer_images
        self.skipped: dict[str, str] = {}
        classes = dataset.classes
        if self.evaluate_options.get("restrict_to_dataset_classes") and classes.is_imagenet:
            classes = dataset.present_classes().classes
        check_metrics(thresholds, len(classes), classes.source)
        self._error: GateError | None = None
        self._models: dict[str, Classifier] = {}
        self._results: dict[tuple[str, Condition], ConditionResult] = {}

    def model(self, name: str) -> Classifier:
        """The registered model ``name``, loaded once."""
        from .models import load_model

        if name not in self._models:
            self._models[name] = load_model(name, device=self.device)
        return self._models[name]

    @property
    def results(self) -> dict[tuple[str, Condition], ConditionResult]:
        """Everything measured so far: ``(model name, condition) -> result``."""
        return dict(self._results)

    def _evaluate(self, model: Classifier, name: str, conditions: list[Condition]) -> None:
        """Evaluate ``conditions``; unreadable images are reported in :attr:`skipped` (and in each
        result), not as a warning, and raise :class:`GateError` unless ``allow_fewer_images``."""
        import warnings

        from .evaluation import SkippedImagesWarning, evaluate

        if self._error is not None:
            raise self._error
        with warnings.catch_warnings(), _label_space_errors():
            warnings.simplefilter("ignore", SkippedImagesWarning)
            results = evaluate(
                model,
                self.dataset,
                conditions,
                seed=self.thresholds.seed,
                batch_size=self.batch_size,
                num_workers=self.num_workers,
                device=self.device,
                **self.evaluate_options,
            )
        for condition, result in zip(conditions, results):
            result.model = name
            self.skipped.update(result.skipped)
            self._results[(name, condition)] = result
        if results and results[0].skipped and not self.allow_fewer_images:
            skipped = results[0].skipped
            listing = "; ".join(f"{image}: {reason}" for image, reason in skipped.items())
            where = f" in {self.thresholds.path}" if self.thresholds.path is not None else ""
            self._error = GateError(
                f"only {results[0].n} of the {len(self.dataset)} images asked for could be read "
                f"({len(skipped)} unreadable: {listing}); fix or remove them, or allow judging on fewer "
                f"images with 'defaults: {{allow_fewer_images: true}}'{where}"
            )
            raise self._error

    def measure(self, model: Classifier, name: str, condition: Condition) -> ConditionResult:
        """The result of ``model`` (called ``name``) under ``condition``; the first request for a
        distortion evaluates every level the thresholds list for that model at once."""
        key = (name, condition)
        if key not in self._results:
            conditions = [
                t.condition for t in self.thresholds.for_model(name) if t.condition.distortion == condition.distortion
            ]
            self._evaluate(model, name, list(dict.fromkeys(conditions + [condition])))
        return self._results[key]

    def result(self, model: Classifier, threshold: Threshold) -> ConditionResult:
        """The result for ``threshold``'s condition (see :meth:`measure`)."""
        return self.measure(model, threshold.model, threshold.condition)

    def verdict(self, model: Classifier, threshold: Threshold) -> Verdict:
        """Measure and judge ``threshold`` (with the clean result and the baseline when needed)."""
        result = self.result(model, threshold)
        clean = self.measure(model, threshold.model, Condition(CLEAN, 0)) if threshold.relative else None
        paired = self.thresholds.paired
        baseline, note = None, None
        if paired is not None:
            baseline = load_baseline(paired.baseline, threshold.model, threshold.condition.distortion)
            if baseline is not None and baseline.seed != self.thresholds.seed:
                note = (
                    f"paired check skipped: the baseline was measured with seed {baseline.seed}, "
                    f"this run uses seed {self.thresholds.seed}"
                )
                baseline, paired = None, None
        source = None
        if self.thresholds.path is not None:
            source = str(self.thresholds.path) + (f":{threshold.line}" if threshold.line else "")
        verdict = judge(threshold, result, clean=clean, baseline=baseline, paired=paired, source=source)
        if note:
            verdict.notes.append(note)
        return verdict
