"""File helpers shared by the result writers, the baselines and the prediction cache."""

from __future__ import annotations

import contextlib
import os
import re
import stat
import tempfile
from pathlib import Path

__all__ = ["atomic_write", "new_file_mode", "safe_name"]


def safe_name(name: str) -> str:
    """``name`` as one file or folder name: every character other than ASCII letters, digits, ``_``,
    ``.`` and ``-`` becomes ``_`` (model specs hold ``:`` and ``/``, e.g. ``torchvision:resnet18`` ->
    ``torchvision_resnet18``), and a name of dots only (``.``, ``..``) has its dots replaced too, so
    the result never climbs out of its folder. Used for run folders and baseline files.
    """
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
    return "_" * len(safe) if set(safe) <= {"."} else safe


def new_file_mode() -> int:
    """The permission bits ``open(path, "w")`` would give a new file: ``0o666 & ~umask``.

    The umask is read from ``/proc/self/status`` (Linux >= 4.7: ``Umask:`` line), which leaves it
    alone; elsewhere ``os.umask`` has no read-only form, so it is set and restored at once.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            umask = next(int(line.split()[1], 8) for line in status if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError, IndexError):
        umask = os.umask(0o022)
        os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: a temporary file in the same folder, fsync, rename.

    Readers see the old file or the whole new one, never a partial write; on any error the
    temporary file is removed and the exception propagates.

    Permissions are those of an ordinary write: a new file gets ``0o666 & ~umask`` (e.g.
    ``-rw-r--r--`` under the usual umask 022), and a file that is replaced keeps its own mode.
    (``tempfile.mkstemp`` creates its file ``0o600``; the mode is set before the rename, so the file
    never appears under ``path`` with the wrong one.)

    Raises:
        OSError: the folder cannot be created or written, or the rename fails.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        mode = new_file_mode()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fchmod(handle.fileno(), mode)
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
