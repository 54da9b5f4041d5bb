"""Make written bytes survive a machine crash, not only a killed process.

A rename or a new file is durable only once the directory that names it is fsynced, and
the bytes of a file only once the file is: a power cut after an unsynced commit could
leave a manifest that names data the disk never received.
"""

from __future__ import annotations

import os
from pathlib import Path


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
