"""The evaluation engine: distort each image at native resolution, preprocess, classify, score.

Every (image, condition) pair is an independent work item: the image is read, distorted with a seed
derived only from (base seed, image id, distortion, level), then given the model's preprocessing, in
DataLoader workers. The numbers are therefore the same for any batch size, worker count or order.

The engine asks a prediction store (:class:`robustness.cache.PredictionStore`: the on-disk
:class:`robustness.cache.PredictionCache`, or :class:`robustness.cache.NullStore` without a cache)
which (image, condition) pairs it already holds, computes only the rest and hands the results back;
keys, locks, when to write and compaction are the store's business, so there is one code path with
or without a cache. With the on-disk cache, new predictions are written as they come (so an
interrupted run resumes) and processes sharing the cache folder (pytest-xdist workers) wait for each
other's conditions instead of computing them twice. The cache is keyed by the model's behaviour,
and every run that reads it re-computes a seeded sample of what it read (the engine decides which);
on any disagreement the model's entries are discarded and everything is recomputed. Images that
cannot be read are left out of every condition and reported.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import sys
import time
import warnings
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from .cache import (
    FLAG_MISSED_TOLERANCE,
    CacheWarning,
    PredictionCache,
    PredictionSession,
    PredictionStore,
    resolve_store,
    verification_sample_size,
)
from .conditions import CLEAN, Condition
from .datasets import ImageDataset
from .device_pipeline import DeviceInput, NativeImage, resolve_pipeline, runs_on_device
from .distortion_store import DistortionStore
from .distortions import DISTORTIONS, distort, distort_with_info, get_distortion
from .images import ImageLoadError
from .labels import ClassList, balanced_accuracy, check_output_width, restrict_to_classes, width_mismatch
from .models import Classifier, load_model
from .ray_engine import RayEngine
from .settings import (
    CUBLAS_DETERMINISTIC_CONFIGS,
    CUBLAS_WORKSPACE_VARIABLE,
    ENGINES,
    check_device,
    set_cublas_workspace_config,
)
from .stats import correct

__all__ = [
    "Condition",
    "ConditionResult",
    "evaluate",
    "conditions_for",
    "identity_condition",
    "image_seed",
    "CLEAN",
    "SkippedImagesWarning",
    "top5_of",
    "default_num_workers",
    "inference_device",
    "inference_settings",
    "DeterminismError",
    "DeterminismWarning",
    "LineProgress",
    "progress_bar",
]


@dataclass
class ConditionResult:
    """Accuracy of one model under one condition.

    Attributes:
        model: model name.
        distortion, level: the condition (``"clean"``, 0 for the undistorted images).
        top1, top5: accuracy as fractions in [0, 1]. With 5 classes or fewer, top-5 is 1.0 by
            construction: it is not gateable then, and results.json writes it as ``null``. Top-2 to
            top-4: :meth:`topk`, computed from ``predictions``.
        n: number of images (unreadable images excluded).
        image_ids: the images, in dataset order.
        labels: int64 ``(n,)`` true class indices (into the dataset's class list).
        predictions: int64 ``(n, 5)`` top-5 class indices per image, best first; a model with
            C < 5 classes has its top-C, padded with -1.
        skipped: unreadable images left out of every condition: image id -> error message.
        tolerance_misses: how many of the ``n`` images the distortion could not bring within its
            tolerance (JPEG 2000: the closest encode is more than 0.5 dB from the target PSNR, see
            :func:`robustness.distortions.distort_with_info`); 0 for the other distortions and clean.
        balanced_accuracy: mean per-class top-1 recall over the classes present in ``labels``
            (:func:`robustness.labels.balanced_accuracy`, as ``sklearn.metrics.balanced_accuracy_score``);
            ``None`` when not computed (a result rebuilt from an older results.json).
        classes: the dataset's class list (``None``: ImageNet-1k).
        pipeline: where the distortions and preprocessing ran: ``"reference"`` (numpy / scipy /
            Pillow, the paper's numbers) or ``"device"`` (:mod:`robustness.device_pipeline`, whose
            noise draws differ image by image); the paired check compares like with like
            (:meth:`robustness.gate.Baseline.pair`).
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
    skipped: dict[str, str] = field(repr=False, default_factory=dict)
    tolerance_misses: int = 0
    balanced_accuracy: float | None = None
    classes: ClassList | None = field(repr=False, default=None)
    pipeline: str = field(repr=False, default="reference")

    @property
    def condition(self) -> Condition:
        return Condition(self.distortion, self.level)

    @property
    def num_classes(self) -> int:
        """The number of classes of the dataset's class list (1000 for ImageNet-1k)."""
        return 1000 if self.classes is None else len(self.classes)

    def topk(self, k: int) -> float | None:
        """Top-k accuracy, a fraction in [0, 1]: the share of the ``n`` images whose label is among the
        model's ``k`` highest-scoring classes, counted from the stored top-5 :attr:`predictions`
        (:func:`robustness.stats.correct`). ``k = 1`` is :attr:`top1` and ``k = 5`` is :attr:`top5`.

        Returns ``None`` when ``k >= num_classes`` (for k >= 2: every class would be in the top k, so
        the value would be 100% by construction) or when the result has no per-image predictions
        (one rebuilt from results.json, which stores top-1 and top-5 only).

        Raises:
            ValueError: ``k`` is not an integer in 1..5: the engine keeps the top-5 predictions per
                image (:data:`robustness.names.TOPK_MAX`), so larger k cannot be computed.
        """
        from .names import TOPK_MAX

        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= TOPK_MAX:
            raise ValueError(
                f"top-k needs an integer k in 1..{TOPK_MAX}, got {k!r}: the engine keeps the top-{TOPK_MAX} "
                "predictions per image"
            )
        k = int(k)
        if k == 1:
            return self.top1
        if k >= self.num_classes:
            return None
        if k == TOPK_MAX:
            return self.top5
        if self.predictions is None or self.labels is None:
            return None
        return float(correct(self.predictions, self.labels, f"top{k}").mean()) if self.n else 0.0

    def metric(self, name: str) -> float | None:
        """The measured value of a gateable metric (:data:`robustness.names.METRICS`), a fraction in
        [0, 1]: ``topK`` is :meth:`topk` (``None`` when it does not apply), ``balanced_accuracy`` the
        attribute (``None`` when not computed).

        Raises:
            ValueError: ``name`` is not a gateable metric (``topK`` with K > 5 names the limit).
        """
        from .names import METRICS, top_k

        k = top_k(name)
        if k is not None:
            return self.topk(k)
        if name not in METRICS:
            raise ValueError(f"unknown metric {name!r}; expected one of {', '.join(METRICS)}")
        return getattr(self, name)

    def to_record(self) -> dict:
        """The JSON record: model, distortion, level, top1, top5, n, tolerance_misses, and (new in
        the label-spaces release) balanced_accuracy and num_classes. ``top5`` is ``null`` with 5
        classes or fewer (it would be 1.0 by construction)."""
        record = {
            "model": self.model,
            "distortion": self.distortion,
            "level": self.level,
            "top1": self.top1,
            "top5": self.top5 if self.num_classes > 5 else None,
            "n": self.n,
            "tolerance_misses": self.tolerance_misses,
        }
        if self.balanced_accuracy is not None:
            record["balanced_accuracy"] = self.balanced_accuracy
        record["num_classes"] = self.num_classes
        return record


def image_seed(base_seed: int, image_id: str, distortion: str, level: float) -> np.random.SeedSequence:
    """The noise seed of one image under one condition: a :class:`numpy.random.SeedSequence` of
    ``(base_seed, crc32(image_id), crc32(distortion), round(level * 1000))``."""
    return np.random.SeedSequence(
        [int(base_seed), zlib.crc32(image_id.encode()), zlib.crc32(distortion.encode()), int(round(level * 1000))]
    )


def conditions_for(
    distortions: Iterable[str] | Mapping[str, Sequence[float]] | None = None, *, clean: bool = True
) -> list[Condition]:
    """Expand distortion names (paper levels) or a ``{name: levels}`` mapping into conditions.

    ``None`` means all five distortions at the paper's levels. The clean condition comes first when
    ``clean`` is true.
    """
    if distortions is None:
        distortions = list(DISTORTIONS)
    elif isinstance(distortions, str):
        distortions = [distortions]
    mapping = distortions if isinstance(distortions, Mapping) else {name: None for name in distortions}
    conditions = [Condition(CLEAN, 0)] if clean else []
    for name, levels in mapping.items():
        spec = get_distortion(name)
        for level in spec.levels if levels is None else levels:
            conditions.append(Condition(name, level))
    return conditions


class SkippedImagesWarning(UserWarning):
    """Some images could not be read; they were left out of every condition (the message lists them)."""


class _WorkItems(Dataset):
    """Item k = ``items[k]`` = (image index, condition index), image-major so a worker decodes each
    image once for all its conditions; each item is distorted once and then given every preprocessing
    ``uses[k]`` asks for (one per group of models that share a preprocessing and need the item).

    :meth:`distorted` is the one place an (image, condition) becomes a distorted ``uint8`` image;
    ``__getitem__`` adds the preprocessing. ``__getitem__`` returns ``(tensors, item index, image index,
    condition index, error message or None, missed)``: ``tensors`` is a tuple with one float32
    ``(3, crop, crop)`` tensor per preprocessing, ``None`` where ``uses[k]`` is false; an unreadable
    image (:class:`ImageLoadError`) yields ``None`` for ``tensors`` and the message instead of stopping
    the run; ``missed`` is true when JPEG 2000 could not land within its PSNR tolerance
    (:func:`robustness.distortions.distort_with_info`).

    Args:
        dataset: the images.
        conditions: condition ``k`` of an item is ``conditions[k]``.
        preprocessings: callables ``uint8 (H, W, 3) -> float32 (3, crop, crop)`` (a model's
            :class:`robustness.Preprocessing`), or a single one (the one-model form). A
            :class:`robustness.device_pipeline.DeviceInput` (a model on the device pipeline) gets the
            image undistorted for blur, noise and contrast (the device stage applies them) and returns
            it wrapped (:class:`~robustness.device_pipeline.NativeImage`); when only such entries want
            an item of those distortions, the worker does not distort it.
        seed: the base seed (:func:`image_seed`).
        items: int64 ``(n, 2)``: (image index, condition index).
        uses: bool ``(n, len(preprocessings))``: which preprocessings item k needs (default: all).
        codecs: the distortion store that JPEG and JPEG 2000 go through (``None``: computed directly).
    """

    def __init__(
        self,
        dataset: ImageDataset,
        conditions: Sequence[Condition],
        preprocessings,
        seed: int,
        items: np.ndarray,
        uses: np.ndarray | None = None,
        codecs: DistortionStore | None = None,
    ):
        self.dataset, self.codecs = dataset, codecs
        self.conditions = list(conditions)
        self.preprocessings = list(preprocessings) if isinstance(preprocessings, (list, tuple)) else [preprocessings]
        self.seed = seed
        self.items = np.asarray(items, dtype=np.int64).reshape(-1, 2)
        shape = (len(self.items), len(self.preprocessings))
        self.uses = np.ones(shape, dtype=bool) if uses is None else np.asarray(uses, dtype=bool).reshape(shape)
        self._cached: tuple[int, np.ndarray | None, str | None] | None = None

    def __len__(self) -> int:
        return len(self.items)

    def _image(self, image_index: int) -> tuple[np.ndarray | None, str | None]:
        if self._cached is None or self._cached[0] != image_index:
            try:
                self._cached = (image_index, self.dataset.load(image_index)[0], None)
            except ImageLoadError as error:
                self._cached = (image_index, None, str(error))
        return self._cached[1], self._cached[2]

    def distorted(self, image_index: int, condition_index: int) -> tuple[np.ndarray | None, str | None, bool]:
        """Image ``image_index`` under condition ``condition_index``: ``(uint8 (H, W, 3) RGB at native
        size, None, missed)``, or ``(None, error message, False)`` when the image cannot be read. The
        noise seed is :func:`image_seed` of (base seed, image id, distortion, level), so the result
        does not depend on the order, the batch or the worker."""
        image, error = self._image(image_index)
        if image is None:
            return None, error, False
        condition = self.conditions[condition_index]
        missed = False
        if condition.distortion != CLEAN:
            seed = image_seed(self.seed, self.dataset[image_index].image_id, condition.distortion, condition.level)
            # JPEG and JPEG 2000 through the distortion store (decoded from it once stored), if there is one
            codecs = self.codecs if self.codecs is not None and self.codecs.stores(condition.distortion) else None
            if condition.distortion == "jpeg2000":  # the one distortion with a tolerance it may miss
                with_info = distort_with_info if codecs is None else codecs.distort_with_info
                image, info = with_info(image, condition.distortion, condition.level, seed=seed)
                missed = not info.within_tolerance
            else:
                image = (distort if codecs is None else codecs.distort)(
                    image, condition.distortion, condition.level, seed=seed
                )
        return image, None, missed

    def __getitem__(self, index: int):
        image_index, condition_index = (int(v) for v in self.items[index])
        # device pipeline (DeviceInput): blur, noise and contrast are left to the device stage
        native = runs_on_device(self.conditions[condition_index].distortion)
        users = [p for p, use in zip(self.preprocessings, self.uses[index]) if use]
        if native and all(isinstance(p, DeviceInput) for p in users):
            (image, error), missed = self._image(image_index), False
        else:
            image, error, missed = self.distorted(image_index, condition_index)
        if image is None:
            return None, index, image_index, condition_index, error, False
        undistorted = self._image(image_index)[0] if native else image
        tensors = tuple(
            (preprocess(undistorted) if isinstance(preprocess, DeviceInput) else preprocess(image)) if use else None
            for preprocess, use in zip(self.preprocessings, self.uses[index])
        )
        return tensors, index, image_index, condition_index, None, missed


def _collate(batch):
    """``(tensors, has, item indices, image indices, condition indices, missed, failed)`` of a batch
    from :class:`_WorkItems`, over its ``n_ok`` readable items: ``tensors`` a list with, per
    preprocessing p, float32 ``(n_p, 3, crop, crop)`` (the items that have it, in batch order) or
    ``None``; ``has`` bool ``(n_ok, P)`` (which items have each); int64 ``(n_ok,)`` item, image and
    condition indices; bool ``(n_ok,)`` missed-tolerance flags; ``[(item index, image index, message),
    ...]`` for unreadable images. In a worker the tensors are built in shared memory (``default_collate``)."""
    ok = [b for b in batch if b[0] is not None]
    failed = [(b[1], b[2], b[4]) for b in batch if b[0] is None]
    count = len(ok[0][0]) if ok else 0
    has = torch.tensor([[t is not None for t in b[0]] for b in ok], dtype=torch.bool).reshape(len(ok), count)
    tensors = []
    for p in range(count):
        column = [b[0][p] for b in ok if b[0][p] is not None]
        if column and isinstance(column[0], NativeImage):  # device pipeline: native sizes, not stacked
            tensors.append([torch.from_numpy(c.array) for c in column])
        else:
            tensors.append(default_collate(column) if column else None)
    return (
        tensors,
        has,
        torch.tensor([b[1] for b in ok], dtype=torch.int64),
        torch.tensor([b[2] for b in ok], dtype=torch.int64),
        torch.tensor([b[3] for b in ok], dtype=torch.int64),
        torch.tensor([b[5] for b in ok], dtype=torch.bool),
        failed,
    )


def default_num_workers(device: str | torch.device) -> int:
    """DataLoader workers when none are given, from the CPUs this process may use (``cpus``: its
    affinity mask, ``os.sched_getaffinity(0)``, where the platform has one, e.g. a Slurm or
    ``taskset`` allocation of 8 cores on a 128-core node; else ``os.cpu_count()``).

    On the CPU ``min(2, cpus)``: the model's own threads need the other cores. On an accelerator
    ``cpus - 1``, but never fewer than on the CPU: the model no longer needs the CPU, so decoding and
    distorting are the bottleneck and every core but one does them; the one left is the main
    process's, which collates, copies batches to the device and reads back the top-5 (issue 12: a
    16-core GPU machine gets 15, where the old ``min(8, cpus)`` left half of it idle; 2 cores get 2).
    """
    affinity = getattr(os, "sched_getaffinity", None)
    cpus = len(affinity(0)) if affinity is not None else (os.cpu_count() or 1)
    on_cpu = min(2, cpus)
    return on_cpu if torch.device(device).type == "cpu" else max(on_cpu, cpus - 1)


_DEVICE_NOTES: set[tuple[str, str]] = set()  # (model, device) pairs already announced in this process


def inference_device(model: Classifier, device: str | torch.device | None = None) -> str:
    """The device ``model`` is evaluated on (issue 12).

    ``device`` ``None`` (automatic): ``cuda`` when available, else ``cpu``; but a model that declares
    the devices it supports (:attr:`robustness.Classifier.devices`, e.g. ``("cpu",)`` for the int8
    ``mobilenet_v2_quantized``) runs on the first of them instead, and says so once per process on
    stderr. An explicit ``device`` is checked by :func:`robustness.settings.check_device` (syntax,
    availability, ``cuda:N`` against ``torch.cuda.device_count()``) and must be supported.

    Returns:
        the device string (``"cpu"``, ``"cuda"``, ``"cuda:1"`` ...).

    Raises:
        ValueError: ``device`` is not a torch device or not available here, or ``model`` does not
            support it (the message names the model, the device and the supported ones).
    """
    devices = getattr(model, "devices", None)
    name = getattr(model, "name", type(model).__name__)
    if device is None or str(device).strip() == "":
        chosen = "cuda" if torch.cuda.is_available() else "cpu"
        if chosen == "cuda" and (devices is None or "cuda" in devices):
            set_cublas_workspace_config()  # before the model moves there (see inference_settings)
        if devices is not None and torch.device(chosen).type not in devices:
            fallback = devices[0]
            if (name, fallback) not in _DEVICE_NOTES:
                _DEVICE_NOTES.add((name, fallback))
                print(
                    f"robustness: model {name} runs on {fallback}: it supports {', '.join(devices)} only "
                    f"({chosen} is available)",
                    file=sys.stderr,
                )
            chosen = fallback
        return chosen
    text = check_device(str(device), "device")
    if devices is not None and torch.device(text).type not in devices:
        raise ValueError(f"model {name} cannot run on {text}: it supports {', '.join(devices)} only")
    return text


class DeterminismError(RuntimeError, ValueError):
    """CUDA inference cannot run deterministically: an operation of the model has no deterministic
    CUDA implementation, or ``$CUBLAS_WORKSPACE_CONFIG`` holds a value cuBLAS is not reproducible
    with (or came too late). A ``RuntimeError`` (what PyTorch raises) and a ``ValueError`` (bad input:
    the CLI prints it as one line and exits with status 2)."""


class DeterminismWarning(UserWarning):
    """``$CUBLAS_WORKSPACE_CONFIG`` had to be set after CUDA was initialised (see :func:`inference_settings`)."""


_CUBLAS_WARNED: list[bool] = []  # the late-variable warning, once per process


def _check_cublas_workspace_config() -> None:
    """Before deterministic algorithms go on: ``$CUBLAS_WORKSPACE_CONFIG`` unset is set (with one
    :class:`DeterminismWarning` per process when CUDA is already initialised, since the process may
    have made its first cuBLAS call already); a value cuBLAS is not reproducible with is refused."""
    value = os.environ.get(CUBLAS_WORKSPACE_VARIABLE)
    if value is not None and value.strip():
        if value not in CUBLAS_DETERMINISTIC_CONFIGS:
            raise DeterminismError(
                f"${CUBLAS_WORKSPACE_VARIABLE}={value!r}: cuBLAS is not reproducible with it; robustness runs CUDA "
                f"inference with deterministic algorithms, which need {' or '.join(CUBLAS_DETERMINISTIC_CONFIGS)} "
                f"(unset it, or export {CUBLAS_WORKSPACE_VARIABLE}={CUBLAS_DETERMINISTIC_CONFIGS[0]})"
            )
        return
    late = torch.cuda.is_initialized()
    set_cublas_workspace_config()
    if late and not _CUBLAS_WARNED:
        _CUBLAS_WARNED.append(True)
        warnings.warn(
            f"${CUBLAS_WORKSPACE_VARIABLE} was unset and CUDA was already initialised: robustness set it to "
            f"{CUBLAS_DETERMINISTIC_CONFIGS[0]}, which PyTorch honours only if this process has not yet made a "
            f"cuBLAS call; export {CUBLAS_WORKSPACE_VARIABLE}={CUBLAS_DETERMINISTIC_CONFIGS[0]} before starting "
            "Python to be sure",
            DeterminismWarning,
            stacklevel=4,
        )


def _determinism_error(error: RuntimeError) -> DeterminismError | None:
    """PyTorch's refusal under ``torch.use_deterministic_algorithms(True)`` as a :class:`DeterminismError`
    saying why robustness asks for determinism and what to do; ``None`` for any other error."""
    text = str(error)
    if "CUBLAS_WORKSPACE_CONFIG" in text:
        return DeterminismError(
            f"cuBLAS refused deterministic work: ${CUBLAS_WORKSPACE_VARIABLE} was not "
            f"{' or '.join(CUBLAS_DETERMINISTIC_CONFIGS)} at this process's first cuBLAS call (PyTorch reads it "
            f"once); export {CUBLAS_WORKSPACE_VARIABLE}={CUBLAS_DETERMINISTIC_CONFIGS[0]} before starting Python "
            f"(PyTorch: {text.splitlines()[0]})"
        )
    if "does not have a deterministic implementation" in text:
        operation = text.split(" does not have", 1)[0].strip()
        return DeterminismError(
            f"CUDA inference runs with torch.use_deterministic_algorithms(True), so that results are identical "
            f"for any batch size and with or without the cache, and the model uses {operation}, which has no "
            "deterministic CUDA implementation: replace that operation, or evaluate on the CPU (--device cpu)"
        )
    return None


@contextlib.contextmanager
def inference_settings(device: str | torch.device, *, allow_tf32: bool = False):
    """Inference numerics for ``device``, restored on exit (issue 12).

    On CUDA:

    * deterministic algorithms: ``torch.use_deterministic_algorithms(True, warn_only=False)``, and cuDNN
      picks deterministic algorithms without benchmarking by batch size
      (``torch.backends.cudnn.deterministic = True``, ``benchmark = False``). An operation with no
      deterministic CUDA implementation is an error (:class:`DeterminismError`), not a warning: a
      release gate must not pass on numbers that a re-run, another batch size or the prediction
      cache would not reproduce, and a warning scrolls by unseen (or, under ``-W error``, is an error
      anyway, without the explanation).
    * ``$CUBLAS_WORKSPACE_CONFIG``: cuBLAS is reproducible only with ``:4096:8`` or ``:16:8``, read once
      at the process's first cuBLAS call (NVIDIA cuBLAS docs, "Results reproducibility"; PyTorch docs,
      "Reproducibility"). Robustness sets it to ``:4096:8`` when it chooses a CUDA device, before the
      model moves there (:func:`robustness.settings.set_cublas_workspace_config`). Still unset here
      (this function used on its own), it is set now, with one :class:`DeterminismWarning` per process
      naming it if CUDA is already initialised (a cuBLAS call may have happened: then the first one
      here raises :class:`DeterminismError`). Another value raises :class:`DeterminismError`. The
      variable stays set after exit.
    * TF32 in matmuls and convolutions is off unless ``allow_tf32`` (``torch.backends.cuda.matmul.allow_tf32``,
      ``torch.backends.cudnn.allow_tf32``): on Ampere and later (A100, H100, H200) cuDNN uses TF32
      convolutions by default (PyTorch docs, "TensorFloat-32 (TF32) on Ampere (and later) devices"),
      which moves logits by ~1e-3 relative and so can swap near-tied classes.

    These switches are part of the cache key (:func:`robustness.cache.device_identity`, read inside
    this context). On any other device nothing is changed, so CPU numbers are untouched.

    Raises:
        DeterminismError: on entry, ``$CUBLAS_WORKSPACE_CONFIG`` holds a non-deterministic value; inside,
            PyTorch refused an operation for determinism (the original error is its ``__cause__``).
    """
    if torch.device(device).type != "cuda":
        yield
        return
    _check_cublas_workspace_config()
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = (cudnn.deterministic, cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32)
    algorithms = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    try:
        cudnn.deterministic, cudnn.benchmark = True, False
        cudnn.allow_tf32 = matmul.allow_tf32 = bool(allow_tf32)
        torch.use_deterministic_algorithms(True, warn_only=False)
        try:
            yield
        except RuntimeError as error:
            translated = _determinism_error(error)
            if translated is None:
                raise
            raise translated from error
    finally:
        cudnn.deterministic, cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32 = saved
        torch.use_deterministic_algorithms(algorithms[0], warn_only=algorithms[1])


class LineProgress:
    """Progress for a stream that is not a terminal (CI logs): plain lines, no carriage returns.

    Same interface as the part of ``tqdm`` the engine uses (``total``, ``update``, ``refresh``,
    ``close``). Writes ``"<desc>: <done>/<total> (<percent>%)"`` at most every ``interval`` seconds
    while work is done, and once more with the elapsed time on :meth:`close`.

    Args:
        desc: label at the start of each line (the model name).
        file: text stream (default ``sys.stderr``).
        interval: minimum seconds between two lines (0 = a line per update).
    """

    def __init__(self, desc: str, file=None, interval: float = 30.0):
        self.desc, self.file, self.interval = desc, file if file is not None else sys.stderr, float(interval)
        self.total, self.n = 0, 0
        self.start = self.last = time.monotonic()
        self.closed = False

    def _line(self, suffix: str = "") -> None:
        percent = 100.0 * self.n / self.total if self.total else 100.0
        self.file.write(f"{self.desc}: {self.n}/{self.total} ({percent:.0f}%){suffix}\n")
        self.file.flush()

    def refresh(self) -> None:
        """Nothing to redraw (lines are written by :meth:`update` and :meth:`close`)."""

    def update(self, n: int = 1) -> None:
        """Count ``n`` more items done; write a line if ``interval`` seconds passed since the last."""
        self.n += int(n)
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            self._line()

    def close(self) -> None:
        """Write the final line (once), with the elapsed seconds, if any work was counted."""
        if not self.closed:
            self.closed = True
            if self.total:
                self._line(f" in {time.monotonic() - self.start:.1f} s")


def progress_bar(desc: str, file=None):
    """A tqdm bar on a terminal, a :class:`LineProgress` (periodic plain lines, no ``\\r``) on any
    other stream. ``file`` defaults to ``sys.stderr``."""
    file = file if file is not None else sys.stderr
    isatty = getattr(file, "isatty", None)
    if isatty is not None and isatty():
        from tqdm.auto import tqdm

        return tqdm(total=0, unit="img", desc=desc, dynamic_ncols=True, file=file)
    return LineProgress(desc, file)


def top5_of(logits: torch.Tensor, model: Classifier, classes: ClassList) -> np.ndarray:
    """The top-5 class indices of each row of ``logits`` (float ``(N, C)``, C = ``len(classes)``):
    int64 ``(N, 5)``, best first; with C < 5 the top-C padded with -1 (never a label). Both engines
    use it (the Ray engine's inference actors call it).

    Raises:
        ValueError: ``logits`` is not 2-D or holds NaN or inf (the message names ``model``).
        robustness.labels.ClassListError: the width C is not the class count of ``classes``.
    """
    num_classes = len(classes)
    if logits.ndim != 2:
        raise ValueError(
            f"model {model.name} returned logits of shape {tuple(logits.shape)}, expected (N, {num_classes})"
        )
    if logits.shape[1] != num_classes:
        raise width_mismatch(
            model, logits.shape[1], classes, f"logits of shape {tuple(logits.shape)}, expected (N, {num_classes})"
        )
    if not torch.isfinite(logits).all():
        raise ValueError(f"model {model.name} returned non-finite logits (NaN or inf); its top-5 would be meaningless")
    top5 = logits.topk(min(5, num_classes), dim=1).indices.cpu().numpy()
    if top5.shape[1] < 5:  # fewer than 5 classes: pad with -1 (never a label)
        top5 = np.pad(top5, ((0, 0), (0, 5 - top5.shape[1])), constant_values=-1)
    return top5


def ray_task_environment() -> dict:
    """What a Ray read-and-distort task's outputs depend on, checked against the driver's by the Ray
    engine (:class:`robustness.ray_engine.RayEngine`, ``task_identity``): the library versions of the
    model key (:func:`robustness.cache._environment`: torch, torchvision, numpy, scipy, Pillow, libjpeg,
    OpenJPEG; the tasks read, distort and, for GPU actors, preprocess), the built-in distortions'
    :data:`robustness.distortions.DISTORTION_CODE_VERSION` and :data:`robustness.cache.ENGINE_VERSION`
    (image loading and seed rules). JSON-able dict."""
    from .cache import ENGINE_VERSION, _environment
    from .distortions import DISTORTION_CODE_VERSION

    return {"libraries": _environment(), "distortion_code": DISTORTION_CODE_VERSION, "engine": ENGINE_VERSION}


def ray_actor_environment(device) -> dict:
    """What a Ray inference actor's predictions on ``device`` depend on and the model key holds
    (:func:`robustness.cache.model_key`): the device's :func:`robustness.cache.device_identity` (read
    inside :func:`inference_settings`) and the library versions (:func:`robustness.cache._environment`).
    Checked against the driver's by the Ray engine (``actor_identity``). JSON-able dict."""
    from .cache import _environment, device_identity

    return {"device": device_identity(device), "libraries": _environment()}


class _Run:
    """One model's state in an evaluation: the prediction table, what is done, what came from the
    store, the images it could not read. It talks to the store only through its own
    :class:`robustness.cache.PredictionSession`; the work itself (distortion, preprocessing,
    batching) is shared between the runs of one :func:`evaluate` call (:func:`_infer`)."""

    def __init__(
        self,
        model: Classifier,
        dataset: ImageDataset,
        conditions: list[Condition],
        seed: int,
        device,
        session: PredictionSession,
        pipeline: str = "reference",
        codecs: DistortionStore | None = None,
    ):
        self.model, self.dataset, self.conditions, self.seed, self.device = model, dataset, conditions, seed, device
        self.pipeline = pipeline  # "reference" or "device" (robustness.device_pipeline)
        self.session, self.codecs = session, codecs
        self.num_classes = len(dataset.classes)
        size = (len(conditions), len(dataset))
        self.predictions = np.full(size + (5,), -1, dtype=np.int64)
        self.done = np.zeros(size, dtype=bool)
        self.missed = np.zeros(size, dtype=bool)  # the distortion missed its tolerance (JPEG 2000)
        self.served = np.zeros(size, dtype=bool)  # filled from the store (not computed in this run)
        self.skipped: dict[int, str] = {}
        self.engine = None  # the Ray engine (robustness.ray_engine) that runs this model, at engine_index
        self.engine_index = 0

    def fill_from_store(self, condition_indices: Iterable[int]) -> None:
        """Take what the store holds for ``condition_indices`` (pairs not yet done)."""
        for k in condition_indices:
            for i, entry in self.session.get(k).items():
                if entry.top5.max() >= self.num_classes:
                    continue  # a class the dataset's list does not have: not this run's answer, recompute
                if not self.done[k, i]:
                    self.predictions[k, i] = entry.top5
                    self.missed[k, i] = bool(entry.flags & FLAG_MISSED_TOLERANCE)
                    self.done[k, i] = True
                    self.served[k, i] = True

    def hand_back(self, ks: np.ndarray, iis: np.ndarray) -> None:
        """Give the store the predictions of pairs ``(ks[j], iis[j])`` computed in this run."""
        self.session.put(ks, iis, self.predictions[ks, iis], np.where(self.missed[ks, iis], FLAG_MISSED_TOLERANCE, 0))

    def todo(self, condition_indices: Iterable[int]) -> np.ndarray:
        """bool ``(conditions, images)``: the pairs of ``condition_indices`` not yet done, leaving out
        the images this run could not read."""
        todo = np.zeros_like(self.done)
        todo[list(condition_indices)] = True
        todo &= ~self.done
        if self.skipped:
            todo[:, sorted(self.skipped)] = False
        return todo

    def record(self, ks: np.ndarray, iis: np.ndarray, top5: np.ndarray, missed: np.ndarray) -> None:
        """Keep the predictions computed for pairs ``(ks[j], iis[j])`` and hand them to the store (which
        keeps them even if the run is interrupted later)."""
        self.predictions[ks, iis] = top5
        self.missed[ks, iis] = missed
        self.done[ks, iis] = True
        self.hand_back(ks, iis)

    def classify(self, batch: torch.Tensor) -> np.ndarray:
        """int64 ``(b, 5)`` top-5 class indices of a preprocessed batch ``(b, 3, crop, crop)``, best
        first (fewer than 5 classes: padded with -1, never a label).

        Raises:
            ValueError: logits that are not ``(b, classes)`` (a width mismatch is a
                :class:`robustness.labels.ClassListError`) or not finite.
        """
        on_cuda = torch.device(self.device).type == "cuda"
        return top5_of(self.model(batch.to(self.device, non_blocking=on_cuda)), self.model, self.dataset.classes)

    def device_entries(self, image_index: np.ndarray, condition_index: np.ndarray) -> list:
        """Per pair, what the device stage applies (:func:`robustness.device_pipeline.device_stage`):
        ``(distortion, level, image_seed)`` for blur, noise and contrast, ``None`` for clean or a
        distortion the worker applied."""
        entries = []
        for i, k in zip(image_index.tolist(), condition_index.tolist()):
            condition = self.conditions[k]
            if condition.distortion == CLEAN or not runs_on_device(condition.distortion):
                entries.append(None)
            else:
                seed = image_seed(self.seed, self.dataset[i].image_id, condition.distortion, condition.level)
                entries.append((condition.distortion, condition.level, seed))
        return entries

    def verification_sample(self) -> np.ndarray:
        """int64 ``(m, 2)`` (image index, condition index): the seeded sample of served pairs to
        re-compute, image-major. It has :func:`verification_sample_size` pairs, drawn with the
        session's :meth:`~robustness.cache.PredictionSession.sample_seed` of the served conditions
        (on disk: derived from the model key and their condition keys, so the same run re-checks
        the same pairs)."""
        served = np.argwhere(self.served)  # (condition index, image index), condition-major
        count = verification_sample_size(len(served))
        if count == 0:
            return np.empty((0, 2), dtype=np.int64)
        seed = self.session.sample_seed(sorted(set(served[:, 0].tolist())))
        picked = served[np.sort(np.random.default_rng(seed).choice(len(served), count, replace=False))]
        items = np.ascontiguousarray(picked[:, ::-1])  # (image index, condition index)
        return items[np.lexsort((items[:, 1], items[:, 0]))]  # image-major: each image decoded once

    def discard_served(self) -> None:
        """Have the store discard its entries, hand back again the predictions computed in this run
        and forget every prediction served from the store (they will be recomputed)."""
        self.session.discard()
        computed = np.argwhere(self.done & ~self.served)  # (condition index, image index), condition-major
        if len(computed):
            self.hand_back(computed[:, 0], computed[:, 1])
        self.done &= ~self.served
        self.predictions[self.served] = -1
        self.served[:] = False


def _sharing_key(preprocessing) -> tuple:
    """Models whose preprocessings have the same key share the preprocessed tensor: the type,
    :meth:`robustness.Preprocessing.to_dict` (JSON, keys sorted) and any other instance attribute (a
    subclass's own setting, which ``to_dict`` does not list) as JSON; without ``to_dict``, or with an
    attribute that is not JSON, the object itself (no sharing)."""
    to_dict = getattr(preprocessing, "to_dict", None)
    if callable(to_dict):
        fields = to_dict()
        extra = {k: v for k, v in getattr(preprocessing, "__dict__", {}).items() if k not in fields}
        try:
            state = json.dumps([fields, extra], sort_keys=True, allow_nan=False)
        except (TypeError, ValueError):  # not JSON: compared by identity
            return ("object", id(preprocessing))
        return (type(preprocessing).__module__, type(preprocessing).__qualname__, state)
    return ("object", id(preprocessing))


def _infer(runs: Sequence[_Run], items: np.ndarray, needs: np.ndarray, batch_size: int, num_workers: int, bar):
    """Distort each work item once and run every model that needs it on it, with its own
    preprocessing (models with equal preprocessings share one tensor: :func:`_sharing_key`).

    Args:
        runs: the models' runs (same dataset, conditions and seed).
        items: int64 ``(n, 2)`` (image index, condition index), image-major.
        needs: bool ``(n, len(runs))``: run r needs item k; an item no run needs is not distorted.

    Yields ``(run index, condition indices (b,), image indices (b,), top-5 int64 (b, 5), missed bool
    (b,))`` per run and batch; a run is fed, per batch of ``batch_size`` items, the rows it needs (all
    of them when every model needs every item, as in a one-model run). Unreadable images are recorded
    in the ``skipped`` of each run that needed them.
    """
    keys: dict[tuple, int] = {}
    preprocessings, group = [], []
    for run in runs:
        entry = DeviceInput(run.model.preprocessing) if run.pipeline == "device" else run.model.preprocessing
        key = _sharing_key(entry)
        if key not in keys:
            keys[key] = len(preprocessings)
            preprocessings.append(entry)
        group.append(keys[key])
    if bar is not None:
        bar.total = (bar.total or 0) + len(items)
        bar.refresh()
    first = runs[0]
    if first.engine is not None:  # the Ray engine: the same per-item work on a cluster
        yield from _infer_elsewhere(runs, items, needs, preprocessings, group, batch_size, bar)
        return
    uses = np.zeros((len(items), len(preprocessings)), dtype=bool)
    for r, p in enumerate(group):
        uses[:, p] |= needs[:, r]
    batches = math.ceil(len(items) / batch_size)
    num_workers = min(num_workers, batches) if batches > 1 else 0
    work = _WorkItems(first.dataset, first.conditions, preprocessings, first.seed, items, uses, first.codecs)
    on_cuda = any(torch.device(run.device).type == "cuda" for run in runs)
    loader = DataLoader(
        work, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=_collate, pin_memory=on_cuda
    )
    with torch.inference_mode():
        for tensors, has, item_index, image_index, condition_index, missed, failed in loader:
            for k, i, message in failed:
                for r in np.flatnonzero(needs[k]):
                    runs[r].skipped.setdefault(i, message)
            if len(item_index):
                item_index, has = item_index.numpy(), has.numpy()
                image_index, condition_index, missed = image_index.numpy(), condition_index.numpy(), missed.numpy()
                for r, run in enumerate(runs):
                    wanted = needs[item_index, r]
                    if not wanted.any():
                        continue
                    p = group[r]
                    batch = tensors[p]  # the rows of the items that have preprocessing p: a superset of wanted
                    if not wanted.all():
                        rows = np.cumsum(has[:, p])[wanted] - 1
                        batch = [batch[j] for j in rows] if isinstance(batch, list) else batch[torch.from_numpy(rows)]
                    if isinstance(preprocessings[p], DeviceInput):
                        entries = run.device_entries(image_index[wanted], condition_index[wanted])
                        batch = preprocessings[p].stage(batch, entries, run.device)
                    top5 = run.classify(batch)
                    yield r, condition_index[wanted], image_index[wanted], top5, missed[wanted]
            if bar is not None:
                bar.update(len(failed) + len(item_index))


def _infer_elsewhere(runs, items, needs, preprocessings, group, batch_size: int, bar):
    """:func:`_infer` on the runs' Ray engine (:meth:`robustness.ray_engine.RayEngine.infer`), which
    calls :meth:`_WorkItems.distorted` in its tasks and :func:`top5_of` in its actors."""
    first = runs[0]
    work = _WorkItems(first.dataset, first.conditions, preprocessings, first.seed, items[:0], codecs=first.codecs)
    indices = [run.engine_index for run in runs]
    for r, ks, iis, top5, missed, failed, count in first.engine.infer(work, group, items, needs, batch_size, indices):
        for i, message in failed:
            runs[r].skipped.setdefault(i, message)
        if len(ks):
            yield r, ks, iis, top5, missed
        if bar is not None and count:
            bar.update(count)


def _compute(runs: Sequence[_Run], condition_indices: Sequence[int], batch_size: int, num_workers: int, bar) -> None:
    """Run inference for every (image, condition) of ``condition_indices`` that one of ``runs`` has
    not done yet: each pair is distorted once, for the runs that need it (:func:`_infer`)."""
    condition_indices = list(condition_indices)
    todo = np.stack([run.todo(condition_indices) for run in runs])  # (runs, conditions, images)
    items = np.argwhere(todo.any(axis=0).T)  # image-major work list: (image index, condition index)
    if len(items) == 0:
        return
    needs = todo[:, items[:, 1], items[:, 0]].T  # (items, runs)
    for r, ks, iis, top5, missed in _infer(runs, items, needs, batch_size, num_workers, bar):
        runs[r].record(ks, iis, top5, missed)


def identity_condition(condition: Condition) -> Condition:
    """The condition whose predictions ``condition`` has: the clean condition for a distortion at its
    identity level (:attr:`robustness.distortions.Distortion.identity`: blur, noise and contrast at 0,
    where the output equals the input), else ``condition`` itself. The engine computes (and caches)
    such a condition once, as clean, and reports it under its own name and level. A registered
    distortion's declared identity is checked first (:func:`_check_identity`), since serving the clean
    predictions for a level that does change the image would report numbers never measured.

    Raises:
        ValueError: a registered distortion changes a probe image at its declared identity level (the
            message names the distortion and the level).
    """
    if condition.distortion == CLEAN:
        return condition
    spec = get_distortion(condition.distortion)
    if spec.identity is not None and condition.level == spec.identity:
        _check_identity(spec)
        return Condition(CLEAN, 0)
    return condition


_IDENTITIES_CHECKED: set[tuple] = set()  # registered distortions whose declared identity held


def _check_identity(spec) -> None:
    """Raise ``ValueError`` unless ``spec`` (a :class:`robustness.distortions.Distortion`) returns a
    fixed probe image (``uint8 (17, 23, 3)``, seeded) unchanged at its identity level, for an ``int``
    seed and a :class:`numpy.random.SeedSequence` (as the engine passes). The built-in identities
    (blur, noise, contrast at 0) hold by construction and are tested (``tests/test_properties.py``);
    a registered distortion's is checked once per process and definition."""
    if spec.name in ("blur", "noise", "contrast"):
        return
    key = (spec.name, spec.function, spec.identity, spec.code_version)
    if key in _IDENTITIES_CHECKED:
        return
    from .names import format_level

    probe = np.random.default_rng(12).integers(0, 256, size=(17, 23, 3), dtype=np.uint8)
    for seed in (0, image_seed(0, "identity-probe", spec.name, spec.identity)):
        if not np.array_equal(distort(probe, spec.name, spec.identity, seed=seed), probe):
            raise ValueError(
                f"distortion {spec.name!r} declares identity level {format_level(spec.identity)} "
                "(register_distortion(identity=...)), but at that level it changed a probe image; "
                f"an identity level is evaluated as the clean image, so fix or remove identity= "
                f"(robustness.testing.check_distortion checks it)"
            )
    _IDENTITIES_CHECKED.add(key)


def evaluate(
    model: Classifier | str | Sequence[Classifier | str],
    dataset: ImageDataset,
    distortions: Iterable[str] | Mapping[str, Sequence[float]] | Sequence[Condition] | None = None,
    *,
    clean: bool = True,
    seed: int = 0,
    batch_size: int = 32,
    num_workers: int | None = None,
    device: str | torch.device | None = None,
    pipeline: str | None = "auto",
    progress: bool = False,
    cache: PredictionStore | str | os.PathLike | bool | None = None,
    restrict_to_dataset_classes: bool = False,
    allow_tf32: bool = False,
    engine: str = "local",
    ray_address: str | None = None,
) -> list[ConditionResult] | dict[str, list[ConditionResult]]:
    """Top-1 / top-5 / balanced accuracy of ``model`` on ``dataset`` under each distortion level, plus clean.

    Several models in one call: pass a list or tuple of models (``evaluate([a, b], dataset, ...)``).
    Each (image, condition) is then read and distorted once and fed to every model that still needs
    it, each with its own preprocessing (models whose :meth:`robustness.Preprocessing.to_dict` is
    equal share the preprocessed tensor), on its own device (:func:`inference_device`), with its own
    cache session (the store keys each model separately), its own re-check of what the store served
    and its own unreadable-image bookkeeping; the results are identical to one call per model.

    A condition at its distortion's identity level (contrast, blur or noise at 0:
    :func:`identity_condition`) is the clean image: it is computed once, as clean (and cached as
    clean), and reported under its own distortion and level. A repeated condition is computed once.

    The model's output width must equal the dataset's class count (``len(dataset.classes)``;
    :func:`robustness.labels.check_output_width`), checked before any image is read.

    Args:
        model: a :class:`Classifier` or a registered model name; or a list or tuple of them (model
            names must be unique).
        dataset: labelled images (:func:`robustness.load_dataset`).
        distortions: distortion names (paper levels), a ``{name: levels}`` mapping, a sequence of
            :class:`Condition`, or ``None`` for all five distortions at the paper's levels.
        clean: also evaluate the undistorted images (ignored when conditions are given explicitly).
        seed: base seed for stochastic distortions.
        batch_size: images per forward pass (does not change the numbers).
        num_workers: DataLoader worker processes (default :func:`default_num_workers` of the models'
            devices, the largest; 0 = in-process).
        device: inference device (default: CUDA when available, else CPU; a model that declares
            its devices runs on one of them: :func:`inference_device`). Checked by
            :func:`robustness.settings.check_device`. Float inputs are cast to the model's parameter
            dtype (:attr:`robustness.Classifier.input_dtype`; bf16/fp16 models), which is keyed in the
            cache through the model's tensor dtypes.
        pipeline: where blur, noise, contrast and the preprocessing run
            (:mod:`robustness.device_pipeline`): ``"reference"`` (numpy / scipy / Pillow in the
            DataLoader workers: the paper's numbers), ``"device"`` (workers only decode and run JPEG /
            JPEG 2000; the rest are torch ops on the model's device; results differ from the reference
            only within the tolerance in docs/caching.md) or ``"auto"`` (default; ``None`` too):
            ``device`` on CUDA, else ``reference``, per model
            (:func:`robustness.device_pipeline.resolve_pipeline`: a model whose preprocessing the
            device path cannot reproduce falls back to ``reference`` with a one-line note). With
            ``engine="ray"`` it is always ``reference`` (``"device"`` is a ``ValueError``). The
            choice is in the cache's condition keys.
        progress: show progress on stderr: a tqdm bar on a terminal, plain periodic lines
            (:class:`LineProgress`, no carriage returns) on anything else, e.g. a CI log. It counts
            distorted (image, condition) pairs.
        cache: per-image prediction cache (:mod:`robustness.cache`): a :class:`PredictionCache`, a
            folder, ``True`` for the default folder, or ``None``/``False`` (default) for none; or
            any other :class:`robustness.cache.PredictionStore`.
            Cached (image, condition) pairs are not recomputed; new ones are written as they are
            computed, so an interrupted run resumes. Results are identical with or without it:
            the model is keyed by its behaviour (:func:`robustness.cache.model_key`), and a run
            that reads entries re-computes a seeded sample of them
            (:func:`robustness.cache.verification_sample_size`: max(4, 1%)) and compares the top-5;
            on any difference it issues one :class:`robustness.cache.CacheWarning`, deletes all of
            the model key's entries and recomputes everything. A model whose outputs on the
            fingerprint's probe images differ between two consecutive calls (not deterministic)
            is evaluated without the cache, with a :class:`CacheWarning` (checked before a model
            key's first entries are written, so a fresh key costs two probe runs, a known one one).
            For any class list but ImageNet-1k the list's digest joins each condition's key.
            With an on-disk :class:`~robustness.cache.PredictionCache`, JPEG and JPEG 2000 outputs go
            through the distortion store beside it (``<folder>/distortions``,
            :class:`robustness.distortion_store.DistortionStore`): encoded once, decoded on reuse by any
            model or run, bit-identical; without a cache nothing is stored.
            With several models, the models take the store's per-condition claims one after the
            other; while one model holds a group, the pairs of that group the later models still
            miss are computed with it (so a concurrent process may compute some of those too; it
            never deadlocks, and results do not change).
        restrict_to_dataset_classes: score an ImageNet-1k model on a subset of its classes (the
            ImageNet-R / ImageNet-A convention): its logits are restricted to the dataset's classes
            (:func:`robustness.labels.restrict_to_classes`); when the dataset's list is the full
            ImageNet-1k one it is first cut to the classes that have images
            (:meth:`robustness.ImageDataset.present_classes`).
        allow_tf32: on CUDA, allow TF32 matmuls and convolutions (faster on Ampere and later, less
            exact); default off. Either way CUDA inference runs with deterministic algorithms
            (:func:`inference_settings`). No effect on the CPU. The setting ``allow_tf32`` (CLI
            ``--allow-tf32``, pytest ``--robustness-allow-tf32``, ...) passes it.
        engine: where the per-item work runs: ``"local"`` (DataLoader workers on this machine) or
            ``"ray"`` (a Ray cluster through Ray Data, :mod:`robustness.ray_engine`: read and distort
            in CPU tasks, preprocess and infer in an actor pool, one actor per GPU when a device is
            CUDA). The stores, verification and metrics stay in this process; the results are the same
            (bit-identical top-5 on the CPU).
        ray_address: the Ray cluster to join with ``engine="ray"`` (``ray.init(address=...)``;
            ``None``: ``$RAY_ADDRESS`` or a local instance); with another engine it is a ``ValueError``.

    Returns:
        one :class:`ConditionResult` per condition, in the order given (clean first). Images that
        cannot be read (:class:`ImageLoadError`) are left out of every condition, listed in each
        result's ``skipped`` and reported with a :class:`SkippedImagesWarning`. For a list or tuple
        of models: a ``dict`` model name -> that list, in the order the models were given.

    Raises:
        ImportError: ``engine="ray"`` without Ray Data installed (``pip install 'robustness[ray]'``).
        ValueError: unknown engine, a ``ray_address`` without ``engine="ray"``, distortion or model name, a level outside a distortion's range, an empty
            dataset, every image unreadable, a device that is not available here or that the model
            does not support (:func:`inference_device`), an empty list of models or two models with
            the same name; an unknown ``pipeline``, or ``"device"`` for a model whose preprocessing the
            device path cannot reproduce.
        DeterminismError: on CUDA, the model uses an operation without a deterministic implementation,
            or ``$CUBLAS_WORKSPACE_CONFIG`` is not deterministic (:func:`inference_settings`).
        robustness.labels.ClassListError (a ``ValueError``): the model's output width is not the
            dataset's class count, or a restricted model lacks one of the dataset's classes.
    """
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; expected one of {', '.join(ENGINES)}")
    if ray_address is not None and engine != "ray":  # else the work silently stays on this machine
        raise ValueError(
            f"ray_address {ray_address!r} (--ray-address) is the Ray cluster of engine 'ray', but this evaluation "
            f"runs on engine {engine!r}: add engine='ray' (--engine ray), or drop the address"
        )
    several = isinstance(model, (list, tuple))
    models = [load_model(m) if isinstance(m, str) else m for m in (model if several else [model])]
    if not models:
        raise ValueError("evaluate: the list of models is empty; give at least one model")
    names = [m.name for m in models]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(
            f"evaluate: model names must be unique, got {', '.join(map(repr, repeated))} more than once "
            f"(in {names}); give each model its own name (load_model(..., model_name=NAME))"
        )
    if len(dataset) == 0:
        raise ValueError("cannot evaluate on an empty dataset")
    if restrict_to_dataset_classes:
        if dataset.classes.is_imagenet:
            dataset = dataset.present_classes()
        models = [restrict_to_classes(m, dataset.classes) for m in models]
    for m in models:
        check_output_width(m, dataset.classes, probe=False)  # unrecorded width: checked on the first batch
    if distortions is not None and not isinstance(distortions, (Mapping, str)):
        distortions = list(distortions)
    if distortions and all(isinstance(c, Condition) for c in distortions):
        conditions = list(distortions)
    else:
        conditions = conditions_for(distortions, clean=clean)
    if not conditions:
        raise ValueError("nothing to evaluate: no distortions given and clean=False")
    devices = [inference_device(m, device) for m in models]
    if engine == "ray":  # the Ray engine preprocesses in its CPU tasks or actors: the reference path
        if pipeline is not None and str(pipeline).strip().lower() == "device":
            raise ValueError(
                "pipeline device runs with the local engine only; with engine ray use pipeline reference or auto"
            )
        if pipeline is not None and str(pipeline).strip().lower() not in ("", "auto", "reference"):
            resolve_pipeline(pipeline, devices[0], models[0])  # raises, naming the choices
        pipeline = "reference"
    pipelines = [resolve_pipeline(pipeline, d, m) for m, d in zip(models, devices)]
    if num_workers is None:
        num_workers = max(default_num_workers(d) for d in devices)
    models = [m.to(d).eval() for m, d in zip(models, devices)]
    elsewhere = None  # the Ray engine when asked for: joined (ray.init) before any work
    if engine == "ray":
        elsewhere = RayEngine(
            models,
            devices,
            score=functools.partial(top5_of, classes=dataset.classes),
            settings=functools.partial(inference_settings, allow_tf32=allow_tf32),
            address=ray_address,
            # every node must compute what the driver's keys promise (else its predictions would be
            # cached under the driver's model key): checked before any of them reaches the store
            task_identity=ray_task_environment,
            actor_identity=ray_actor_environment,
        )
    store = resolve_store(cache)
    codecs = DistortionStore.beside(store.root) if isinstance(store, PredictionCache) else None  # beside the cache
    if codecs is not None:
        codecs.tidy()  # once per run: temporary files of writers killed mid-write, older than an hour
    requested = conditions
    # an identity level is the clean image and a repeated condition is one condition: each computed once
    computed_as = [identity_condition(c) for c in requested]
    conditions = list(dict.fromkeys(computed_as))
    with contextlib.ExitStack() as numerics:
        for d in dict.fromkeys(devices):  # before the store keys a model's device
            numerics.enter_context(inference_settings(d, allow_tf32=allow_tf32))
        bar = progress_bar(", ".join(names)) if progress else None
        try:
            # closing a session writes what is unwritten, also on an error or Ctrl-C
            with contextlib.ExitStack() as sessions:
                runs = []
                for m, d, p in zip(models, devices, pipelines):
                    extra = {"pipeline": p} if p == "device" else {}  # a store without the keyword: reference only
                    session = sessions.enter_context(store.open_run(m, d, dataset, conditions, seed, **extra))
                    runs.append(_Run(m, dataset, conditions, seed, d, session, p, codecs))
                    runs[-1].engine, runs[-1].engine_index = elsewhere, len(runs) - 1
                for lead in range(len(runs)):
                    # the lead model's claimed group; the later models' missing pairs of it come along
                    for group in runs[lead].session.claim(range(len(conditions))):
                        for run in runs[lead:]:
                            run.fill_from_store(group)
                        _compute(runs[lead:], group, batch_size, num_workers, bar)
                _verify_served(runs, batch_size, num_workers, bar)
        finally:
            if bar is not None:
                bar.close()

    results = {}
    for run in runs:
        keep = np.array([i not in run.skipped for i in range(len(dataset))])
        if not keep.any():
            raise ValueError(f"no image of {dataset!r} could be read; first error: {next(iter(run.skipped.values()))}")
        skipped = {dataset[i].image_id: message for i, message in sorted(run.skipped.items())}
        if skipped:
            listing = "; ".join(skipped.values())
            warnings.warn(
                f"{run.model.name + ': ' if several else ''}skipped {len(skipped)} unreadable image(s), "
                f"left out of every condition: {listing}",
                SkippedImagesWarning,
                stacklevel=2,
            )
        labels = np.asarray([sample.label for sample in dataset], dtype=np.int64)[keep]
        image_ids = [sample.image_id for sample, k in zip(dataset, keep) if k]
        assert run.done[:, keep].all(), "internal error: an (image, condition) pair was not evaluated"
        results[run.model.name] = [
            _result(run, condition, conditions.index(computed), keep, labels, image_ids, skipped)
            for condition, computed in zip(requested, computed_as)
        ]
    return results if several else results[runs[0].model.name]


def _result(
    run: _Run,
    condition: Condition,
    k: int,
    keep: np.ndarray,
    labels: np.ndarray,
    image_ids: list[str],
    skipped: dict[str, str],
) -> ConditionResult:
    """The :class:`ConditionResult` of ``condition``, from row ``k`` of ``run``'s predictions (the
    condition it was computed as) at the readable images ``keep``."""
    predictions = run.predictions[k][keep]
    correct1, correct5 = correct(predictions, labels, "top1"), correct(predictions, labels, "top5")
    return ConditionResult(
        model=run.model.name,
        distortion=condition.distortion,
        level=condition.level,
        top1=float(correct1.mean()),
        top5=float(correct5.mean()),
        n=int(keep.sum()),
        image_ids=image_ids,
        labels=labels,
        predictions=predictions.copy(),
        skipped=dict(skipped),
        tolerance_misses=int(run.missed[k][keep].sum()),
        balanced_accuracy=balanced_accuracy(labels, predictions[:, 0]),
        classes=run.dataset.classes,
        pipeline=run.pipeline,
    )


def _verify_served(runs: Sequence[_Run], batch_size: int, num_workers: int, bar) -> None:
    """Re-check a sample of what each run read from its store (:meth:`_Run.verification_sample`; the
    samples of all runs distorted once, :func:`_infer`), comparing the top-5 exactly (the same five
    class indices in the same order). For each run with a mismatch: warn once, have its store
    discard the model's entries and recompute every pair that was served (handing the fresh
    predictions back)."""
    samples = [run.verification_sample() for run in runs]
    if not any(len(sample) for sample in samples):
        return
    items, inverse = np.unique(np.concatenate(samples), axis=0, return_inverse=True)  # image-major
    inverse = inverse.reshape(-1)
    needs = np.zeros((len(items), len(runs)), dtype=bool)
    start = 0
    for r, sample in enumerate(samples):
        needs[inverse[start : start + len(sample)], r] = True
        start += len(sample)
    mismatches, checked = [0] * len(runs), [0] * len(runs)
    for r, ks, iis, top5, _ in _infer(runs, items, needs, batch_size, num_workers, bar):
        checked[r] += len(ks)
        mismatches[r] += int((runs[r].predictions[ks, iis] != top5).any(axis=1).sum())
    wrong = [r for r in range(len(runs)) if mismatches[r]]
    for r in wrong:
        warnings.warn(
            f"robustness cache: cached predictions of {runs[r].model.name} disagree with the model on "
            f"{mismatches[r]}/{checked[r]} re-checked (image, condition) pairs; discarding its cache entries "
            "and recomputing",
            CacheWarning,
            stacklevel=3,
        )
        runs[r].discard_served()
    if wrong:
        _compute([runs[r] for r in wrong], range(len(runs[0].conditions)), batch_size, num_workers, bar)
