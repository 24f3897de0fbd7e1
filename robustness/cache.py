"""On-disk cache of per-image top-5 predictions, so unchanged re-runs do no inference, and the
store interface the engine talks to.

The engine (:func:`robustness.evaluate`) asks a :class:`PredictionStore` what is stored and hands
results back through a :class:`PredictionSession`, in condition and image indices; keys, locks,
when to write and compaction are the store's business. :class:`PredictionCache` is the on-disk
store described below; :class:`NullStore` (no cache) stores nothing.

Layout (``root`` defaults to ``$ROBUSTNESS_CACHE_DIR`` or ``.robustness-cache`` in the working
directory)::

    root/v3/<model key>/<condition key>/<chunk>.rpc     checksummed entries (image key -> top-5)
    root/v3/<model key>/<condition key>/.lock           advisory lock while a process computes it

* **model key** (:func:`model_key`): SHA-256 over what the network *is* and what it *does*:
  the model name, the network's class, the (name, class) of every submodule, the source code of
  every non-torch module class (:func:`model_code_digest`; TorchScript modules: their compiled
  ``code``), :attr:`Classifier.weights_digest`, the dtype and device of every parameter and buffer,
  :meth:`Preprocessing.to_dict`, ``Classifier.background_class``, the inference device
  (:func:`device_identity`: type, CPU instruction set or GPU name and compute capability, TF32
  switches), the versions of everything that can change a prediction (torch, torchvision, numpy,
  scipy, Pillow and its libjpeg / OpenJPEG) and the **behaviour fingerprint**
  (:func:`model_fingerprint`): the model's quantised outputs on :data:`PROBE_IMAGES` fixed,
  natural-looking probe images, run through its own preprocessing on the evaluation device. An
  edited ``forward``, a swapped parameter-free module, a changed plain attribute, another
  TorchScript graph, a dtype or device path change all change the outputs, hence the key.
* **condition key**: SHA-256 over the distortion name, its level, the base seed (stochastic
  distortions only: the others ignore it), the distortion's code version
  (:attr:`robustness.distortions.Distortion.cache_version`: :data:`robustness.distortions.DISTORTION_CODE_VERSION`
  for the built-ins, a registered distortion's own ``code_version``) and :data:`ENGINE_VERSION` (image loading and seed-derivation rules).
* **image key**: SHA-256 over the image id (it seeds the noise) and the SHA-256 of the file's bytes.
  Keying each image by its content, rather than the whole dataset by one digest, means a changed,
  added or removed file invalidates only its own entries; a run on a subset reuses the full run.

The engine also re-checks a seeded sample of what it reads (:func:`verification_sample_size`
pairs per run) and has the session discard a model key's entries on any disagreement; see
:func:`robustness.evaluate`.

A chunk file is ``MAGIC + sha256(payload) hex + "\\n" + payload`` where the payload is an ``.npz``
(no pickles) holding ``keys`` (``S64`` ASCII hex image keys, shape ``(n,)``), ``top5`` (``int16``
class indices, shape ``(n, 5)``), ``flags`` (``uint8`` shape ``(n,)``: bit 0 set when the distortion
missed its tolerance for that image, :data:`FLAG_MISSED_TOLERANCE`) and ``meta`` (the JSON of both keys). Chunks are written atomically
(temporary file in the same folder, fsync, rename). A chunk whose magic, checksum, format, keys or
values do not check out is reported with a :class:`CacheWarning`, deleted and its images recomputed;
it is never trusted. A session (:meth:`PredictionCache.open_run`) writes a chunk per condition every
``flush_interval`` seconds (30 by default), when a claimed group of conditions is done and when the
run ends or is interrupted, so an interrupted run resumes where it stopped; the chunks of a
condition are then merged into one (not after an error).

Locks are POSIX ``flock`` locks. On a filesystem without them (NFS without a lock daemon, some
Lustre mounts: ``ENOLCK``, ``ENOSYS``, ``EOPNOTSUPP``) the cache warns once per process and goes on
without locks: results stay correct, concurrent processes may compute the same pairs twice.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import inspect
import io
import json
import math
import os
import time
import uuid
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, Protocol, runtime_checkable

import numpy as np

from ._io import atomic_write

if TYPE_CHECKING:
    from .conditions import Condition

__all__ = [
    "PredictionStore",
    "PredictionSession",
    "PredictionCache",
    "NullStore",
    "CacheWarning",
    "CachedPrediction",
    "FLAG_MISSED_TOLERANCE",
    "CACHE_ENV_VAR",
    "DEFAULT_CACHE_DIR",
    "ENGINE_VERSION",
    "PROBE_IMAGES",
    "PROBE_RTOL",
    "ProbeOutput",
    "default_cache_dir",
    "device_identity",
    "file_sha256",
    "image_keys",
    "model_code_digest",
    "model_fingerprint",
    "model_key",
    "probe_batch",
    "probe_images",
    "probe_difference",
    "probe_output",
    "resolve_cache",
    "resolve_store",
    "verification_sample_size",
]

CACHE_ENV_VAR = "ROBUSTNESS_CACHE_DIR"
DEFAULT_CACHE_DIR = ".robustness-cache"
#: Bumped when image loading, seed derivation or preprocessing order in the engine change.
ENGINE_VERSION = "3"  # 2: model keys include the behaviour fingerprint; 3: entries carry flags
_FORMAT = "v3"
_MAGIC = b"ROBUSTNESS-PREDICTIONS-3\n"
#: Number of probe images behind :func:`model_fingerprint`.
PROBE_IMAGES = 6
_UNSUPPORTED_LOCK_ERRNOS = {errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, getattr(errno, "ENOTSUP", errno.EOPNOTSUPP)}
_LOCK_WARNED = False
_SUFFIX = ".rpc"

try:  # POSIX advisory locks; elsewhere processes may duplicate work, never corrupt it.
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None


#: Entry flag: the distortion's output missed its tolerance for this image (JPEG 2000 could not land
#: within :data:`robustness.distortions.JPEG2000_PSNR_TOLERANCE_DB` of the target PSNR).
FLAG_MISSED_TOLERANCE = 1
FLAG_MASK = FLAG_MISSED_TOLERANCE


class CachedPrediction(NamedTuple):
    """One cache entry: ``top5`` (``int16 (5,)`` class indices, best first) and ``flags`` (bits of
    :data:`FLAG_MASK`)."""

    top5: np.ndarray
    flags: int


class CacheWarning(UserWarning):
    """The cache could not be trusted or used as is: a corrupt entry (the message names the file),
    cached predictions that disagree with the model, a non-deterministic model, or a filesystem
    without file locks. The affected predictions are recomputed; results never change."""


# ------------------------------------------------------------------------------ the store interface


class PredictionSession(Protocol):
    """One evaluation's conversation with a :class:`PredictionStore`, from :meth:`PredictionStore.open_run`.

    The engine speaks in indices: condition ``k`` is ``conditions[k]`` and image ``i`` is
    ``dataset[i]`` of the ``open_run`` call. Keys, locks, when to write and compaction are the
    session's own business. The engine's whole conversation (:func:`robustness.evaluate`)::

        with store.open_run(model, device, dataset, conditions, seed) as session:
            for group in session.claim(range(len(conditions))):
                stored = {k: session.get(k) for k in group}  # the images not in stored[k] are missing
                ...  # compute the missing pairs of the group, session.put(...) after each batch
            ...  # re-check a sample of what was read (seeded by session.sample_seed); on a mismatch:
            ...  # session.discard(), put again what this run computed, recompute what was read

    Implement these methods (subclassing this :class:`typing.Protocol` also brings ``__enter__`` /
    ``__exit__``, which call :meth:`close`); :class:`NullStore`'s session and the on-disk
    :class:`PredictionCache`'s are the two implementations here.
    """

    def claim(self, condition_indices: Iterable[int]) -> Iterator[list[int]]:
        """Yield the conditions in non-empty groups, each condition exactly once; the engine gets,
        computes and puts one group per loop iteration.

        While the loop body runs for a group the session holds it (on disk: an advisory lock per
        condition, so a concurrent process waits for it rather than computing it too); when the body
        returns, the group's results are written (on disk: and its chunks merged) and the group is
        released. Call :meth:`get` inside the loop body: another process may have just written it.
        If the body raises, the group stays held until :meth:`close`.
        """
        ...

    def get(self, condition_index: int) -> Mapping[int, CachedPrediction]:
        """What is stored for condition ``condition_index``: image index -> :class:`CachedPrediction`
        (``top5`` ``int16 (5,)`` class indices, best first; ``flags`` bits of :data:`FLAG_MASK`).
        The images absent from it are missing. Entries that fail a check are left out (reported
        with a :class:`CacheWarning`), so they are recomputed."""
        ...

    def put(
        self, condition_indices: np.ndarray, image_indices: np.ndarray, top5: np.ndarray, flags: np.ndarray
    ) -> None:
        """Hand back one batch of results: ``condition_indices`` and ``image_indices`` ``int (b,)``,
        ``top5`` ``int (b, 5)`` class indices in 0-999, ``flags`` ``int (b,)`` bits of
        :data:`FLAG_MASK`. The session decides when to write them: at the latest when the claimed
        group ends or in :meth:`close`.

        Raises:
            ValueError: arrays whose lengths or shapes do not match.
        """
        ...

    def sample_seed(self, condition_indices: Iterable[int]) -> int:
        """A 64-bit seed that identifies what is stored for these conditions (the same model and
        conditions, the same seed), so the engine's verification sample re-checks the same pairs
        run after run."""
        ...

    def discard(self) -> None:
        """Delete every entry stored for this model, in every condition (not only this run's), and
        whatever this session still holds unwritten: the engine then puts again what it computed
        itself. Called when a re-checked entry disagrees with the model."""
        ...

    def close(self, error: BaseException | None = None) -> None:
        """End the session: write what is still unwritten (also after an ``error``, so an
        interrupted run resumes where it stopped), release every claimed group, and, when ``error``
        is ``None``, tidy what was written outside a claimed group (on disk: merge its chunks)."""
        ...

    def __enter__(self) -> PredictionSession:
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        self.close(exc)


@runtime_checkable
class PredictionStore(Protocol):
    """Where :func:`robustness.evaluate` gets per-image predictions it need not compute and hands
    back the ones it computed: the engine asks what is missing and hands results back; keys,
    locks, write batching and compaction are the store's own business.

    Implemented by the on-disk :class:`PredictionCache` and by :class:`NullStore` (``cache=None``,
    ``--no-cache``: nothing stored, everything computed), so the engine has one code path. Other
    stores can implement the same interface later: a shared remote cache, a writer that collects
    results from Ray workers, and (with images instead of top-5 rows as values) a distortion store
    for codec output (issue 12). Pass one as ``evaluate(..., cache=store)``.
    """

    def open_run(
        self,
        model,
        device,
        dataset: Sequence,
        conditions: Sequence[Condition],
        seed: int,
        *,
        pipeline: str = "reference",
    ) -> PredictionSession:
        """Start one evaluation of ``model`` (a :class:`robustness.Classifier`, already on
        ``device`` and in eval mode) on ``dataset`` under ``conditions`` with base seed ``seed``.
        ``pipeline`` is ``"reference"`` or ``"device"`` (:mod:`robustness.device_pipeline`, another
        computation: a store must never serve one's predictions to the other); the engine passes it
        only when it is ``"device"``, so a store without the keyword still serves reference runs.

        A store that cannot vouch for the model's predictions (:class:`PredictionCache`: the model
        is not deterministic) returns a session that stores nothing, after a :class:`CacheWarning`.
        """
        ...


def default_cache_dir() -> Path:
    """``$ROBUSTNESS_CACHE_DIR`` if set, else ``.robustness-cache`` in the working directory."""
    return Path(os.environ.get(CACHE_ENV_VAR) or DEFAULT_CACHE_DIR)


def _sha256_json(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


_FILE_DIGESTS: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 hex digest of a file's bytes, memoised per process on (path, size, mtime_ns).

    Raises:
        OSError: if the file cannot be read (the caller decides; :func:`image_keys` keys it as missing).
    """
    path = os.fspath(path)
    stat = os.stat(path)
    memo = (path, stat.st_size, stat.st_mtime_ns)
    digest = _FILE_DIGESTS.get(memo)
    if digest is None:
        with open(path, "rb") as handle:
            digest = (
                hashlib.file_digest(handle, "sha256").hexdigest()
                if hasattr(hashlib, "file_digest")
                else hashlib.sha256(handle.read()).hexdigest()
            )
        _FILE_DIGESTS[memo] = digest
    return digest


def image_keys(dataset) -> np.ndarray:
    """One cache key per sample: ``S64`` array ``(len(dataset),)`` of SHA-256 hex digests over the
    image id and the file's content digest. An unreadable file gets a key that never matches, so it
    is attempted (and reported) again."""
    keys = []
    for sample in dataset:
        try:
            content = file_sha256(sample.path)
        except OSError:
            content = "unreadable-" + uuid.uuid4().hex
        keys.append(hashlib.sha256(f"{sample.image_id}\0{content}".encode()).hexdigest())
    return np.asarray(keys, dtype="S64")


def _environment() -> dict:
    import numpy
    import scipy
    import torch

    from .distortions import codec_versions

    try:
        import torchvision

        torchvision_version = torchvision.__version__
    except ImportError:  # pragma: no cover
        torchvision_version = None
    return {
        "torch": torch.__version__,
        "torchvision": torchvision_version,
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
        **codec_versions(),  # pillow, libjpeg, openjpeg
    }


def verification_sample_size(served: int) -> int:
    """How many of the ``served`` (image, condition) pairs read from the cache a run re-computes to
    check them: ``min(served, max(4, ceil(1% of served)))`` (0 when nothing was served)."""
    if served < 0:
        raise ValueError(f"served must be >= 0, got {served}")
    return min(served, max(4, math.ceil(0.01 * served)))


def probe_images(height: int = 323, width: int = 391) -> list[np.ndarray]:
    """The :data:`PROBE_IMAGES` deterministic, natural-looking images behind :func:`model_fingerprint`.

    Built in code (no file, no randomness outside a fixed seed) so every process gets the same bytes:
    a landscape (sky gradient, wavy horizon, sun disc), oriented sinusoidal gratings, a checkerboard
    with a diagonal band (hard edges), coloured Gaussian blobs, a seeded smooth colour texture with
    fine grain, and a shaded sphere on a striped background. Not zeros or constants: a constant input
    hides changes such as ``x * 0.25`` after a normalisation.

    Args:
        height, width: size in pixels (each at least 16); callers pass a native size larger than
            the model's resize so the probe also exercises the downscaling.

    Returns:
        list of ``uint8`` arrays ``(height, width, 3)``, RGB, values 0-255.

    Raises:
        ValueError: if ``height`` or ``width`` is below 16.
    """
    from PIL import Image

    if height < 16 or width < 16:
        raise ValueError(f"probe images need height and width >= 16, got {height}x{width}")
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    y /= height - 1
    x /= width - 1
    tau = 2 * np.pi
    images = []

    sky = np.stack([0.35 + 0.3 * y, 0.55 + 0.25 * y, 0.95 - 0.25 * y], axis=-1)
    ground = np.stack([0.30 + 0.15 * x, 0.45 - 0.2 * (y - 0.6), 0.12 + 0.05 * np.sin(tau * 20 * x)], axis=-1)
    landscape = np.where((y > 0.6 + 0.05 * np.sin(tau * 1.5 * x))[..., None], ground, sky)
    landscape[(x - 0.72) ** 2 + (y - 0.22) ** 2 < 0.008] = (1.0, 0.92, 0.55)
    images.append(landscape)

    images.append(
        0.5
        + 0.45
        * np.stack(
            [
                np.sin(tau * (9 * x + 3 * y)),
                np.sin(tau * (4 * x - 7 * y) + 1.0),
                np.sin(tau * 13 * np.hypot(x - 0.4, y - 0.55)),
            ],
            axis=-1,
        )
    )

    checker = ((np.floor(x * 8) + np.floor(y * 6)) % 2)[..., None]
    edges = checker * np.array([0.9, 0.85, 0.2]) + (1 - checker) * np.array([0.1, 0.2, 0.6])
    edges[np.abs(x - y) < 0.06] = (0.05, 0.05, 0.05)
    images.append(edges)

    blobs = np.full((height, width, 3), 0.45)
    for cx, cy, radius, colour in [
        (0.2, 0.3, 0.12, (0.9, 0.1, 0.1)),
        (0.7, 0.25, 0.08, (0.1, 0.8, 0.2)),
        (0.5, 0.7, 0.15, (0.2, 0.3, 0.95)),
        (0.85, 0.8, 0.06, (0.95, 0.85, 0.1)),
        (0.3, 0.8, 0.05, (0.6, 0.1, 0.7)),
        (0.55, 0.45, 0.04, (1.0, 1.0, 1.0)),
    ]:
        weight = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * radius**2))[..., None]
        blobs = blobs * (1 - weight) + weight * np.array(colour)
    images.append(blobs)

    rng = np.random.default_rng(20161130)  # fixed seed: the texture is part of the probe's definition
    coarse = rng.integers(0, 256, (height // 8 + 2, width // 8 + 2, 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC), dtype=np.float64)
    images.append(smooth / 255 * 0.85 + rng.random((height, width, 1)) * 0.15)

    radius2 = ((x - 0.5) / 0.3) ** 2 + ((y - 0.5) / 0.36) ** 2
    shade = np.clip(1.0 - 0.8 * ((x - 0.38) ** 2 + (y - 0.36) ** 2) / 0.12, 0.1, 1.0)
    stripes = 0.5 + 0.25 * np.sign(np.sin(tau * 14 * (x + 0.3 * y)))
    sphere = np.where(
        (radius2 < 1)[..., None],
        shade[..., None] * np.array([0.85, 0.4, 0.15]),
        np.stack([stripes, stripes * 0.9, stripes * 0.7], axis=-1),
    )
    images.append(sphere)

    assert len(images) == PROBE_IMAGES
    return [np.clip(np.rint(image * 255), 0, 255).astype(np.uint8) for image in images]


def _probe_size(model) -> tuple[int, int]:
    """(height, width) of the probe images: larger than the model's resize (and crop), not square."""
    preprocessing = getattr(model, "preprocessing", None)
    side = max(int(getattr(preprocessing, "resize_size", 0) or 0), int(getattr(preprocessing, "crop_size", 0) or 0), 32)
    return side + side // 4 + 3, side + side // 2 + 7


def probe_batch(model):
    """The batch :func:`model_fingerprint` feeds ``model``: :func:`probe_images` at a native size
    larger than the model's resize (``side + side // 4 + 3`` by ``side + side // 2 + 7`` pixels,
    ``side`` = max(resize, crop, 32)), each through ``model.preprocessing``, stacked on the CPU.

    Returns:
        ``torch.Tensor`` of shape ``(PROBE_IMAGES, 3, crop, crop)`` (float32 for the built-in
        :class:`robustness.Preprocessing`).
    """
    import torch

    return torch.stack([torch.as_tensor(model.preprocessing(image)) for image in probe_images(*_probe_size(model))])


class ProbeOutput(NamedTuple):
    """A model's outputs on the probe batch: ``logits`` ``float64 (PROBE_IMAGES, classes)`` (as
    computed, then converted) and ``dtype``, the dtype the model returned (e.g. ``torch.float32``)."""

    logits: np.ndarray
    dtype: str


def probe_output(model, device=None) -> ProbeOutput:
    """Run ``model`` on :func:`probe_batch` on ``device`` (default: the device of its first parameter,
    else CPU) under ``torch.inference_mode()``; the model is used as is (the caller puts it in eval
    mode).

    Raises:
        Exception: whatever the model raises on the probe batch (it would fail the evaluation the same way).
    """
    import torch

    if device is None:
        first = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
        device = first.device if first is not None else "cpu"
    batch = probe_batch(model)
    with torch.inference_mode():
        logits = model(batch.to(device))
    return ProbeOutput(logits.detach().to("cpu", torch.float64).reshape(len(batch), -1).numpy(), str(logits.dtype))


#: Largest difference between two probe outputs of the same model, relative to their largest
#: ``|logit|``, still taken as the same behaviour. Float noise from thread counts moved
#: EfficientNet-Lite0's probe logits by 7e-7 of their range; an edit that matters moves some logit
#: by far more (a swap of two classes' logits moves both by their difference).
PROBE_RTOL = 1e-4


def probe_difference(a: ProbeOutput, b: ProbeOutput) -> float:
    """``max |a - b| / max(|a|, |b|)`` over all probe logits: 0 for identical outputs, ``inf`` when
    the shapes or output dtypes differ or a value is not finite. Compare with :data:`PROBE_RTOL`."""
    if a.dtype != b.dtype or a.logits.shape != b.logits.shape:
        return math.inf
    if not (np.isfinite(a.logits).all() and np.isfinite(b.logits).all()):
        return 0.0 if np.array_equal(a.logits, b.logits, equal_nan=True) else math.inf
    scale = max(float(np.abs(a.logits).max(initial=0.0)), float(np.abs(b.logits).max(initial=0.0)))
    difference = float(np.abs(a.logits - b.logits).max(initial=0.0))
    return 0.0 if difference == 0.0 else (math.inf if scale == 0.0 else difference / scale)


def model_fingerprint(model, device=None, *, probe: ProbeOutput | None = None) -> str:
    """Hex digest of what ``model`` computes: its outputs on :func:`probe_images`.

    The probe images (native size larger than the model's resize) go through the model's own
    ``preprocessing``, are stacked into one float32 batch ``(PROBE_IMAGES, 3, crop, crop)``, moved
    to ``device`` (default: the device of the model's first parameter, else CPU) and classified
    under ``torch.inference_mode()``; the model is used as is (the caller puts it in eval mode).
    Each image's logits ``z`` are quantised before hashing, so float noise in the last bits rarely
    changes the digest: the output shape and dtype, then per image the top-5 class indices in order,
    ``max|z|`` to 3 significant digits, and the top-5 logits, mean and standard deviation of ``z`` in
    units of ``max|z| / 1000``. A spurious change only costs a recompute; a change the quantisation
    hides is what the engine's verification sample is for.

    ``probe``: the model's :func:`probe_output`, when already computed (it is not run again).

    Returns:
        32 hex characters.

    Raises:
        Exception: whatever the model raises on the probe batch (it would fail the evaluation the same way).
    """
    if probe is None:
        probe = probe_output(model, device)
    rows = []
    for z in probe.logits:
        if not np.isfinite(z).all():
            rows.append(["non-finite", np.flatnonzero(~np.isfinite(z)).tolist()[:10]])
            continue
        order = np.argsort(-z, kind="stable")[:5]
        scale = float(np.abs(z).max())
        if scale == 0.0:
            rows.append([order.tolist(), 0])
            continue
        unit = scale / 1000
        rows.append(
            [
                order.tolist(),
                f"{scale:.3g}",
                [int(round(z[i] / unit)) for i in order],
                int(round(z.mean() / unit)),
                int(round(z.std() / unit)),
            ]
        )
    return _sha256_json({"shape": list(probe.logits.shape), "dtype": probe.dtype, "rows": rows})[:32]


def model_code_digest(model) -> str:
    """Hex digest of the code the model runs: for every submodule (the model included) its name and
    class, the source of every class in its MRO defined outside ``torch`` (torch's own code is
    covered by its version), and for TorchScript modules their compiled ``code``. A class whose
    source cannot be read (defined in a REPL) contributes its qualified name only; the behaviour
    fingerprint still covers it. Returns 32 hex characters."""
    import torch

    structure, sources = [], {}
    for name, module in model.named_modules():
        cls = type(module)
        structure.append([name, f"{cls.__module__}.{cls.__qualname__}"])
        if isinstance(module, torch.jit.ScriptModule):
            try:
                structure[-1].append(module.code)
            except Exception:  # noqa: BLE001 - a module without compiled forward
                structure[-1].append(str(getattr(module, "original_name", "")))
            continue
        for klass in cls.__mro__:
            qualified = f"{klass.__module__}.{klass.__qualname__}"
            if qualified in sources or klass.__module__ == "builtins" or klass.__module__.startswith("torch."):
                continue
            try:
                sources[qualified] = inspect.getsource(klass)
            except (OSError, TypeError):
                sources[qualified] = None
    return _sha256_json({"structure": structure, "sources": sources})[:32]


def device_identity(device=None) -> dict:
    """What about the inference device can change a prediction: its type, the CPU's instruction
    set (``torch.backends.cpu.get_cpu_capability()``) or, on CUDA, the device index, the GPU's name
    and compute capability, the TF32 switches (``[matmul.allow_tf32, cudnn.allow_tf32]``) and the
    determinism switches (``cudnn.deterministic``, ``cudnn.benchmark``,
    ``torch.are_deterministic_algorithms_enabled()`` and its ``warn_only``, and
    ``$CUBLAS_WORKSPACE_CONFIG``, whose workspace size can change which cuBLAS kernels run;
    :func:`robustness.evaluation.inference_settings` sets them), plus the float32 matmul precision. The model's dtype is keyed separately (every
    tensor's dtype and device in :func:`model_key`). The CPU entry is unchanged by issue 12, so CPU
    cache keys stay valid. JSON-serialisable dict."""
    import torch

    device = torch.device(device if device is not None else "cpu")
    identity = {"type": device.type, "float32_matmul_precision": torch.get_float32_matmul_precision()}
    if device.type == "cpu":
        with contextlib.suppress(Exception):
            identity["capability"] = torch.backends.cpu.get_cpu_capability()
    elif device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        identity["index"] = index
        identity["name"] = torch.cuda.get_device_name(index)
        identity["capability"] = list(torch.cuda.get_device_capability(index))
        identity["tf32"] = [torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32]
        identity["deterministic"] = {
            "cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
            "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
            "algorithms": bool(torch.are_deterministic_algorithms_enabled()),
            "warn_only": bool(torch.is_deterministic_algorithms_warn_only_enabled()),
            "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG") or None,
        }
    return identity


def model_key(model, device=None, *, fingerprint: str | None = None) -> str:
    """Hex key (32 characters) of a :class:`robustness.Classifier` evaluated on ``device``: see the
    module docstring for what goes in. ``fingerprint`` is :func:`model_fingerprint` (computed here
    when not given)."""
    net = getattr(model, "net", model)
    tensors = sorted({f"{t.dtype}@{t.device.type}" for t in [*model.parameters(), *model.buffers()]})
    if fingerprint is None:
        fingerprint = model_fingerprint(model, device)
    return _sha256_json(
        {
            "name": model.name,
            "network": f"{type(net).__module__}.{type(net).__qualname__}",
            "code": model_code_digest(model),
            "weights": model.weights_digest,
            "tensors": tensors,
            "preprocessing": model.preprocessing.to_dict(),
            "background_class": bool(getattr(model, "background_class", False)),
            "device": device_identity(device if device is not None else "cpu"),
            "environment": _environment(),
            "fingerprint": fingerprint,
        }
    )[:32]


class PredictionCache:
    """Per-image top-5 predictions on disk, keyed by everything that determines them.

    Args:
        root: cache folder (default :func:`default_cache_dir`); created on first write.
        flush_interval: seconds between chunk writes during a run (0 writes after every batch).
        lock: take an advisory file lock per condition while computing it, so concurrent processes
            (pytest-xdist workers) wait for each other's results instead of computing them twice.

    Thread safety: one instance per process; several processes may share ``root``.
    """

    def __init__(self, root: str | os.PathLike | None = None, *, flush_interval: float = 30.0, lock: bool = True):
        self.root = Path(root) if root is not None else default_cache_dir()
        self.flush_interval = float(flush_interval)
        self.use_locks = lock and fcntl is not None

    def __repr__(self) -> str:
        return f"PredictionCache({str(self.root)!r})"

    # ------------------------------------------------------------------------ the store interface

    def open_run(
        self,
        model,
        device,
        dataset: Sequence,
        conditions: Sequence[Condition],
        seed: int,
        *,
        pipeline: str = "reference",
    ) -> PredictionSession:
        """Start one evaluation (:class:`PredictionStore`): key the model, check it may use the cache,
        and return the session that serves and stores its predictions.

        The model's :func:`probe_output` on ``device`` goes into its key (:func:`model_key` with
        :func:`model_fingerprint`). Before a key's first entries are written the probe runs a
        second time: outputs that differ by more than :data:`PROBE_RTOL` (dropout left on,
        non-deterministic kernels) mean predictions that cannot be checked against a cache, so a
        :class:`CacheWarning` is issued and a session that stores nothing is returned; otherwise the
        probe output is stored with the key (:meth:`store_probe`). For a key with entries, the
        stored probe output must agree with this model's within :data:`PROBE_RTOL` (the key hashes
        only a coarse summary of it); if not, a :class:`CacheWarning` is issued and the key's
        entries are discarded. A new key costs two probe runs, a known one one.

        Args:
            model: a :class:`robustness.Classifier`, already on ``device`` and in eval mode.
            device: the inference device (``str`` or ``torch.device``).
            dataset: the images (each with ``image_id`` and ``path``); image ``i`` of the session is
                ``dataset[i]``, keyed by :func:`image_keys`.
            conditions: each with ``distortion`` and ``level``; condition ``k`` is ``conditions[k]``.
            seed: the base seed (in the condition key of stochastic distortions only).
            pipeline: ``"reference"`` or ``"device"`` (in every condition key of a device run:
                :meth:`condition_key`), so the two pipelines never share entries.

        Raises:
            Exception: whatever the model raises on the probe batch.
        """
        probe = probe_output(model, device)
        key = self.model_key(model, device, fingerprint=model_fingerprint(model, device, probe=probe))
        if not self.has_entries(key):
            # Before the first entries of a key are written, check that the model is deterministic:
            # a second probe run must agree (within PROBE_RTOL). Then keep the probe output with them.
            if probe_difference(probe, probe_output(model, device)) > PROBE_RTOL:
                warnings.warn(
                    f"robustness cache: model {model.name} gave different outputs on the same probe images twice "
                    "in a row (a random layer active in eval mode? non-deterministic kernels?); its predictions "
                    "cannot be checked against a cache, so it is evaluated without one",
                    CacheWarning,
                    stacklevel=3,
                )
                return _NullSession()
            self.store_probe(key, probe)
        else:
            # The key's entries were written by a model whose full probe output is stored with them: the
            # key's fingerprint hashes only a coarse summary (top-5 order, a few statistics), so a change
            # it misses (two classes' logits swapped outside every probe top-5) still shows here.
            stored = self.stored_probe(key)
            difference = math.inf if stored is None else probe_difference(stored, probe)
            if difference > PROBE_RTOL:
                warnings.warn(
                    f"robustness cache: model {model.name} computes differently on the probe images from the "
                    f"model whose predictions are cached under its key (largest logit difference {difference:.2g} "
                    "of their range); discarding those entries and recomputing",
                    CacheWarning,
                    stacklevel=3,
                )
                self.discard(key)
                self.store_probe(key, probe)
        # the class list joins the key for every label space but ImageNet-1k (whose keys stay as they were)
        classes = getattr(dataset, "classes", None)
        digest = None if classes is None or classes.is_imagenet else classes.digest
        condition_keys = [
            self.condition_key(c.distortion, c.level, seed, classes=digest, pipeline=pipeline) for c in conditions
        ]
        return _CacheSession(self, key, image_keys(dataset), condition_keys)

    # ------------------------------------------------------------------------------------- keys

    @staticmethod
    def model_key(model, device: str | None = None, *, fingerprint: str | None = None) -> str:
        """Hex key of a :class:`robustness.Classifier` evaluated on ``device``: :func:`model_key`."""
        return model_key(model, device, fingerprint=fingerprint)

    @staticmethod
    def condition_key(
        distortion: str, level: float, seed: int, classes: str | None = None, pipeline: str | None = None
    ) -> str:
        """Hex key of a condition (``distortion`` ``"clean"`` for the undistorted images).

        ``classes``: the digest of the dataset's class list (:attr:`robustness.labels.ClassList.digest`),
        so two label spaces never share entries; ``None`` for ImageNet-1k, whose keys are unchanged.
        ``pipeline``: ``"device"`` adds the device pipeline and its code version
        (:data:`robustness.device_pipeline.DEVICE_PIPELINE_VERSION`) to the key, so its predictions are
        never served to a reference run nor the reverse; ``None`` or ``"reference"`` leave the key
        as it was.

        Raises:
            ValueError: ``pipeline`` is another value.
        """
        from .distortions import DISTORTION_CODE_VERSION, DISTORTIONS

        spec = DISTORTIONS.get(distortion)
        stochastic = spec is not None and spec.stochastic
        fields = {
            "distortion": distortion,
            "level": float(level),
            "seed": int(seed) if stochastic else None,
            # built-ins: DISTORTION_CODE_VERSION (keys unchanged); registered: their code_version
            "distortion_code": DISTORTION_CODE_VERSION if spec is None else spec.cache_version,
            "engine": ENGINE_VERSION,
        }
        if classes is not None:
            fields["classes"] = str(classes)
        if pipeline == "device":
            from .device_pipeline import DEVICE_PIPELINE_VERSION

            fields["pipeline"] = f"device-{DEVICE_PIPELINE_VERSION}"
        elif pipeline not in (None, "reference"):
            raise ValueError(f"pipeline must be 'reference' or 'device', got {pipeline!r}")
        return _sha256_json(fields)[:32]

    def _folder(self, model_key: str, condition_key: str) -> Path:
        return self.root / _FORMAT / model_key / condition_key

    # ------------------------------------------------------------------------------- read/write

    def _read_chunk(self, path: Path, meta_expected: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Return ``(keys S64 (n,), top5 int16 (n, 5), flags uint8 (n,))``; raise ``ValueError`` if
        anything is off."""
        data = path.read_bytes()
        if not data.startswith(_MAGIC):
            raise ValueError("bad magic")
        header_end = len(_MAGIC) + 65
        digest, payload = data[len(_MAGIC) : header_end - 1], data[header_end:]
        if data[header_end - 1 : header_end] != b"\n" or hashlib.sha256(payload).hexdigest().encode() != digest:
            raise ValueError("checksum mismatch (truncated or modified)")
        with np.load(io.BytesIO(payload), allow_pickle=False) as archive:
            keys, top5, flags, meta = archive["keys"], archive["top5"], archive["flags"], archive["meta"]
        if json.loads(meta.tobytes().decode()) != meta_expected:
            raise ValueError("entry belongs to a different model or condition")
        if keys.dtype != np.dtype("S64") or keys.ndim != 1:
            raise ValueError(f"keys have dtype {keys.dtype} shape {keys.shape}")
        if top5.dtype != np.int16 or top5.shape != (len(keys), 5):
            raise ValueError(f"top5 has dtype {top5.dtype} shape {top5.shape}")
        if len(top5) and (top5.min() < -1 or top5.max() > 32766):
            # -1 pads the top-5 of a model with fewer than 5 classes; the engine also refuses an index
            # beyond its dataset's class count
            raise ValueError("class index outside -1-32766")
        if flags.dtype != np.uint8 or flags.shape != (len(keys),) or (len(flags) and flags.max() > FLAG_MASK):
            raise ValueError(f"flags have dtype {flags.dtype} shape {flags.shape} or unknown bits")
        return keys, top5, flags

    def _chunks(self, folder: Path) -> list[Path]:
        try:
            return sorted(p for p in folder.iterdir() if p.suffix == _SUFFIX and not p.name.startswith("."))
        except FileNotFoundError:
            return []

    def load(self, model_key: str, condition_key: str) -> dict[bytes, CachedPrediction]:
        """All valid entries of one (model, condition): image key (``bytes``) -> :class:`CachedPrediction`
        (``top5`` ``int16 (5,)``, ``flags`` ``int``).

        Corrupt chunks are deleted with a :class:`CacheWarning`; chunks that vanish while reading
        (another process merged them) are skipped.
        """
        folder = self._folder(model_key, condition_key)
        meta = {"model": model_key, "condition": condition_key}
        entries: dict[bytes, CachedPrediction] = {}
        for path in self._chunks(folder):
            try:
                keys, top5, flags = self._read_chunk(path, meta)
            except FileNotFoundError:
                continue
            except Exception as error:  # noqa: BLE001 - anything unreadable is recomputed, never trusted
                warnings.warn(
                    f"robustness cache: ignoring corrupt entry {path} ({error}); recomputing it",
                    CacheWarning,
                    stacklevel=2,
                )
                with contextlib.suppress(OSError):
                    path.unlink()
                continue
            entries.update(
                (key, CachedPrediction(row, flag)) for key, row, flag in zip(keys.tolist(), top5, flags.tolist())
            )
        return entries

    def store(
        self,
        model_key: str,
        condition_key: str,
        keys: Sequence[bytes] | np.ndarray,
        top5: np.ndarray,
        flags: Sequence[int] | np.ndarray | None = None,
    ) -> Path | None:
        """Write one chunk atomically: ``keys`` ``(n,)`` image keys, ``top5`` ``(n, 5)`` class indices,
        ``flags`` ``(n,)`` per-entry bits (:data:`FLAG_MISSED_TOLERANCE`; default all 0).

        Returns the chunk's path (``None`` when ``n == 0``).

        Raises:
            ValueError: shapes that do not match ``keys``, or unknown flag bits.
        """
        keys = np.asarray(keys, dtype="S64")
        top5 = np.asarray(top5).astype(np.int16)
        flags = np.zeros(len(keys), dtype=np.int64) if flags is None else np.asarray(flags)
        if flags.dtype.kind not in "iub":
            raise ValueError(f"flags must be integers, got dtype {flags.dtype}")
        flags = flags.astype(np.int64)
        if len(keys) == 0:
            return None
        if top5.shape != (len(keys), 5):
            raise ValueError(f"top5 must have shape ({len(keys)}, 5), got {top5.shape}")
        if flags.shape != (len(keys),) or (flags & ~FLAG_MASK).any() or (flags < 0).any():
            raise ValueError(f"flags must be {len(keys)} integers using only bits {FLAG_MASK:#x}, got {flags!r}")
        flags = flags.astype(np.uint8)
        folder = self._folder(model_key, condition_key)
        folder.mkdir(parents=True, exist_ok=True)
        meta = json.dumps({"model": model_key, "condition": condition_key}, sort_keys=True).encode()
        buffer = io.BytesIO()
        np.savez(buffer, keys=keys, top5=top5, flags=flags, meta=np.frombuffer(meta, dtype=np.uint8))
        payload = buffer.getvalue()
        path = folder / f"{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:8]}{_SUFFIX}"
        atomic_write(path, _MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload)
        return path

    def compact(self, model_key: str, condition_key: str) -> None:
        """Merge a condition's chunks into one (only the chunks read are deleted, so concurrent
        writers lose nothing)."""
        folder = self._folder(model_key, condition_key)
        with contextlib.suppress(OSError):  # temporary files of writers killed mid-write, after an hour
            for stale in folder.glob(".*.tmp"):
                if time.time() - stale.stat().st_mtime > 3600:
                    stale.unlink()
        chunks = self._chunks(folder)
        if len(chunks) <= 1:
            return
        entries = self.load(model_key, condition_key)
        if entries:
            keys = list(entries)
            self.store(
                model_key,
                condition_key,
                keys,
                np.stack([entries[k].top5 for k in keys]),
                [entries[k].flags for k in keys],
            )
        for path in chunks:
            with contextlib.suppress(OSError):
                path.unlink()

    # ------------------------------------------------------------------------------------ locks

    @contextlib.contextmanager
    def lock(self, model_key: str, condition_key: str, *, blocking: bool = True) -> Iterator[bool]:
        """Advisory exclusive lock on one (model, condition); yields whether it was acquired.

        Non-blocking mode yields ``False`` at once when another process holds it. The lock dies
        with its process, so an interrupted run never leaves a stale lock. On a filesystem without
        ``flock`` support (``ENOLCK``, ``ENOSYS``, ``EOPNOTSUPP``) it warns once per process
        (:class:`CacheWarning`), stops locking for this cache and yields ``True``: results stay
        correct, concurrent processes may compute the same pairs twice.
        """
        if not self.use_locks:
            yield True
            return
        folder = self._folder(model_key, condition_key)
        folder.mkdir(parents=True, exist_ok=True)
        handle = open(folder / ".lock", "a+b")  # noqa: SIM115 - held for the lock's lifetime, closed in finally
        try:
            unsupported = None
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
                acquired = True
            except BlockingIOError:
                acquired = False
            except OSError as error:
                if error.errno not in _UNSUPPORTED_LOCK_ERRNOS:
                    raise
                unsupported, acquired = error, False
            if unsupported is not None:
                self._locks_unsupported(unsupported)
                yield True
                return
            try:
                yield acquired
            finally:
                if acquired:
                    fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        finally:
            handle.close()

    def _locks_unsupported(self, error: OSError) -> None:
        global _LOCK_WARNED
        self.use_locks = False
        if not _LOCK_WARNED:
            _LOCK_WARNED = True
            warnings.warn(
                f"robustness cache: {self.root} does not support file locks ({errno.errorcode.get(error.errno, error.errno)}: "
                f"{error.strerror}); continuing without them, so parallel workers may compute the same predictions "
                "twice; put the cache on a local disk (--cache-dir / --robustness-cache-dir) to share the work",
                CacheWarning,
                stacklevel=4,
            )

    def _probe_file(self, model_key: str) -> Path:
        return self.root / _FORMAT / model_key / "probe.npz"

    def stored_probe(self, model_key: str) -> ProbeOutput | None:
        """The probe output stored with ``model_key``'s entries (:meth:`store_probe`), or ``None``
        when there is none or it cannot be read (an unreadable one counts as a different behaviour)."""
        path = self._probe_file(model_key)
        try:
            with np.load(path, allow_pickle=False) as archive:
                return ProbeOutput(archive["logits"].astype(np.float64), str(archive["dtype"]))
        except FileNotFoundError:
            return None
        except Exception:  # noqa: BLE001 - corrupt: never trusted
            return ProbeOutput(np.full((0,), np.nan), "unreadable")

    def store_probe(self, model_key: str, probe: ProbeOutput) -> None:
        """Store the probe output of the model whose predictions go under ``model_key`` (atomically)."""
        buffer = io.BytesIO()
        np.savez(buffer, logits=np.asarray(probe.logits, dtype=np.float64), dtype=np.array(probe.dtype))
        atomic_write(self._probe_file(model_key), buffer.getvalue())

    def has_entries(self, model_key: str) -> bool:
        """Whether any chunk of ``model_key`` is on disk (in any condition)."""
        folder = self.root / _FORMAT / model_key
        return folder.is_dir() and next(folder.rglob(f"*{_SUFFIX}"), None) is not None

    def discard(self, model_key: str) -> int:
        """Delete every entry (chunk) of one model key, in all conditions; lock files stay.
        Returns the number of chunk files deleted."""
        deleted = 0
        folder = self.root / _FORMAT / model_key
        for path in sorted(folder.rglob(f"*{_SUFFIX}")) if folder.is_dir() else []:
            with contextlib.suppress(OSError):
                path.unlink()
                deleted += 1
        return deleted

    def clear(self) -> None:
        """Delete every entry under ``root`` (the folder itself stays)."""
        import shutil

        shutil.rmtree(self.root / _FORMAT, ignore_errors=True)


class _CacheSession(PredictionSession):
    """A :class:`PredictionCache` session (:meth:`PredictionCache.open_run`): one model key, the
    dataset's image keys and the conditions' keys. Puts are buffered per condition and written as
    one chunk per condition every ``flush_interval`` seconds, when a claimed group ends and in
    :meth:`close`; a group's conditions are locked while the engine computes them and merged
    (:meth:`PredictionCache.compact`) before their locks are released."""

    def __init__(self, cache: PredictionCache, model_key: str, image_keys: np.ndarray, condition_keys: list[str]):
        self.cache, self.model_key = cache, model_key
        self.image_keys, self.condition_keys = image_keys, condition_keys
        self._pending: dict[int, list[tuple[int, np.ndarray, int]]] = {}  # condition -> (image, top5, flags)
        self._unmerged: set[int] = set()  # conditions written to since their chunks were last merged
        self._claims: list[Iterator[list[int]]] = []
        self._last_flush = time.monotonic()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} of {self.cache!r}, model key {self.model_key}>"

    def claim(self, condition_indices: Iterable[int]) -> Iterator[list[int]]:
        """See :meth:`PredictionSession.claim`. The free conditions are locked (without waiting) and
        yielded first; the ones another process holds are then waited for, locks taken in key order
        while holding none of the first group (so no deadlock), and yielded second."""
        claims = self._claim(list(condition_indices))
        self._claims.append(claims)
        return claims

    def _claim(self, condition_indices: list[int]) -> Iterator[list[int]]:
        order = sorted(condition_indices, key=lambda k: self.condition_keys[k])
        busy: list[int] = []
        with contextlib.ExitStack() as held:
            mine = []
            for k in order:
                acquired = held.enter_context(self.cache.lock(self.model_key, self.condition_keys[k], blocking=False))
                (mine if acquired else busy).append(k)
            if mine:
                yield mine
                self._finish(mine)
        if busy:
            with contextlib.ExitStack() as held:
                for k in busy:
                    held.enter_context(self.cache.lock(self.model_key, self.condition_keys[k], blocking=True))
                yield busy
                self._finish(busy)

    def _finish(self, condition_indices: list[int]) -> None:
        self.flush()
        for k in condition_indices:
            self.cache.compact(self.model_key, self.condition_keys[k])
            self._unmerged.discard(k)

    def get(self, condition_index: int) -> dict[int, CachedPrediction]:
        """See :meth:`PredictionSession.get` (:meth:`PredictionCache.load`, by image index)."""
        entries = self.cache.load(self.model_key, self.condition_keys[condition_index])
        if not entries:
            return {}
        return {i: entries[key] for i, key in enumerate(self.image_keys.tolist()) if key in entries}

    def put(
        self, condition_indices: np.ndarray, image_indices: np.ndarray, top5: np.ndarray, flags: np.ndarray
    ) -> None:
        """See :meth:`PredictionSession.put`; writes when ``flush_interval`` seconds passed since the
        last write."""
        condition_indices, image_indices = np.asarray(condition_indices), np.asarray(image_indices)
        top5, flags = np.asarray(top5), np.asarray(flags)
        n = len(condition_indices)
        if image_indices.shape != (n,) or top5.shape != (n, 5) or flags.shape != (n,):
            raise ValueError(
                f"put needs condition_indices (n,), image_indices (n,), top5 (n, 5) and flags (n,), got shapes "
                f"{condition_indices.shape}, {image_indices.shape}, {top5.shape}, {flags.shape}"
            )
        for k, i, row, flag in zip(condition_indices.tolist(), image_indices.tolist(), top5, flags.tolist()):
            self._pending.setdefault(k, []).append((i, row, flag))
            self._unmerged.add(k)
        if time.monotonic() - self._last_flush >= self.cache.flush_interval:
            self.flush()

    def flush(self) -> None:
        """Write what was put since the last write: one chunk per condition (:meth:`PredictionCache.store`).
        A condition leaves the buffer only once its chunk is written."""
        for k in list(self._pending):
            rows = self._pending[k]
            if rows:
                self.cache.store(
                    self.model_key,
                    self.condition_keys[k],
                    self.image_keys[[i for i, _, _ in rows]],
                    np.stack([row for _, row, _ in rows]),
                    [flag for _, _, flag in rows],
                )
            del self._pending[k]
        self._last_flush = time.monotonic()

    def sample_seed(self, condition_indices: Iterable[int]) -> int:
        """See :meth:`PredictionSession.sample_seed`: the first 8 bytes (little-endian) of the SHA-256
        of the model key and the sorted condition keys, joined by NUL."""
        conditions = sorted({self.condition_keys[k] for k in condition_indices})
        digest = hashlib.sha256("\0".join([self.model_key, *conditions]).encode()).digest()
        return int.from_bytes(digest[:8], "little")

    def discard(self) -> None:
        """See :meth:`PredictionSession.discard` (:meth:`PredictionCache.discard`; the stored probe
        output and the lock files stay)."""
        self._pending.clear()
        self.cache.discard(self.model_key)

    def close(self, error: BaseException | None = None) -> None:
        """See :meth:`PredictionSession.close`."""
        try:
            self.flush()
        finally:
            claims, self._claims = self._claims, []
            for claim in claims:
                claim.close()  # a group the engine left by an exception: its locks are released
        if error is None:
            for k in sorted(self._unmerged):
                self.cache.compact(self.model_key, self.condition_keys[k])
            self._unmerged.clear()


class _NullSession(PredictionSession):
    """Stores nothing: every condition in one group, nothing stored, puts dropped."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__}>"

    def claim(self, condition_indices: Iterable[int]) -> Iterator[list[int]]:
        group = list(condition_indices)
        if group:
            yield group

    def get(self, condition_index: int) -> dict[int, CachedPrediction]:
        return {}

    def put(
        self, condition_indices: np.ndarray, image_indices: np.ndarray, top5: np.ndarray, flags: np.ndarray
    ) -> None:
        pass

    def sample_seed(self, condition_indices: Iterable[int]) -> int:
        return 0

    def discard(self) -> None:
        pass

    def close(self, error: BaseException | None = None) -> None:
        pass


class NullStore:
    """The :class:`PredictionStore` of ``cache=None`` / ``--no-cache``: it stores nothing, so the
    engine computes every (image, condition) pair, through the same code path as with a cache. It
    runs nothing through the model (no probe)."""

    def __repr__(self) -> str:
        return "NullStore()"

    def open_run(
        self,
        model,
        device,
        dataset: Sequence,
        conditions: Sequence[Condition],
        seed: int,
        *,
        pipeline: str = "reference",
    ) -> PredictionSession:
        """A session that serves nothing and keeps nothing (:class:`PredictionStore`)."""
        return _NullSession()


def resolve_store(cache) -> PredictionStore:
    """The store behind ``evaluate(..., cache=...)``: ``None``/``False`` -> :class:`NullStore`;
    anything implementing :class:`PredictionStore` (a :class:`PredictionCache` included) -> itself;
    ``True`` or a folder -> :func:`resolve_cache`."""
    if cache is None or cache is False:
        return NullStore()
    if isinstance(cache, PredictionStore):
        return cache
    return resolve_cache(cache)


def resolve_cache(cache) -> PredictionCache | None:
    """``None``/``False`` -> no cache; ``True`` -> the default folder; a path -> that folder; a
    :class:`PredictionCache` -> itself."""
    if cache is None or cache is False:
        return None
    if cache is True:
        return PredictionCache()
    if isinstance(cache, PredictionCache):
        return cache
    return PredictionCache(cache)
