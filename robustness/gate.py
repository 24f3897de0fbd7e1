"""The gate: compare measured accuracy with thresholds, without pytest.

:class:`GateSession` evaluates each (model, distortion) once, at every level the thresholds file
lists for that model, and serves the per-level results; :func:`check_threshold` raises
:class:`ThresholdFailure` with the measured value, the threshold and the image count.
"""

from __future__ import annotations

from .datasets import ImageDataset
from .evaluation import CLEAN, Condition, ConditionResult, evaluate, wilson_interval
from .models import Classifier, load_model
from .thresholds import Threshold, Thresholds

__all__ = ["GateSession", "ThresholdFailure", "check_threshold", "describe"]


class ThresholdFailure(AssertionError):
    """A measured accuracy fell below its threshold."""


def describe(threshold: Threshold, result: ConditionResult, metric: str) -> str:
    """One line: condition, measured accuracy with its 95% Wilson interval, threshold, n."""
    measured = getattr(result, metric)
    low, high = wilson_interval(round(measured * result.n), result.n)
    bar = getattr(threshold, metric)
    condition = threshold.condition
    where = "clean" if condition.distortion == CLEAN else f"{condition.distortion} level {condition.level:g}"
    return (f"{threshold.model} {where}: {metric} {100 * measured:.1f}% (95% CI {100 * low:.1f}-{100 * high:.1f}%) "
            f"vs threshold {100 * bar:.1f}% on n={result.n} images")


def check_threshold(threshold: Threshold, result: ConditionResult) -> None:
    """Raise :class:`ThresholdFailure` if ``result`` is below any bar of ``threshold``.

    A result equal to the threshold passes. The message gives the measured value, its 95% Wilson
    interval, the threshold and the image count.
    """
    failures = [describe(threshold, result, m) for m in ("top1", "top5")
                if getattr(threshold, m) is not None and getattr(result, m) < getattr(threshold, m)]
    if failures:
        raise ThresholdFailure("accuracy below threshold: " + "; ".join(failures))


class GateSession:
    """Lazily evaluates and memoises results per (model name, distortion).

    Args:
        dataset: the images to evaluate.
        thresholds: the parsed thresholds (decides which levels are evaluated together, and the seed).
        device, batch_size, num_workers: passed to :func:`robustness.evaluate`.
    """

    def __init__(self, dataset: ImageDataset, thresholds: Thresholds, *, device=None, batch_size: int = 32,
                 num_workers: int | None = None):
        self.dataset = dataset
        self.thresholds = thresholds
        self.device = device
        self.batch_size = batch_size
        self.num_workers = num_workers
        self._models: dict[str, Classifier] = {}
        self._results: dict[tuple[str, Condition], ConditionResult] = {}

    def model(self, name: str) -> Classifier:
        """The registered model ``name``, loaded once."""
        if name not in self._models:
            self._models[name] = load_model(name, device=self.device)
        return self._models[name]

    def result(self, model: Classifier, threshold: Threshold) -> ConditionResult:
        """The result for ``threshold``'s condition, evaluating the whole distortion on first use."""
        key = (threshold.model, threshold.condition)
        if key not in self._results:
            distortion = threshold.condition.distortion
            conditions = [t.condition for t in self.thresholds.for_model(threshold.model)
                          if t.condition.distortion == distortion]
            conditions = list(dict.fromkeys(conditions + [threshold.condition]))
            results = evaluate(model, self.dataset, conditions, seed=self.thresholds.seed,
                               batch_size=self.batch_size, num_workers=self.num_workers, device=self.device)
            for condition, result in zip(conditions, results):
                result.model = threshold.model
                self._results[(threshold.model, condition)] = result
        return self._results[key]
