"""The evaluation engine: distort each image at native resolution, preprocess, classify, score.

Every (image, condition) pair is an independent work item: the image is read, distorted with a seed
derived only from (base seed, image id, distortion, level), then given the model's preprocessing, in
DataLoader workers. The numbers are therefore the same for any batch size, worker count or order.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .datasets import ImageDataset
from .distortions import DISTORTIONS, distort, get_distortion
from .models import Classifier, load_model

__all__ = ["Condition", "ConditionResult", "evaluate", "conditions_for", "image_seed", "CLEAN"]

CLEAN = "clean"


@dataclass(frozen=True, order=True)
class Condition:
    """A (distortion, level) pair; ``Condition("clean", 0)`` is the undistorted image."""

    distortion: str
    level: float

    def __post_init__(self):
        if self.distortion != CLEAN:
            get_distortion(self.distortion).check_level(self.level)

    @property
    def id(self) -> str:
        """Readable id: ``clean``, ``blur-s3``, ``noise-50``, ``jpeg-q10``, ``jpeg2000-30db``, ``contrast-0.8``."""
        if self.distortion == CLEAN:
            return CLEAN
        return get_distortion(self.distortion).level_id(self.level)


@dataclass
class ConditionResult:
    """Accuracy of one model under one condition.

    Attributes:
        model: model name.
        distortion, level: the condition (``"clean"``, 0 for the undistorted images).
        top1, top5: accuracy as fractions in [0, 1].
        n: number of images.
        image_ids: the images, in dataset order.
        labels: int64 ``(n,)`` true class indices.
        predictions: int64 ``(n, 5)`` top-5 class indices per image, best first.
    """

    model: str
    distortion: str
    level: float
    top1: float
    top5: float
    n: int
    image_ids: list[str] = field(repr=False, default_factory=list)
    labels: np.ndarray = field(repr=False, default=None)
    predictions: np.ndarray = field(repr=False, default=None)

    @property
    def condition(self) -> Condition:
        return Condition(self.distortion, self.level)

    def to_record(self) -> dict:
        """The JSON record: model, distortion, level, top1, top5, n."""
        return {"model": self.model, "distortion": self.distortion, "level": self.level,
                "top1": self.top1, "top5": self.top5, "n": self.n}


def image_seed(base_seed: int, image_id: str, distortion: str, level: float) -> np.random.SeedSequence:
    """The noise seed of one image under one condition: a :class:`numpy.random.SeedSequence` of
    ``(base_seed, crc32(image_id), crc32(distortion), round(level * 1000))``."""
    return np.random.SeedSequence(
        [int(base_seed), zlib.crc32(image_id.encode()), zlib.crc32(distortion.encode()), int(round(level * 1000))]
    )


def conditions_for(distortions: Iterable[str] | Mapping[str, Sequence[float]] | None = None, *, clean: bool = True) -> list[Condition]:
    """Expand distortion names (paper levels) or a ``{name: levels}`` mapping into conditions.

    ``None`` means all five distortions at the paper's levels. The clean condition comes first when
    ``clean`` is true.
    """
    if distortions is None:
        distortions = list(DISTORTIONS)
    mapping = distortions if isinstance(distortions, Mapping) else {name: None for name in distortions}
    conditions = [Condition(CLEAN, 0)] if clean else []
    for name, levels in mapping.items():
        spec = get_distortion(name)
        for level in (spec.levels if levels is None else levels):
            conditions.append(Condition(name, level))
    return conditions


class _WorkItems(Dataset):
    """Item k = (image k // C, condition k % C): image-major, so a worker decodes each image once."""

    def __init__(self, dataset: ImageDataset, conditions: Sequence[Condition], preprocessing, seed: int):
        self.dataset = dataset
        self.conditions = list(conditions)
        self.preprocessing = preprocessing
        self.seed = seed
        self._cached: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.dataset) * len(self.conditions)

    def __getitem__(self, index: int):
        image_index, condition_index = divmod(index, len(self.conditions))
        if self._cached is None or self._cached[0] != image_index:
            self._cached = (image_index, self.dataset.load(image_index)[0])
        image = self._cached[1]
        condition = self.conditions[condition_index]
        if condition.distortion != CLEAN:
            sample = self.dataset[image_index]
            seed = image_seed(self.seed, sample.image_id, condition.distortion, condition.level)
            image = distort(image, condition.distortion, condition.level, seed=seed)
        return self.preprocessing(image), image_index, condition_index


def evaluate(
    model: Classifier | str,
    dataset: ImageDataset,
    distortions: Iterable[str] | Mapping[str, Sequence[float]] | Sequence[Condition] | None = None,
    *,
    clean: bool = True,
    seed: int = 0,
    batch_size: int = 32,
    num_workers: int | None = None,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> list[ConditionResult]:
    """Top-1 / top-5 accuracy of ``model`` on ``dataset`` under each distortion level, plus clean.

    Args:
        model: a :class:`Classifier` or a registered model name.
        dataset: labelled images (:func:`robustness.load_dataset`).
        distortions: distortion names (paper levels), a ``{name: levels}`` mapping, a sequence of
            :class:`Condition`, or ``None`` for all five distortions at the paper's levels.
        clean: also evaluate the undistorted images (ignored when conditions are given explicitly).
        seed: base seed for stochastic distortions.
        batch_size: images per forward pass (does not change the numbers).
        num_workers: DataLoader worker processes (default: ``min(2, os.cpu_count())``; 0 = in-process).
        device: inference device (default: CUDA when available, else CPU).
        progress: show a tqdm progress bar.

    Returns:
        one :class:`ConditionResult` per condition, in the order given (clean first).

    Raises:
        ValueError: unknown distortion or model name, a level outside a distortion's range, an empty dataset.
    """
    import os

    if isinstance(model, str):
        model = load_model(model)
    if len(dataset) == 0:
        raise ValueError("cannot evaluate on an empty dataset")
    if distortions is not None and not isinstance(distortions, Mapping) and all(isinstance(c, Condition) for c in distortions):
        conditions = list(distortions)
    else:
        conditions = conditions_for(distortions, clean=clean)
    if num_workers is None:
        num_workers = min(2, os.cpu_count() or 1)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model = model.to(device).eval()

    items = _WorkItems(dataset, conditions, model.preprocessing, seed)
    loader = DataLoader(items, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        persistent_workers=False, pin_memory=False)
    predictions = np.zeros((len(conditions), len(dataset), 5), dtype=np.int64)
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(items), unit="img", desc=f"{model.name}", dynamic_ncols=True)
    with torch.inference_mode():
        for batch, image_index, condition_index in loader:
            logits = model(batch.to(device))
            if logits.ndim != 2 or logits.shape[1] != 1000:
                raise ValueError(f"model {model.name} returned logits of shape {tuple(logits.shape)}, expected (N, 1000)")
            top5 = logits.topk(5, dim=1).indices.cpu().numpy()
            predictions[condition_index.numpy(), image_index.numpy()] = top5
            if bar is not None:
                bar.update(len(batch))
    if bar is not None:
        bar.close()

    labels = np.asarray([sample.label for sample in dataset], dtype=np.int64)
    image_ids = [sample.image_id for sample in dataset]
    results = []
    for k, condition in enumerate(conditions):
        correct1 = predictions[k, :, 0] == labels
        correct5 = (predictions[k] == labels[:, None]).any(axis=1)
        results.append(ConditionResult(
            model=model.name, distortion=condition.distortion, level=condition.level,
            top1=float(correct1.mean()), top5=float(correct5.mean()), n=len(dataset),
            image_ids=image_ids, labels=labels, predictions=predictions[k].copy(),
        ))
    return results


def wilson_interval(successes: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """95% Wilson score interval for a binomial proportion (Wilson 1927); returns ``(low, high)``."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    denominator = 1 + z**2 / n
    centre = (p + z**2 / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / denominator
    return (max(0.0, centre - half), min(1.0, centre + half))
