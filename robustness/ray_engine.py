"""The Ray engine: the local engine's per-item work, run on a Ray cluster with Ray Data (issue 12).

:func:`robustness.evaluate` (``engine="ray"``) keeps everything but the computing in the driver
process: the prediction store session (which pairs are stored, ``put`` of new ones, so the cache
format and its atomic writes are the local engine's), the verification sample and the metrics. What
it hands this module is a list of work items, int64 ``(n, 2)`` (image index, condition index), and
:meth:`RayEngine.infer` runs them as one Ray Data pipeline:

1. the items become a dataset of blocks (image-major, so a task decodes each image once for its
   conditions);
2. CPU **tasks** (``map_batches`` with a function) read and distort each item with the local
   engine's own per-item function (``robustness.evaluation._WorkItems.distorted``: the image's
   loading rules, :func:`robustness.distortions.distort` / ``distort_with_info`` and the seed of
   :func:`robustness.evaluation.image_seed`, which depends on (base seed, image id, distortion,
   level) only, never on the worker);
3. an **actor pool** (``map_batches`` with a callable class, ``concurrency``) applies the model's
   preprocessing and runs the model: one actor per GPU (``num_gpus=1``) when the inference device
   is CUDA, else CPU actors; the top-5 come from :func:`robustness.evaluation.top5_of`. For GPU
   actors the preprocessing runs at the end of step 2 instead (:func:`preprocess_where`);
4. the driver iterates the output and yields one batch at a time to the engine, which hands it to
   the store as it comes.

Ray retries a task whose worker died and restarts a dead actor and re-runs its batch (Ray Data's
defaults: ``max_restarts=-1``, ``max_task_retries=-1`` for actor pools); the driver drops a pair
it has already received (a re-run batch) and fails, naming it, on a pair that arrives twice with
different predictions or not at all, so every pair reaches the store exactly once.

This module imports no package module (the engine passes its own functions in) and neither torch
nor ray at import time: ``import robustness`` stays free of both. Ray is an optional extra:
``pip install 'robustness[ray]'``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import numpy as np

__all__ = ["RayEngine", "RayEngineError", "require_ray"]

#: Largest number of work items in one block of the input dataset (one CPU task).
MAX_BLOCK_ITEMS = 256

#: Bytes of memory each read-and-distort task asks Ray for: its worker process with numpy, Pillow
#: and torch imported (445 MiB peak measured here by Ray Data on the test's tiny images) plus a
#: block of :data:`MAX_BLOCK_ITEMS` distorted ImageNet images (~0.5 MB each at native size, ~130 MB).
TASK_MEMORY = 2**30


class RayEngineError(RuntimeError):
    """A work item came back from the cluster twice with different predictions, or not at all."""


def require_ray():
    """Import and return ``ray`` with Ray Data.

    Raises:
        ImportError: Ray (with Ray Data) is not installed; the message says how to install it.
    """
    try:
        import ray
        import ray.data  # Ray Data ships in the ray[data] extra
    except ImportError as error:
        raise ImportError(
            f"the Ray engine (engine='ray', --engine ray) needs Ray Data, which is not installed ({error}); "
            "install it with: pip install 'robustness[ray]'"
        ) from error
    return ray


def _blocks(items: np.ndarray, cpus: int) -> list:
    """``items`` cut into pyarrow tables of at most :data:`MAX_BLOCK_ITEMS` rows, about four per CPU,
    in the order given (image-major)."""
    import pyarrow as pa

    per_block = max(1, min(MAX_BLOCK_ITEMS, math.ceil(len(items) / max(1, 4 * cpus))))
    return [
        pa.table(
            {"image_index": items[start : start + per_block, 0], "condition_index": items[start : start + per_block, 1]}
        )
        for start in range(0, len(items), per_block)
    ]


def preprocess_where(on_gpu: bool) -> str:
    """Where the model's preprocessing runs: ``"tasks"`` (beside the distortion, on every CPU of the
    cluster) for GPU actors, whose one CPU would otherwise cap the node at ~200 items/s (the estimate in
    docs/cluster.md); ``"actors"`` for CPU actors (the same CPU cost either way, and a smaller
    ``uint8`` image than a ``float32`` tensor crosses the object store when the crop is smaller)."""
    return "tasks" if on_gpu else "actors"


def _distort_batch(batch: dict, *, work, preprocess: bool = False) -> dict:
    """Ray task body: read and distort each item of ``batch`` (numpy columns ``image_index``,
    ``condition_index``) with ``work.distorted``. Returns the batch with ``image`` (object array of
    uint8 ``(H, W, 3)``; a 1x1 placeholder for an unreadable image) or, with ``preprocess``,
    ``tensor`` (float32 ``(n, 3, crop, crop)``, ``work.preprocessing`` applied; zeros for an
    unreadable image), ``error`` (message or "") and ``missed`` (bool: JPEG 2000 missed its PSNR
    tolerance)."""
    images, errors, missed = [], [], []
    for i, k in zip(batch["image_index"].tolist(), batch["condition_index"].tolist()):
        image, error, miss = work.distorted(i, k)
        if preprocess:
            images.append(None if image is None else work.preprocessing(image).numpy())
        else:
            images.append(np.zeros((1, 1, 3), np.uint8) if image is None else image)
        errors.append(error or "")
        missed.append(bool(miss))
    if preprocess:
        shape = next((t.shape for t in images if t is not None), None)
        if shape is None:  # no readable image in the block: placeholders of the network's input shape
            shape = (3, work.preprocessing.crop_size, work.preprocessing.crop_size)
        column = {"tensor": np.stack([np.zeros(shape, np.float32) if t is None else t for t in images])}
    else:
        column = {"image": np.empty(len(images), dtype=object)}
        column["image"][:] = images
    return {
        "image_index": batch["image_index"],
        "condition_index": batch["condition_index"],
        **column,
        "error": np.asarray(errors, dtype=object),
        "missed": np.asarray(missed, dtype=bool),
    }


class _Infer:
    """Ray actor: the model's preprocessing and forward pass, top-5 per item (``score``).

    Constructed once per actor from the model in the object store (``model_ref``), moved to
    ``device`` (on a GPU actor ``cuda`` is the GPU Ray assigned to it); ``settings()`` is the
    engine's inference-numerics context (deterministic cuDNN, TF32 off unless allowed)."""

    def __init__(self, model_ref, device: str, score: Callable, settings: Callable):
        import ray
        import torch

        (model,) = ray.get([model_ref])
        self.torch, self.device, self.score, self.settings = torch, device, score, settings
        self.model = model.to(device).eval()

    def __call__(self, batch: dict) -> dict:
        torch = self.torch
        errors = batch["error"]
        ok = np.array([not e for e in errors], dtype=bool)
        top5 = np.full((len(errors), 5), -1, dtype=np.int64)
        if ok.any():
            if "tensor" in batch:  # preprocessed in the tasks
                tensors = torch.from_numpy(np.ascontiguousarray(batch["tensor"][ok]))
            else:
                tensors = torch.stack(
                    [self.model.preprocessing(image) for image, good in zip(batch["image"], ok) if good]
                )
            with self.settings(), torch.inference_mode():
                logits = self.model(tensors.to(self.device))
                top5[ok] = self.score(logits, self.model)
        return {
            "image_index": batch["image_index"],
            "condition_index": batch["condition_index"],
            "top5": top5,
            "missed": batch["missed"],
            "error": errors,
        }


def _original_error(error: BaseException) -> BaseException:
    """The user-code exception behind Ray's wrappers (``RayTaskError.cause``, ``__cause__`` chain),
    so a model's ``ValueError`` reaches the caller as itself; ``error`` when there is none."""
    seen = set()
    current = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        cause = getattr(current, "cause", None)
        if isinstance(cause, BaseException) and not type(cause).__module__.startswith("ray"):
            return cause
        if not type(current).__module__.startswith("ray") and current is not error:
            return current
        current = current.__cause__ or cause
    return error


class _Receipts:
    """What came back from the cluster for the work ``items`` (int64 ``(n, 2)``): each (image index,
    condition index) pair is handed on once."""

    def __init__(self, items: np.ndarray):
        self.items = items
        self.received: dict[tuple[int, int], np.ndarray] = {}

    def take(self, batch: dict) -> np.ndarray:
        """The rows of an output ``batch`` (numpy columns ``image_index``, ``condition_index``,
        ``top5``) not received before, int64 indices. A pair received again with the same top-5 (a
        batch re-run after its actor or task died) is dropped.

        Raises:
            RayEngineError: a pair came back again with a different top-5.
        """
        fresh = []
        for j, pair in enumerate(zip(batch["image_index"].tolist(), batch["condition_index"].tolist())):
            top5 = np.asarray(batch["top5"][j])
            if pair in self.received:
                if not np.array_equal(self.received[pair], top5):
                    raise RayEngineError(
                        f"Ray engine: image {pair[0]} under condition {pair[1]} came back twice with different "
                        f"top-5 ({self.received[pair].tolist()} and {top5.tolist()})"
                    )
                continue  # a re-run batch: already handed on
            self.received[pair] = top5
            fresh.append(j)
        return np.asarray(fresh, dtype=np.int64)

    def check_complete(self) -> None:
        """Raises :class:`RayEngineError` naming the first work item that never came back."""
        missing = [pair for pair in map(tuple, self.items.tolist()) if pair not in self.received]
        if missing:
            raise RayEngineError(
                f"Ray engine: {len(missing)} work item(s) did not come back from the cluster, first "
                f"(image index, condition index) {missing[0]}"
            )


class RayEngine:
    """Runs the engine's work items on a Ray cluster (see the module docstring).

    Args:
        model: the :class:`robustness.Classifier`, already on ``device`` and in eval mode; it is
            pickled once into Ray's object store (so its code must be importable on the workers).
        device: the inference device of the actors: ``"cpu"`` (CPU actors) or a CUDA device (one
            actor per GPU, ``num_gpus=1``; the actor uses the GPU Ray assigns it).
        score: ``score(logits, model) -> int64 (N, 5)`` top-5 (the engine's ``top5_of`` with the
            dataset's class list), called in the actors.
        settings: a no-argument context manager factory for the inference numerics, entered in the
            actors around each forward pass.
        address: the Ray cluster to join (``ray.init(address=...)``: ``"auto"``, ``"ray://host:10001"``,
            ``"host:6379"``); ``None`` joins the one in ``$RAY_ADDRESS`` or starts a local instance. A
            Ray already initialised in this process is used as is.
        actors: the most inference actors (default: the cluster's GPUs for CUDA, else half its
            CPUs, at least 1).

    Raises:
        ImportError: Ray Data is not installed (:func:`require_ray`).
        ValueError: a CUDA ``device`` on a cluster without GPUs.
    """

    def __init__(
        self,
        model,
        device: str,
        *,
        score: Callable,
        settings: Callable,
        address: str | None = None,
        actors: int | None = None,
    ):
        ray = require_ray()
        if not ray.is_initialized():
            ray.init(address=address or None, include_dashboard=False, log_to_driver=False)
        self.ray = ray
        resources = ray.cluster_resources()
        self.cpus = max(1, int(resources.get("CPU", 1)))
        gpus = int(resources.get("GPU", 0))
        self.on_gpu = str(device).startswith("cuda")
        if self.on_gpu and gpus < 1:
            raise ValueError(f"inference device {device} was asked for, but the Ray cluster has no GPU ({resources})")
        if actors is None:
            actors = gpus if self.on_gpu else max(1, self.cpus // 2)
        self.actors = max(1, int(actors))
        self.device = "cuda" if self.on_gpu else "cpu"
        self.model_ref = ray.put(model)
        self.score, self.settings = score, settings

    def infer(self, work, items: np.ndarray, batch_size: int) -> Iterator[tuple]:
        """Run ``items`` (int64 ``(n, 2)``: image index, condition index) through the pipeline.

        ``work`` is the engine's per-item object (``distorted(image_index, condition_index)`` and
        ``dataset``); it is pickled into the tasks. Yields, per output batch, ``(condition indices
        (b,), image indices (b,), top-5 int64 (b, 5), missed bool (b,), [(image index, message),
        ...] unreadable images)``, each pair once.

        Raises:
            RayEngineError: a pair came back twice with different predictions, or did not come back.
            Exception: what the model or the distortion raised in a worker (unwrapped from Ray's
                error, the cause chained).
        """
        import functools

        ray = self.ray
        items = np.asarray(items, dtype=np.int64).reshape(-1, 2)
        if len(items) == 0:
            return
        dataset = ray.data.from_arrow(_blocks(items, self.cpus))
        # A task whose worker dies is re-run (Ray's default: 3 retries). The memory request (what a
        # task may hold) also keeps Ray Data from fusing this stage into the actors' (their remote
        # arguments differ): the distortions then use every CPU of the cluster, not only the actors'.
        in_tasks = preprocess_where(self.on_gpu) == "tasks"
        dataset = dataset.map_batches(
            functools.partial(_distort_batch, work=work, preprocess=in_tasks),
            batch_size=None,
            batch_format="numpy",
            num_cpus=1,
            memory=TASK_MEMORY,
        )
        gpu = {"num_gpus": 1} if self.on_gpu else {"num_cpus": 1}
        dataset = dataset.map_batches(
            _Infer,
            fn_constructor_args=(self.model_ref, self.device, self.score, self.settings),
            batch_size=batch_size,
            batch_format="numpy",
            concurrency=(1, self.actors),
            **gpu,
        )
        receipts = _Receipts(items)
        try:
            for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
                fresh = receipts.take(batch)
                ok = fresh[[not batch["error"][j] for j in fresh]] if len(fresh) else fresh
                failed = [(int(batch["image_index"][j]), str(batch["error"][j])) for j in fresh if batch["error"][j]]
                yield (
                    batch["condition_index"][ok].astype(np.int64),
                    batch["image_index"][ok].astype(np.int64),
                    batch["top5"][ok].astype(np.int64),
                    batch["missed"][ok].astype(bool),
                    failed,
                )
        except RayEngineError:
            raise
        except Exception as error:
            original = _original_error(error)
            if original is error:
                raise
            raise original from error
        receipts.check_complete()
