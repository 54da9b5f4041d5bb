"""Content hashes of model folders: what a manifest records and a cache key trusts."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, BinaryIO

from pipeline_lib.errors import CheckpointError

# Files whose bytes define a model; logs, summaries and checkpoints do not.
_HASHED_SUFFIXES = (".json", ".safetensors", ".bin", ".txt", ".model")
_UNHASHED_NAMES = {"training_summary.json"}
_UNHASHED_DIRS = {"checkpoints"}

_HASH_CACHE: dict[tuple[Any, ...], str] = {}


def _hashed_files(root: Path) -> list[Path]:
    index_path = root / "model_index.json"
    if index_path.is_file():
        # A pipeline's hash covers its declared components, not extras such as
        # the ControlNet initialised beside it.
        index = json.loads(index_path.read_text())
        tops = [index_path] + [root / k for k in sorted(index) if (root / k).is_dir()]
    else:
        tops = [root]
    files: list[Path] = []
    for top in tops:
        candidates = [top] if top.is_file() else top.rglob("*")
        for f in candidates:
            rel = f.relative_to(root)
            if (
                f.is_file()
                and f.suffix in _HASHED_SUFFIXES
                and f.name not in _UNHASHED_NAMES
                and not _UNHASHED_DIRS.intersection(rel.parts[:-1])
                and not any(p.startswith(".") for p in rel.parts)
            ):
                files.append(f)
    return sorted(files, key=lambda f: f.relative_to(root).as_posix())


def _canonical_safetensors_header(fh: BinaryIO) -> bytes:
    """The header with sorted keys: safetensors writes ``__metadata__`` in random order,
    so the same weights saved twice differ in bytes."""
    size = int.from_bytes(fh.read(8), "little")
    header = json.loads(fh.read(size))
    return json.dumps(header, sort_keys=True).encode()


def model_hash(path: str | Path, length: int = 16) -> str:
    """Short sha256 over the sorted relative paths and bytes of a model's weight/config files.

    Stable across machines and copies; ignores training summaries and resume
    checkpoints. Cached in-process by (path, size, mtime) since weights can be GBs.
    """
    root = Path(path).absolute()
    if not root.exists():
        raise CheckpointError(f"{root}: model directory does not exist")
    files = _hashed_files(root)
    if not files:
        raise CheckpointError(f"{root}: no weight or config files to hash")
    key = tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    if key not in _HASH_CACHE:
        digest = hashlib.sha256()
        for f in files:
            digest.update(f.relative_to(root).as_posix().encode() + b"\0")
            with f.open("rb") as fh:
                if f.suffix == ".safetensors":
                    digest.update(_canonical_safetensors_header(fh))
                while chunk := fh.read(1 << 22):
                    digest.update(chunk)
            digest.update(b"\0")
        _HASH_CACHE[key] = digest.hexdigest()
    return _HASH_CACHE[key][:length]
