"""On-disk store of codec distortion outputs (issue 12): encode once, decode on every reuse.

The codec distortions (:data:`robustness.distortions.CODEC_DISTORTIONS`: ``jpeg``, ``jpeg2000``)
are deterministic in (source pixels, distortion, level, code version, codec library versions) and
ignore the seed. JPEG 2000 at a target PSNR costs several OpenJPEG encodes per image (about
60-200 ms on the 2-core development machine), decoding its result about 5-9 ms. A
:class:`DistortionStore` keeps the *encoded* file (:func:`robustness.distortions.encode`: the JPEG
or JPEG 2000 bytes, a few KB each) and, for JPEG 2000, the :class:`~robustness.distortions.DistortionInfo`
of the search (achieved PSNR, within tolerance); a later call with the same key only decodes
(:func:`robustness.distortions.decode`), bit-identical to :func:`robustness.distortions.distort`.
Entries are reused across models, runs and releases as long as the key holds.

The engine (:func:`robustness.evaluate`) uses the store beside its prediction cache
(``<cache folder>/distortions``, :meth:`DistortionStore.beside`); ``cache=None`` / ``--no-cache``
means no store either (nothing read, nothing written).

Layout::

    root/v1/<key[:2]>/<key>.rds     one entry per (source image, distortion, level)

* **key** (:meth:`DistortionStore.key`): SHA-256 over the store format, the SHA-256 of the source
  image's pixels (its ``uint8 (H, W, 3)`` bytes and shape: the array the codec encodes, so the key
  follows the image file's bytes *and* the image-loading rules, and two files with the same pixels
  share entries), the distortion, its level, its code version
  (:attr:`robustness.distortions.Distortion.cache_version`) and :func:`robustness.distortions.codec_versions` (Pillow,
  libjpeg, OpenJPEG).
* **entry**: ``MAGIC + sha256(payload) hex + "\\n" + payload``, payload = one line of JSON (key,
  distortion, level, source shape, info) + ``"\\n"`` + the encoded file. An entry whose magic,
  checksum, header, shape or stream does not check out is reported with a
  :class:`DistortionStoreWarning`, deleted and recomputed; it is never trusted.

Writes are atomic (:func:`robustness._io.atomic_write`: temporary file, fsync, rename), so
concurrent processes that compute the same entry both write the same bytes and a reader sees
either no entry or a whole one; no lock is needed (at worst an entry is computed twice).

The store holds only its folder (it is pickled into DataLoader worker processes).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import distortions as _distortions
from ._io import atomic_write
from .distortions import CODEC_DISTORTIONS, DistortionInfo, codec_versions

__all__ = [
    "DistortionStore",
    "DistortionStoreWarning",
    "StoreSize",
    "STORE_FOLDER",
]

#: The store's folder inside a prediction cache folder (:meth:`DistortionStore.beside`).
STORE_FOLDER = "distortions"
#: Bumped when the entry format or the key's fields change.
_FORMAT = "v1"
_MAGIC = b"ROBUSTNESS-DISTORTION-1\n"
_SUFFIX = ".rds"
_HEADER_FIELDS = {"key", "distortion", "level", "shape", "info"}


class DistortionStoreWarning(UserWarning):
    """A distortion store entry could not be trusted (the message names the file) or written; the
    distortion is computed again, so results never change."""


@dataclass(frozen=True)
class StoreSize:
    """What a store holds: ``entries`` (files) and ``bytes`` (their total size on disk)."""

    entries: int
    bytes: int

    def describe(self) -> str:
        """``"21 entries, 84.2 KB"`` (decimal units: 1 KB = 1000 bytes)."""
        size = float(self.bytes)
        for unit in ("bytes", "KB", "MB", "GB"):
            if size < 1000 or unit == "GB":
                break
            size /= 1000
        amount = f"{self.bytes} bytes" if unit == "bytes" else f"{size:.1f} {unit}"
        return f"{self.entries} {'entry' if self.entries == 1 else 'entries'}, {amount}"


def _pixels_sha256(image: np.ndarray) -> str:
    """SHA-256 hex of a ``uint8 (H, W, 3)`` array's shape and bytes (C order)."""
    digest = hashlib.sha256(f"{image.shape}".encode())
    digest.update(np.ascontiguousarray(image).data)
    return digest.hexdigest()


class DistortionStore:
    """Encoded codec distortion outputs on disk; a drop-in for :func:`robustness.distortions.distort`.

    ``store.distort(image, "jpeg2000", 30)`` returns exactly ``distort(image, "jpeg2000", 30)``:
    the first call encodes (:func:`robustness.distortions.encode`) and writes the entry, later calls
    (in any process sharing ``root``) read and decode it. Other distortions pass through to
    :func:`robustness.distortions.distort` and store nothing.

    Args:
        root: the store's folder (created on first write); :meth:`beside` gives the one the engine
            uses beside a prediction cache.

    Thread safety: several processes (and DataLoader workers) may share ``root``.
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    @classmethod
    def beside(cls, cache_root: str | os.PathLike) -> DistortionStore:
        """The store of a prediction cache folder: ``<cache_root>/distortions``."""
        return cls(Path(cache_root) / STORE_FOLDER)

    def __repr__(self) -> str:
        return f"DistortionStore({str(self.root)!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, DistortionStore) and other.root == self.root

    def __hash__(self) -> int:
        return hash(self.root)

    # ------------------------------------------------------------------------------------- keys

    @staticmethod
    def stores(distortion: str) -> bool:
        """Whether ``distortion``'s outputs are stored (:data:`~robustness.distortions.CODEC_DISTORTIONS`)."""
        return distortion in CODEC_DISTORTIONS

    @staticmethod
    def key(image: np.ndarray, distortion: str, level: float) -> str:
        """Hex key (64 characters) of ``distortion`` at ``level`` on ``image`` (see the module docstring).

        Raises:
            ValueError: a bad image or an unknown distortion.
        """
        _distortions.check_image(image)
        spec = _distortions.get_distortion(distortion)
        fields = {
            "format": _FORMAT,
            "pixels": _pixels_sha256(image),
            "distortion": distortion,
            "level": float(level),
            "code": spec.cache_version,
            "codecs": codec_versions(),
        }
        return hashlib.sha256(json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()).hexdigest()

    def path(self, key: str) -> Path:
        """The entry file of ``key``."""
        return self.root / _FORMAT / key[:2] / f"{key}{_SUFFIX}"

    # ------------------------------------------------------------------------------- distortions

    def distort(self, image: np.ndarray, distortion: str, level: float, *, seed: int = 0) -> np.ndarray:
        """:func:`robustness.distortions.distort`, through the store for the codec distortions.

        Args, Returns, Raises: as :func:`robustness.distortions.distort` (bit-identical result).
        """
        if not self.stores(distortion):
            return _distortions.distort(image, distortion, level, seed=seed)
        return self._codec(image, distortion, level)[0]

    def distort_with_info(
        self, image: np.ndarray, distortion: str, level: float, *, seed: int = 0
    ) -> tuple[np.ndarray, DistortionInfo]:
        """:func:`robustness.distortions.distort_with_info`, through the store for the codec distortions.

        For ``jpeg2000`` the :class:`DistortionInfo` is the one stored with the entry (its
        ``encodes`` counts the encodes made when the entry was computed); for ``jpeg`` the PSNR is
        computed on the decoded image, as :func:`~robustness.distortions.distort_with_info` does.

        Args, Returns, Raises: as :func:`robustness.distortions.distort_with_info`.
        """
        if not self.stores(distortion):
            return _distortions.distort_with_info(image, distortion, level, seed=seed)
        out, info = self._codec(image, distortion, level)
        return out, info if info is not None else DistortionInfo(_distortions.psnr(image, out))

    def _codec(self, image: np.ndarray, distortion: str, level: float) -> tuple[np.ndarray, DistortionInfo | None]:
        spec = _distortions.get_distortion(distortion)
        _distortions.check_image(image)
        spec.check_level(level)
        key = self.key(image, distortion, level)
        entry = self._read(key, distortion, level, image.shape)
        if entry is not None:
            return entry
        codestream, out, info = _distortions.codec_round_trip(image, distortion, level)
        self._write(key, distortion, level, image.shape, codestream, info)
        return out, info

    # ------------------------------------------------------------------------------- read/write

    def _read(
        self, key: str, distortion: str, level: float, shape: tuple[int, ...]
    ) -> tuple[np.ndarray, DistortionInfo | None] | None:
        """The decoded entry and its info, or ``None`` when there is none or it is corrupt (deleted,
        with a :class:`DistortionStoreWarning`)."""
        path = self.path(key)
        try:
            data = path.read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as error:  # e.g. no permission: computed again (and the write will say why)
            self._corrupt(path, f"unreadable: {error}")
            return None
        try:
            return self._parse(data, key, distortion, level, shape)
        except Exception as error:  # noqa: BLE001 - anything unreadable is recomputed, never trusted
            self._corrupt(path, str(error))
            return None

    @staticmethod
    def _parse(
        data: bytes, key: str, distortion: str, level: float, shape: tuple[int, ...]
    ) -> tuple[np.ndarray, DistortionInfo | None]:
        if not data.startswith(_MAGIC):
            raise ValueError("bad magic")
        header_end = len(_MAGIC) + 65
        digest, payload = data[len(_MAGIC) : header_end - 1], data[header_end:]
        if data[header_end - 1 : header_end] != b"\n" or hashlib.sha256(payload).hexdigest().encode() != digest:
            raise ValueError("checksum mismatch (truncated or modified)")
        line, _, codestream = payload.partition(b"\n")
        header = json.loads(line.decode())
        if not isinstance(header, dict) or set(header) != _HEADER_FIELDS:
            raise ValueError(f"header fields {sorted(header) if isinstance(header, dict) else header!r}")
        expected = {"key": key, "distortion": distortion, "level": float(level), "shape": list(shape)}
        if {k: header[k] for k in expected} != expected:
            raise ValueError("entry belongs to another image, distortion or level")
        info = header["info"]
        if distortion == "jpeg2000":
            info = DistortionInfo(
                float(info["achieved_psnr"]),
                float(info["target_psnr"]),
                bool(info["within_tolerance"]),
                int(info["encodes"]),
            )
            if info.target_psnr != float(level) or info.within_tolerance != (
                abs(info.achieved_psnr - float(level)) <= _distortions.JPEG2000_PSNR_TOLERANCE_DB
            ):
                raise ValueError("info does not match its level")
        elif info is not None:
            raise ValueError(f"unexpected info for {distortion}")
        out = _distortions.decode(codestream)
        if out.shape != tuple(shape):
            raise ValueError(f"decodes to shape {out.shape}, expected {tuple(shape)}")
        return out, info

    def _write(
        self,
        key: str,
        distortion: str,
        level: float,
        shape: tuple[int, ...],
        codestream: bytes,
        info: DistortionInfo | None,
    ) -> None:
        """Write one entry atomically; a failed write warns (:class:`DistortionStoreWarning`) and the
        run goes on without storing it."""
        header = {
            "key": key,
            "distortion": distortion,
            "level": float(level),
            "shape": list(shape),
            "info": None
            if info is None
            else {
                "achieved_psnr": info.achieved_psnr,  # math.inf (lossless) is written as Infinity
                "target_psnr": info.target_psnr,
                "within_tolerance": info.within_tolerance,
                "encodes": info.encodes,
            },
        }
        payload = json.dumps(header, sort_keys=True, separators=(",", ":")).encode() + b"\n" + bytes(codestream)
        try:
            atomic_write(self.path(key), _MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload)
        except OSError as error:
            warnings.warn(
                f"robustness distortion store: cannot write {self.path(key)} ({error}); the distortion is "
                "computed without storing it",
                DistortionStoreWarning,
                stacklevel=4,
            )

    def _corrupt(self, path: Path, reason: str) -> None:
        warnings.warn(
            f"robustness distortion store: ignoring corrupt entry {path} ({reason}); recomputing it",
            DistortionStoreWarning,
            stacklevel=5,
        )
        with contextlib.suppress(OSError):
            path.unlink()

    # ------------------------------------------------------------------------------ housekeeping

    def _entries(self):
        # another process may clear the store (or a cleanup job delete it) while this one lists it:
        # a folder that vanished holds no entries
        folder = self.root / _FORMAT
        try:
            subfolders = [sub for sub in os.scandir(folder) if sub.is_dir()]
        except (FileNotFoundError, NotADirectoryError):
            return
        for sub in subfolders:
            try:
                entries = list(os.scandir(sub.path))
            except (FileNotFoundError, NotADirectoryError):
                continue
            for entry in entries:
                if entry.name.endswith(_SUFFIX) and not entry.name.startswith("."):
                    yield entry

    def size(self) -> StoreSize:
        """Entries (files) and their total bytes on disk (:class:`StoreSize`); an empty or missing
        store is ``StoreSize(0, 0)``."""
        entries = total = 0
        for entry in self._entries():
            with contextlib.suppress(FileNotFoundError):
                total += entry.stat().st_size
                entries += 1
        return StoreSize(entries, total)

    def tidy(self, age: float = 3600.0) -> int:
        """Delete temporary files of writers killed mid-write, older than ``age`` seconds; returns
        how many were deleted.

        The files are :func:`robustness._io.atomic_write`'s ``.<entry name>.<random>.tmp`` in an
        entry's folder; a younger one may belong to a live writer and is left alone (an entry write
        takes milliseconds, so an hour is far beyond any live one). :func:`robustness.evaluate` calls
        it once per run with a cache (one listing of the entry folders' names; only the temporary
        files are looked at)."""
        folder = self.root / _FORMAT
        deleted = 0
        now = time.time()
        for stale in folder.glob("*/.*.tmp") if folder.is_dir() else ():
            with contextlib.suppress(OSError):
                if now - stale.stat().st_mtime > age:
                    stale.unlink()
                    deleted += 1
        return deleted

    def clear(self) -> None:
        """Delete every entry (the folder ``root`` itself stays)."""
        import shutil

        shutil.rmtree(self.root / _FORMAT, ignore_errors=True)
