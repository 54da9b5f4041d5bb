"""Make written bytes survive a machine crash, not only a killed process.

A rename or a new file is durable only once the directory that names it is fsynced, and
the bytes of a file only once the file is: a power cut after an unsynced commit could
leave a manifest that names data the disk never received.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from pipeline_lib.errors import StoreWriteError

# What the user can do about each way a disk refuses a write.
_REFUSALS = {
    errno.ENOSPC: "the disk is full; free space on it",
    errno.EDQUOT: "the disk quota is used up; free space or raise the quota",
    errno.EACCES: "permission denied; make the store writable by this user",
    errno.EPERM: "permission denied; make the store writable by this user",
    errno.EROFS: "the file system is read-only; remount it read-write or move the store",
}


def fsync_file(path: str | Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def fsync_dir(path: str | Path) -> None:
    descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def fsync_tree(root: str | Path, up_to: str | Path) -> None:
    """fsync every file below ``root``, every directory below and at ``root``, and each
    directory between ``root`` and ``up_to`` (inclusive), which name the new entries."""
    root, up_to = Path(root), Path(up_to)
    dirs = [root]
    for entry in sorted(root.rglob("*")):
        if entry.is_dir():
            dirs.append(entry)
        else:
            fsync_file(entry)
    for folder in sorted(dirs, key=lambda p: len(p.parts), reverse=True):
        fsync_dir(folder)
    parent = root.parent
    while up_to in parent.parents or parent == up_to:
        fsync_dir(parent)
        parent = parent.parent


def refused_write(error: OSError, path: str | Path, what: str) -> StoreWriteError | None:
    """A ``StoreWriteError`` saying which path refused ``what`` and what to do, when
    ``error`` is a disk's refusal (full, quota, permission, read-only); else None."""
    advice = _REFUSALS.get(error.errno)
    if advice is None:
        return None
    where = error.filename or path
    return StoreWriteError(
        f"{where}: {error.strerror} while writing {what}; nothing was committed and the "
        f"store is as it was: {advice}, then run again"
    )
