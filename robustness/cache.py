"""On-disk cache of per-image top-5 predictions, so unchanged re-runs do no inference.

Layout (``root`` defaults to ``$ROBUSTNESS_CACHE_DIR`` or ``.robustness-cache`` in the working
directory)::

    root/v1/<model key>/<condition key>/<chunk>.rpc     checksummed entries (image key -> top-5)
    root/v1/<model key>/<condition key>/.lock           advisory lock while a process computes it

* **model key**: SHA-256 over the model name, the network's class, :attr:`Classifier.weights_digest`,
  :meth:`Preprocessing.to_dict`, ``Classifier.background_class``, the inference device type and the versions of everything that can
  change a prediction (torch, torchvision, numpy, scipy, Pillow and its libjpeg / OpenJPEG).
* **condition key**: SHA-256 over the distortion name, its level, the base seed (stochastic
  distortions only: the others ignore it), :data:`robustness.distortions.DISTORTION_CODE_VERSION`
  and :data:`ENGINE_VERSION` (image loading and seed-derivation rules).
* **image key**: SHA-256 over the image id (it seeds the noise) and the SHA-256 of the file's bytes.
  Keying each image by its content, rather than the whole dataset by one digest, means a changed,
  added or removed file invalidates only its own entries; a run on a subset reuses the full run.

A chunk file is ``MAGIC + sha256(payload) hex + "\\n" + payload`` where the payload is an ``.npz``
(no pickles) holding ``keys`` (``S64`` ASCII hex image keys, shape ``(n,)``), ``top5`` (``int16``
class indices, shape ``(n, 5)``) and ``meta`` (the JSON of both keys). Chunks are written atomically
(temporary file in the same folder, fsync, rename). A chunk whose magic, checksum, format, keys or
values do not check out is reported with a :class:`CacheWarning`, deleted and its images recomputed;
it is never trusted. The engine writes a chunk every ``flush_interval`` seconds (30 by default) and when a run ends
or is interrupted, so an interrupted run resumes where it stopped; after a run the chunks of a
condition are merged into one.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import time
import uuid
import warnings
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from ._io import atomic_write

__all__ = [
    "PredictionCache",
    "CacheWarning",
    "CACHE_ENV_VAR",
    "DEFAULT_CACHE_DIR",
    "ENGINE_VERSION",
    "default_cache_dir",
    "file_sha256",
    "image_keys",
    "resolve_cache",
]

CACHE_ENV_VAR = "ROBUSTNESS_CACHE_DIR"
DEFAULT_CACHE_DIR = ".robustness-cache"
#: Bumped when image loading, seed derivation or preprocessing order in the engine change.
ENGINE_VERSION = "1"
_FORMAT = "v1"
_MAGIC = b"ROBUSTNESS-PREDICTIONS-1\n"
_SUFFIX = ".rpc"

try:  # POSIX advisory locks; elsewhere processes may duplicate work, never corrupt it.
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None


class CacheWarning(UserWarning):
    """A cache entry was corrupt or unreadable and will be recomputed (the message names the file)."""


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
            digest = hashlib.file_digest(handle, "sha256").hexdigest() if hasattr(hashlib, "file_digest") \
                else hashlib.sha256(handle.read()).hexdigest()
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
    import PIL
    import scipy
    import torch
    from PIL import features

    try:
        import torchvision
        torchvision_version = torchvision.__version__
    except ImportError:  # pragma: no cover
        torchvision_version = None
    return {
        "torch": torch.__version__, "torchvision": torchvision_version, "numpy": numpy.__version__,
        "scipy": scipy.__version__, "pillow": PIL.__version__,
        "libjpeg": features.version("jpg"), "openjpeg": features.version("jpg_2000"),
    }


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

    # ------------------------------------------------------------------------------------- keys

    @staticmethod
    def model_key(model, device: str | None = None) -> str:
        """Hex key of a :class:`robustness.Classifier` evaluated on ``device`` (type only: cpu/cuda)."""
        import torch

        device_type = torch.device(device).type if device is not None else "cpu"
        net = getattr(model, "net", model)
        return _sha256_json({
            "name": model.name,
            "network": f"{type(net).__module__}.{type(net).__qualname__}",
            "weights": model.weights_digest,
            "preprocessing": model.preprocessing.to_dict(),
            "background_class": bool(getattr(model, "background_class", False)),
            "device": device_type,
            "environment": _environment(),
        })[:32]

    @staticmethod
    def condition_key(distortion: str, level: float, seed: int) -> str:
        """Hex key of a condition (``distortion`` ``"clean"`` for the undistorted images)."""
        from .distortions import DISTORTION_CODE_VERSION, DISTORTIONS

        stochastic = distortion in DISTORTIONS and DISTORTIONS[distortion].stochastic
        return _sha256_json({
            "distortion": distortion,
            "level": float(level),
            "seed": int(seed) if stochastic else None,
            "distortion_code": DISTORTION_CODE_VERSION,
            "engine": ENGINE_VERSION,
        })[:32]

    def _folder(self, model_key: str, condition_key: str) -> Path:
        return self.root / _FORMAT / model_key / condition_key

    # ------------------------------------------------------------------------------- read/write

    def _read_chunk(self, path: Path, meta_expected: dict) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(keys S64 (n,), top5 int16 (n, 5))``; raise ``ValueError`` if anything is off."""
        data = path.read_bytes()
        if not data.startswith(_MAGIC):
            raise ValueError("bad magic")
        header_end = len(_MAGIC) + 65
        digest, payload = data[len(_MAGIC):header_end - 1], data[header_end:]
        if data[header_end - 1:header_end] != b"\n" or hashlib.sha256(payload).hexdigest().encode() != digest:
            raise ValueError("checksum mismatch (truncated or modified)")
        with np.load(io.BytesIO(payload), allow_pickle=False) as archive:
            keys, top5, meta = archive["keys"], archive["top5"], archive["meta"]
        if json.loads(meta.tobytes().decode()) != meta_expected:
            raise ValueError("entry belongs to a different model or condition")
        if keys.dtype != np.dtype("S64") or keys.ndim != 1:
            raise ValueError(f"keys have dtype {keys.dtype} shape {keys.shape}")
        if top5.dtype != np.int16 or top5.shape != (len(keys), 5):
            raise ValueError(f"top5 has dtype {top5.dtype} shape {top5.shape}")
        if len(top5) and (top5.min() < 0 or top5.max() > 999):
            raise ValueError("class index outside 0-999")
        return keys, top5

    def _chunks(self, folder: Path) -> list[Path]:
        try:
            return sorted(p for p in folder.iterdir() if p.suffix == _SUFFIX and not p.name.startswith("."))
        except FileNotFoundError:
            return []

    def load(self, model_key: str, condition_key: str) -> dict[bytes, np.ndarray]:
        """All valid entries of one (model, condition): image key (``bytes``) -> ``int16 (5,)`` top-5.

        Corrupt chunks are deleted with a :class:`CacheWarning`; chunks that vanish while reading
        (another process merged them) are skipped.
        """
        folder = self._folder(model_key, condition_key)
        meta = {"model": model_key, "condition": condition_key}
        entries: dict[bytes, np.ndarray] = {}
        for path in self._chunks(folder):
            try:
                keys, top5 = self._read_chunk(path, meta)
            except FileNotFoundError:
                continue
            except Exception as error:  # noqa: BLE001 - anything unreadable is recomputed, never trusted
                warnings.warn(f"robustness cache: ignoring corrupt entry {path} ({error}); recomputing it",
                              CacheWarning, stacklevel=2)
                with contextlib.suppress(OSError):
                    path.unlink()
                continue
            entries.update(zip(keys.tolist(), top5))
        return entries

    def store(self, model_key: str, condition_key: str, keys: Sequence[bytes] | np.ndarray, top5: np.ndarray) -> Path | None:
        """Write one chunk atomically: ``keys`` ``(n,)`` image keys, ``top5`` ``(n, 5)`` class indices.

        Returns the chunk's path (``None`` when ``n == 0``).
        """
        keys = np.asarray(keys, dtype="S64")
        top5 = np.asarray(top5).astype(np.int16)
        if len(keys) == 0:
            return None
        if top5.shape != (len(keys), 5):
            raise ValueError(f"top5 must have shape ({len(keys)}, 5), got {top5.shape}")
        folder = self._folder(model_key, condition_key)
        folder.mkdir(parents=True, exist_ok=True)
        meta = json.dumps({"model": model_key, "condition": condition_key}, sort_keys=True).encode()
        buffer = io.BytesIO()
        np.savez(buffer, keys=keys, top5=top5, meta=np.frombuffer(meta, dtype=np.uint8))
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
            self.store(model_key, condition_key, keys, np.stack([entries[k] for k in keys]))
        for path in chunks:
            with contextlib.suppress(OSError):
                path.unlink()

    # ------------------------------------------------------------------------------------ locks

    @contextlib.contextmanager
    def lock(self, model_key: str, condition_key: str, *, blocking: bool = True) -> Iterator[bool]:
        """Advisory exclusive lock on one (model, condition); yields whether it was acquired.

        Non-blocking mode yields ``False`` at once when another process holds it. The lock dies
        with its process, so an interrupted run never leaves a stale lock.
        """
        if not self.use_locks:
            yield True
            return
        folder = self._folder(model_key, condition_key)
        folder.mkdir(parents=True, exist_ok=True)
        handle = open(folder / ".lock", "a+b")
        try:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
                acquired = True
            except BlockingIOError:
                acquired = False
            try:
                yield acquired
            finally:
                if acquired:
                    fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        finally:
            handle.close()

    def clear(self) -> None:
        """Delete every entry under ``root`` (the folder itself stays)."""
        import shutil

        shutil.rmtree(self.root / _FORMAT, ignore_errors=True)


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
