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
3. an **actor pool** (``map_batches`` with a callable class, ``concurrency``) applies each model's
   preprocessing and runs each model on the items it needs (several models of one
   ``evaluate([a, b], ...)`` share the distorted items, as in the local engine): one actor per GPU (``num_gpus=1``) when the inference device
   is CUDA, else CPU actors; the top-5 come from :func:`robustness.evaluation.top5_of`. For GPU
   actors the preprocessing runs at the end of step 2 instead (:func:`preprocess_where`);
4. the driver iterates the output and yields one batch at a time to the engine, which hands it to
   the store as it comes.

Every task and actor reports, with each output batch, what its outputs depend on (a JSON text per
row, computed once per worker process or actor: :func:`_report`): a task, the engine's
``task_identity()`` (the library versions and code versions of the reading and the distortions); an
actor, ``actor_identity(device)`` per inference device (the device's
:func:`robustness.cache.device_identity`, read inside the inference-numerics context, and the library
versions of the model key). The driver compares each report with its own values before it hands on
any row of the batch (:class:`_Environments`): the store keys the predictions with the *driver's*
model key, so a node that differs (another CPU instruction set, GPU, torch, Pillow, libjpeg or
OpenJPEG) would have its predictions cached as if the driver had computed them. A mismatch is a
:class:`RayEngineError` naming the node, the field, the driver's value and the node's.

Ray retries a task whose worker died and restarts a dead actor and re-runs its batch (Ray Data's
defaults: ``max_restarts=-1``, ``max_task_retries=-1`` for actor pools); the driver drops a pair
it has already received (a re-run batch) and fails, naming it, on a pair that arrives twice with
different predictions or not at all, so every pair reaches the store exactly once.

This module imports no package module (the engine passes its own functions in) and neither torch
nor ray at import time: ``import robustness`` stays free of both. Ray is an optional extra:
``pip install 'robustness[ray]'``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import warnings
from collections.abc import Callable, Iterator

import numpy as np

__all__ = ["RayEngine", "RayEngineError", "require_ray"]

#: Largest number of work items in one block of the input dataset (one CPU task).
MAX_BLOCK_ITEMS = 256

#: Bytes of memory each read-and-distort task asks Ray for: its worker process with numpy, Pillow
#: and torch imported (445 MiB peak measured here by Ray Data on the test's tiny images) plus a
#: block of :data:`MAX_BLOCK_ITEMS` distorted ImageNet images (~0.5 MB each at native size, ~130 MB).
TASK_MEMORY = 2**30


class _Raised(Exception):
    """Carries an exception a task or actor handed back, out of the driver's loop."""

    def __init__(self, error: BaseException):
        super().__init__(str(error))
        self.error = error


class RayEngineError(RuntimeError):
    """A work item came back from the cluster twice with different predictions, or not at all; or a
    node's environment differs from the driver's (:class:`_Environments`)."""


#: Per worker process: the JSON report of each identity function already computed (:func:`_report`).
_REPORTS: dict = {}


def _report(identity: Callable, *args) -> str:
    """JSON text ``{"node": IP, "node_id": ID, "fields": identity(*args)}`` (keys sorted), computed
    once per worker process and ``(identity, args)``: what this worker's outputs depend on, with the
    node it runs on (``ray.util.get_node_ip_address()``, ``ray.get_runtime_context().get_node_id()``)."""
    import json

    import ray

    key = (identity, args)
    if key not in _REPORTS:
        _REPORTS[key] = json.dumps(
            {
                "node": ray.util.get_node_ip_address(),
                "node_id": ray.get_runtime_context().get_node_id(),
                "fields": identity(*args),
            },
            sort_keys=True,
        )
    return _REPORTS[key]


def _flatten(value, prefix: str = "") -> dict:
    """A nested dict as ``{"a.b": leaf}``; lists and other leaves as they are."""
    if not isinstance(value, dict):
        return {prefix: value}
    flat = {}
    for key, item in value.items():
        flat.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
    return flat


#: Fields of an actor's device identity left out of the comparison: ``index`` is the CUDA device's
#: index in its own process (the GPU Ray assigns to an actor is always ``cuda:0`` there), not a property
#: that can change a prediction.
_NOT_COMPARED = ("index",)


class _Environments:
    """The driver's side of the environment check: the driver's own values (``task``: the JSON-able
    dict a task must report; ``actors``: per actor device, the dict an actor must report) and the
    reports already checked."""

    def __init__(self, task: dict | None, actors: dict | None):
        self.expected = {"task_env": task, "actor_env": actors}
        self.checked: set[tuple[str, str]] = set()

    def check(self, batch: dict) -> None:
        """Compare every report in ``batch`` (columns ``task_env``, ``actor_env``: JSON texts from
        :func:`_report`) with the driver's values.

        Raises:
            RayEngineError: a report is missing or differs; the message names the node, the part
                (read-and-distort task or inference actor), the field, the driver's value and the node's.
        """
        import json

        for column, expected in self.expected.items():
            if expected is None:
                continue
            part = "read-and-distort task" if column == "task_env" else "inference actor"
            if column not in batch:
                raise RayEngineError(f"Ray engine: an output batch came back without the {part}'s environment report")
            for text in set(batch[column].tolist()):
                if (column, text) in self.checked:
                    continue
                report = json.loads(text)
                mine, theirs = _flatten(expected), _flatten(report["fields"])
                for field in sorted(set(mine) | set(theirs)):
                    if field.rsplit(".", 1)[-1] in _NOT_COMPARED:
                        continue
                    if mine.get(field, "<absent>") != theirs.get(field, "<absent>"):
                        raise RayEngineError(
                            f"Ray engine: node {report['node']} (node id {report['node_id']}) differs from the "
                            f"driver: its {part} has {field} = {theirs.get(field, '<absent>')!r}, the driver "
                            f"{mine.get(field, '<absent>')!r}. Its predictions would be cached under the "
                            "driver's model key as if the driver had computed them, so none of them is used; "
                            "give every node the driver's versions and hardware (docs/cluster.md, "
                            "'What every node needs')"
                        )
                self.checked.add((column, text))


def _load_torchscript(data: bytes):
    """A TorchScript module from its ``torch.jit.save`` bytes (:func:`_put_model`), on the CPU (the
    actor then moves its model to its device)."""
    import io
    import warnings

    import torch

    with warnings.catch_warnings():  # torch 2.14 deprecates TorchScript; the driver loaded this model already
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.load` is deprecated", category=FutureWarning)
        return torch.jit.load(io.BytesIO(data), map_location="cpu")


def _reduce_torchscript(module):
    """Pickle a TorchScript module as its ``torch.jit.save`` bytes (TorchScript modules themselves
    cannot be pickled: ``Tried to serialize object __torch__... which does not have a __getstate__``)."""
    import io

    import torch

    buffer = io.BytesIO()
    torch.jit.save(module, buffer)
    return _load_torchscript, (buffer.getvalue(),)


def _put_model(ray, model):
    """``ray.put(model)``, with any TorchScript module inside it (a ``.pt`` file model such as
    ``mobilenet_v2_quantized``, maybe wrapped) pickled as its ``torch.jit.save`` bytes: the reducer
    is in ``copyreg.dispatch_table`` (which Ray's cloudpickle consults) only during this call, for
    the TorchScript types the model holds; ``torch.jit.load`` gives back the same graph and weights."""
    import copyreg

    import torch

    kinds = {type(m) for m in model.modules() if isinstance(m, torch.jit.ScriptModule)}
    saved = {kind: copyreg.dispatch_table[kind] for kind in kinds if kind in copyreg.dispatch_table}
    copyreg.dispatch_table.update(dict.fromkeys(kinds, _reduce_torchscript))
    try:
        return ray.put(model)
    finally:
        for kind in kinds:
            copyreg.dispatch_table.pop(kind, None)
        copyreg.dispatch_table.update(saved)


#: Ray Data's documented variable for a logging configuration of the user's own (a YAML file): when it is
#: set, the engine leaves Ray Data's logging and progress bars as they are (:func:`_quiet_ray_data`).
RAY_DATA_LOGGING_VARIABLE = "RAY_DATA_LOGGING_CONFIG"


@contextlib.contextmanager
def _quiet_ray_data(context):
    """Ray Data's own output kept to warnings while the engine runs (restored on exit): its logger
    ``ray.data`` (execution plan, a progress report every few seconds and per-operator statistics at
    INFO, on stderr and in ``ray-data.log``) at ``WARNING``, and its progress bars off
    (``DataContext.enable_progress_bars``): the engine shows its own bar. Nothing is changed when the
    user configured Ray Data's logging (``$RAY_DATA_LOGGING_CONFIG``, docs/cluster.md)."""
    if os.environ.get(RAY_DATA_LOGGING_VARIABLE, "").strip():
        yield
        return
    logger = logging.getLogger("ray.data")
    saved = logger.level, context.enable_progress_bars
    logger.setLevel(logging.WARNING)
    context.enable_progress_bars = False
    try:
        yield
    finally:
        logger.setLevel(saved[0])
        context.enable_progress_bars = saved[1]


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


def preprocess_where(on_gpu: bool) -> str:
    """Where the model's preprocessing runs: ``"tasks"`` (beside the distortion, on every CPU of the
    cluster) for GPU actors, whose one CPU would otherwise cap the node at ~200 items/s (the estimate in
    docs/cluster.md); ``"actors"`` for CPU actors (the same CPU cost either way, and a smaller
    ``uint8`` image than a ``float32`` tensor crosses the object store when the crop is smaller)."""
    return "tasks" if on_gpu else "actors"


def _distort_batch(batch: dict, *, work, preprocess: bool = False, identity: Callable | None = None) -> dict:
    """Ray task body: read and distort each item of ``batch`` (numpy columns ``image_index``,
    ``condition_index``, ``need<r>``) with ``work.distorted``. Returns the batch with ``image`` (object
    array of uint8 ``(H, W, 3)``; a 1x1 placeholder for an unreadable image) or, with ``preprocess``,
    ``tensor<p>`` for each of ``work.preprocessings`` (float32 ``(n, 3, crop, crop)``; zeros for an
    unreadable image), ``error`` (message or "") and ``missed`` (bool: JPEG 2000 missed its PSNR
    tolerance); the ``need<r>`` columns pass through; with ``identity``, ``task_env`` (this worker's
    :func:`_report` of ``identity()``, the same text on every row)."""
    try:
        columns = _distorted_columns(batch, work, preprocess)
        if identity is not None:
            columns["task_env"] = np.array([_report(identity)] * len(columns["error"]), dtype=object)
        return columns
    except Exception as error:  # noqa: BLE001 - handed to the driver, which raises it as itself
        return _failure(batch, error)


def _failure(batch: dict, error: BaseException) -> dict:
    """The output of a task or actor whose work raised ``error``: the work items, their ``need<r>``
    columns and ``failure`` (the pickled exception on every row), which the driver raises."""
    from ray import cloudpickle

    try:
        pickled = cloudpickle.dumps(error)
        cloudpickle.loads(pickled)
    except Exception:  # noqa: BLE001 - an exception that does not survive pickling: its type and message
        pickled = cloudpickle.dumps(RuntimeError(f"{type(error).__name__}: {error}"))
    return {
        "image_index": batch["image_index"],
        "condition_index": batch["condition_index"],
        **{name: batch[name] for name in batch if name.startswith("need")},
        "failure": np.array([pickled] * len(batch["image_index"]), dtype=object),
    }


def _distorted_columns(batch: dict, work, preprocess: bool) -> dict:
    """The body of :func:`_distort_batch`."""
    preprocessings = work.preprocessings if preprocess else []
    images, errors, missed = [], [], []
    tensors: list[list] = [[] for _ in preprocessings]
    for i, k in zip(batch["image_index"].tolist(), batch["condition_index"].tolist()):
        image, error, miss = work.distorted(i, k)
        images.append(np.zeros((1, 1, 3), np.uint8) if image is None else image)
        for p, preprocessing in enumerate(preprocessings):
            tensors[p].append(None if image is None else preprocessing(image).numpy())
        errors.append(error or "")
        missed.append(bool(miss))
    columns = {name: batch[name] for name in batch if name.startswith("need")}
    if preprocess:
        for p, column in enumerate(tensors):
            shape = next((t.shape for t in column if t is not None), None)
            if shape is None:  # no readable image in the block: placeholders of the network's input shape
                crop = preprocessings[p].crop_size
                shape = (3, crop, crop)
            columns[f"tensor{p}"] = np.stack([np.zeros(shape, np.float32) if t is None else t for t in column])
    else:
        columns["image"] = np.empty(len(images), dtype=object)
        columns["image"][:] = images
    return {
        "image_index": batch["image_index"],
        "condition_index": batch["condition_index"],
        **columns,
        "error": np.asarray(errors, dtype=object),
        "missed": np.asarray(missed, dtype=bool),
        "failure": np.array([b""] * len(errors), dtype=object),
    }


class _Infer:
    """Ray actor: each model's preprocessing and forward pass, top-5 per item and model (``score``).

    Constructed once per actor from the models in the object store (``model_refs``), each moved to its
    device (``cuda`` on a GPU actor is the GPU Ray assigned to it); ``group[r]`` is the index of model
    ``r``'s preprocessing (models with equal preprocessings share it); ``settings(device)`` is the
    engine's inference-numerics context (deterministic cuDNN, TF32 off unless allowed);
    ``identity(device)``, when given, what this actor reports per device (read inside ``settings(device)``,
    once, on the first batch), as ``actor_env`` on every output row."""

    def __init__(
        self, model_refs, devices, group, score: Callable, settings: Callable, identity: Callable | None = None
    ):
        import ray
        import torch

        models = ray.get(list(model_refs))
        self.torch, self.devices, self.group, self.score, self.settings = torch, devices, group, score, settings
        self.models = [m.to(d).eval() for m, d in zip(models, devices)]
        self.identity, self.report = identity, None

    def _environment(self) -> dict:
        """Per distinct device, ``identity(device)`` read inside ``settings(device)``."""
        fields = {}
        for device in dict.fromkeys(self.devices):
            with self.settings(device):
                fields[device] = self.identity(device)
        return fields

    def _inputs(self, batch: dict, p: int, rows: np.ndarray, model):
        torch = self.torch
        if f"tensor{p}" in batch:  # preprocessed in the tasks
            return torch.from_numpy(np.ascontiguousarray(batch[f"tensor{p}"][rows]))
        return torch.stack([model.preprocessing(batch["image"][j]) for j in np.flatnonzero(rows)])

    def __call__(self, batch: dict) -> dict:
        if "error" not in batch or any(len(f) for f in batch["failure"]):
            return _failure_passed_on(batch)
        try:
            return self._top5(batch)
        except Exception as error:  # noqa: BLE001 - handed to the driver, which raises it as itself
            return _failure(batch, error)

    def _top5(self, batch: dict) -> dict:
        torch = self.torch
        if self.identity is not None and self.report is None:
            self.report = _report(self._environment)
        errors = batch["error"]
        ok = np.array([not e for e in errors], dtype=bool)
        top5 = np.full((len(errors), len(self.models), 5), -1, dtype=np.int64)
        inputs: dict[int, tuple] = {}  # preprocessing index -> (rows, tensors), shared by its models
        for r, (model, device) in enumerate(zip(self.models, self.devices)):
            rows = ok & batch[f"need{r}"].astype(bool)
            if not rows.any():
                continue
            p = self.group[r]
            if p not in inputs:
                union = ok & np.any([batch[f"need{q}"] for q in range(len(self.models)) if self.group[q] == p], axis=0)
                inputs[p] = (union, self._inputs(batch, p, union, model))
            union, tensors = inputs[p]
            mine = torch.from_numpy(rows[union])
            with self.settings(device), torch.inference_mode():
                logits = model(tensors[mine].to(device))
                top5[rows, r] = self.score(logits, model)
        return {
            "image_index": batch["image_index"],
            "condition_index": batch["condition_index"],
            **{name: batch[name] for name in batch if name.startswith("need")},
            "top5": top5,
            "missed": batch["missed"],
            "error": errors,
            "failure": batch["failure"],
            **({"task_env": batch["task_env"]} if "task_env" in batch else {}),
            **({} if self.report is None else {"actor_env": np.array([self.report] * len(errors), dtype=object)}),
        }


def _failure_passed_on(batch: dict) -> dict:
    """An actor's output for a batch that holds a task's failure: the work items and the failure."""
    first = next(f for f in batch["failure"] if len(f))
    return {
        "image_index": batch["image_index"],
        "condition_index": batch["condition_index"],
        **{name: batch[name] for name in batch if name.startswith("need")},
        "failure": np.array([first] * len(batch["image_index"]), dtype=object),
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
        models: the :class:`robustness.Classifier` objects of one evaluation, each already on its
            device and in eval mode; each is pickled once into Ray's object store (so their code must be
            importable on the workers).
        devices: each model's inference device: ``"cpu"`` or a CUDA device. When any is CUDA the actors
            are GPU actors (one per GPU, ``num_gpus=1``; ``cuda`` is the GPU Ray assigns to the actor),
            else CPU actors.
        score: ``score(logits, model) -> int64 (N, 5)`` top-5 (the engine's ``top5_of`` with the
            dataset's class list), called in the actors.
        settings: ``settings(device)``, a context manager for the inference numerics on that device,
            entered in the actors around each forward pass.
        address: the Ray cluster to join (``ray.init(address=...)``: ``"auto"``, ``"ray://host:10001"``,
            ``"host:6379"``); ``None`` joins the one in ``$RAY_ADDRESS`` or starts a local instance. A
            Ray already initialised in this process is used as is.
        actors: the most inference actors (default: the cluster's GPUs for GPU actors, else half its
            CPUs, at least 1).
        task_identity: ``task_identity() -> dict`` (JSON-able), what a read-and-distort task's outputs
            depend on (library and code versions); called in the driver and once in every task's worker
            process, whose value must equal the driver's. ``None``: not checked.
        actor_identity: ``actor_identity(device) -> dict`` (JSON-able), what an inference actor's
            predictions depend on (the device's identity, the library versions of the model key); called
            inside ``settings(device)`` in the driver and once in every actor, whose value must equal the
            driver's (a device's ``index`` aside). ``None``: not checked.

    Raises:
        ImportError: Ray Data is not installed (:func:`require_ray`).
        ValueError: a CUDA device on a cluster without GPUs.

    A node whose report differs makes :meth:`infer` raise :class:`RayEngineError` before any of its
    predictions is handed on.
    """

    def __init__(
        self,
        models,
        devices,
        *,
        score: Callable,
        settings: Callable,
        address: str | None = None,
        actors: int | None = None,
        task_identity: Callable | None = None,
        actor_identity: Callable | None = None,
    ):
        ray = require_ray()
        if not ray.is_initialized():
            # Ray's own start-up lines at warnings only (docs/cluster.md: a Ray started by the caller is used as is)
            ray.init(
                address=address or None, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING
            )
        with warnings.catch_warnings():
            # Ray Data 2.60 warns about its own deprecated settings while it builds its DataContext
            # (use_push_based_shuffle, use_polars ...): nothing a caller can act on, and an error
            # under `python -W error`. Built once here, without them; later uses share it.
            warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"ray\.data\.context")
            self.data_context = ray.data.DataContext.get_current()
        self.ray = ray
        resources = ray.cluster_resources()
        self.cpus = max(1, int(resources.get("CPU", 1)))
        gpus = int(resources.get("GPU", 0))
        devices = [str(d) for d in devices]
        self.on_gpu = any(d.startswith("cuda") for d in devices)
        if self.on_gpu and gpus < 1:
            raise ValueError(
                f"inference device {', '.join(devices)} was asked for, but the Ray cluster has no GPU ({resources})"
            )
        if actors is None:
            actors = gpus if self.on_gpu else max(1, self.cpus // 2)
        self.actors = max(1, int(actors))
        self.devices = ["cuda" if d.startswith("cuda") else d for d in devices]  # the actor's own GPU
        self.model_refs = [_put_model(ray, m) for m in models]
        self.score, self.settings = score, settings
        self.task_identity, self.actor_identity = task_identity, actor_identity
        # the driver's own values, as JSON would give them back (tuples as lists)
        expected_task = None if task_identity is None else json.loads(json.dumps(task_identity()))
        expected_actors = None
        if actor_identity is not None:
            expected_actors = {}
            for driver_device, actor_device in zip(devices, self.devices):
                with settings(driver_device):
                    expected_actors[actor_device] = json.loads(json.dumps(actor_identity(driver_device)))
        self.environments = _Environments(expected_task, expected_actors)

    def infer(self, work, group, items: np.ndarray, needs: np.ndarray, batch_size: int, models=None) -> Iterator[tuple]:
        """Run ``items`` (int64 ``(n, 2)``: image index, condition index) through the pipeline.

        Args:
            work: the engine's per-item object (``distorted(image_index, condition_index)``,
                ``preprocessings``); pickled into the tasks.
            group: ``group[r]``: the index into ``work.preprocessings`` of model ``r``'s preprocessing.
            items: the work items.
            needs: bool ``(n, len(models))``: model ``r`` needs item ``k``.
            batch_size: items per inference batch.
            models: the indices (into the constructor's ``models``) of the models the columns of
                ``needs`` stand for (default: all, in order).

        Yields, per output batch and model ``r`` (an index into ``models``), ``(r, condition indices
        (b,), image indices (b,), top-5 int64 (b, 5), missed bool (b,), [(image index, message), ...]
        unreadable images it needed, items done)``, each pair once; ``items done`` counts the batch's
        new items on its first yield and is 0 on the others.

        Raises:
            RayEngineError: a pair came back twice with different predictions, or did not come back; or
                a task's or actor's environment differs from the driver's (nothing of that batch is yielded).
            Exception: what a model or a distortion raised in a worker (unwrapped from Ray's error, the
                cause chained).
        """
        import functools

        import pyarrow as pa

        ray = self.ray
        items = np.asarray(items, dtype=np.int64).reshape(-1, 2)
        models = list(range(len(self.model_refs))) if models is None else list(models)
        needs = np.asarray(needs, dtype=bool).reshape(len(items), len(models))
        if len(items) == 0:
            return
        per_block = max(1, min(MAX_BLOCK_ITEMS, math.ceil(len(items) / max(1, 4 * self.cpus))))
        blocks = [
            pa.table(
                {
                    "image_index": items[start : start + per_block, 0],
                    "condition_index": items[start : start + per_block, 1],
                    **{f"need{r}": needs[start : start + per_block, r] for r in range(len(models))},
                }
            )
            for start in range(0, len(items), per_block)
        ]
        dataset = ray.data.from_arrow(blocks)
        in_tasks = preprocess_where(self.on_gpu) == "tasks"
        # A task whose worker dies is re-run (Ray's default: 3 retries). The memory request (what a
        # task may hold) also keeps Ray Data from fusing this stage into the actors' (their remote
        # arguments differ): the distortions then use every CPU of the cluster, not only the actors'.
        dataset = dataset.map_batches(
            functools.partial(_distort_batch, work=work, preprocess=in_tasks, identity=self.task_identity),
            batch_size=None,
            batch_format="numpy",
            num_cpus=1,
            memory=TASK_MEMORY,
        )
        resources = {"num_gpus": 1} if self.on_gpu else {"num_cpus": 1}
        dataset = dataset.map_batches(
            _Infer,
            fn_constructor_args=(
                [self.model_refs[m] for m in models],
                [self.devices[m] for m in models],
                list(group),
                self.score,
                self.settings,
                self.actor_identity,
            ),
            batch_size=batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=self.actors),
            **resources,
        )
        receipts = _Receipts(items)
        try:
            with _quiet_ray_data(self.data_context):
                yield from self._received(dataset, receipts, models)
        except RayEngineError:
            raise
        except _Raised as raised:
            raise raised.error from None
        except Exception as error:
            original = _original_error(error)
            if original is error:
                raise
            raise original from error
        receipts.check_complete()

    def _received(self, dataset, receipts: _Receipts, models: list) -> Iterator[tuple]:
        """The body of :meth:`infer`: each output batch of ``dataset``, checked (a failure raised, the
        environments compared, each pair once), yielded per model."""
        ray = self.ray
        for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
            failure = next((f for f in batch["failure"] if len(f)), None)
            if failure is not None:
                raise _Raised(ray.cloudpickle.loads(failure))
            self.environments.check(batch)  # before any row of this batch reaches the store
            fresh = np.zeros(len(batch["error"]), dtype=bool)
            fresh[receipts.take(batch)] = True
            ok = np.array([not e for e in batch["error"]], dtype=bool)
            count = int(fresh.sum())
            for r in range(len(models)):
                need = fresh & batch[f"need{r}"].astype(bool)
                rows = need & ok
                failed = [(int(batch["image_index"][j]), str(batch["error"][j])) for j in np.flatnonzero(need & ~ok)]
                yield (
                    r,
                    batch["condition_index"][rows].astype(np.int64),
                    batch["image_index"][rows].astype(np.int64),
                    batch["top5"][rows, r].astype(np.int64),
                    batch["missed"][rows].astype(bool),
                    failed,
                    count,
                )
                count = 0
