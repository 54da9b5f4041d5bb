"""Stores on object storage (``s3://bucket/prefix/store.zarr``), through fsspec and s3fs.

An object store has no rename, no fsync and no flock, but every PUT appears whole or not at
all, and S3 writes conditionally: ``If-None-Match: *`` creates an object only if none is
there, ``If-Match: <etag>`` replaces or deletes only the version that was read. The store
builds on exactly those: arrays are pre-sized once (their metadata is never rewritten), a
shard's data is one object per array, its commit is one conditional PUT of the manifest,
and claims are lease objects replaced by compare-and-swap (``leases.py``).

Where to connect and with which credentials comes from the environment, as for any AWS
client (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``
...), or from fsspec's own configuration (``FSSPEC_S3_*`` variables, ``~/.config/fsspec``),
so a URL alone names the store in every process: CLI, Prefect task, writer on another host.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pipeline_lib.errors import StoreError

T = TypeVar("T")

# Conditional writes are S3 API features; other fsspec protocols are not supported.
PROTOCOLS = ("s3", "s3a")
# Every listing is read afresh: another process may have committed a shard since.
_OPTIONS = {"use_listings_cache": False}

_roots: dict[tuple[int, str], ObjectRoot] = {}
_roots_guard = threading.Lock()


def is_url(store: str | Path) -> bool:
    """Whether ``store`` names an object store (a URL such as ``s3://bucket/store.zarr``)."""
    return isinstance(store, str) and "://" in store and not store.startswith("file://")


def location(store: str | Path) -> Path | str:
    """A store's root: a ``Path`` on a local disk, the URL (no trailing slash) otherwise."""
    if is_url(store):
        return str(store).rstrip("/")
    return Path(str(store).removeprefix("file://"))


def join(root: Path | str, *parts: str) -> Path | str:
    """``root / part / ...`` for a Path or a URL."""
    if isinstance(root, Path):
        return root.joinpath(*parts)
    return "/".join([root, *parts])


@dataclass(frozen=True)
class ObjectRoot:
    """The objects under one store URL: keys are relative to the store's root."""

    url: str
    fs: Any  # s3fs.S3FileSystem (synchronous)
    root: str  # bucket/prefix/store.zarr

    def key(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def exists(self, *parts: str) -> bool:
        return self.fs.isfile(self.key(*parts))

    def names(self, *parts: str, sizes: bool = False) -> list:
        """The entry names right under ``parts`` (with their sizes if asked), [] when none."""
        try:
            entries = self.fs.ls(self.key(*parts), detail=True)
        except FileNotFoundError:
            return []
        found = [(e["name"].rstrip("/").rsplit("/", 1)[-1], e.get("size", 0)) for e in entries]
        return sorted(found) if sizes else sorted(name for name, _ in found)

    def read(self, *parts: str) -> bytes:
        return self.fs.cat_file(self.key(*parts))

    def etag(self, *parts: str) -> str:
        """The current version's ETag; FileNotFoundError when there is none."""
        return self.fs.info(self.key(*parts))["ETag"]

    def create(self, parts: tuple[str, ...], data: bytes) -> str | None:
        """Write ``data`` only if no object is there (one conditional PUT): the new version's
        ETag, or None if an object was there."""
        written = _unless_refused(
            lambda: self.fs.pipe_file(self.key(*parts), data, mode="create"), FileExistsError
        )
        return None if written is None else written["ETag"]

    def replace(self, parts: tuple[str, ...], data: bytes, etag: str) -> str | None:
        """Replace the object's version ``etag`` by ``data``: the new ETag, or None if the
        object is another version now (or gone)."""
        written = _unless_refused(
            lambda: self.fs.pipe_file(self.key(*parts), data, IfMatch=etag),
            FileNotFoundError,
            FileExistsError,
        )
        return None if written is None else written["ETag"]

    def delete(self, *parts: str, etag: str | None = None) -> bool:
        """Delete the object (only its version ``etag`` if given); False if that was not it."""
        bucket, _, key = self.key(*parts).partition("/")
        match = {"IfMatch": etag} if etag is not None else {}
        deleted = _unless_refused(
            lambda: self.fs.call_s3("delete_object", Bucket=bucket, Key=key, **match),
            FileNotFoundError,
        )
        if deleted is None:
            return False
        self.fs.invalidate_cache(self.key(*parts))
        return True

    def delete_tree(self, *parts: str) -> None:
        try:
            self.fs.rm(self.key(*parts), recursive=True)
        except FileNotFoundError:
            pass

    def zarr_store(self, read_only: bool = False):
        """zarr's FsspecStore on this root (its own asynchronous s3fs instance)."""
        from zarr.storage import FsspecStore

        return FsspecStore.from_url(self.url, storage_options=dict(_OPTIONS), read_only=read_only)


def object_root(url: str) -> ObjectRoot:
    """The (cached, per process) ObjectRoot of a store URL."""
    url = url.rstrip("/")
    cache_key = (os.getpid(), url)
    with _roots_guard:
        found = _roots.get(cache_key)
    if found is not None:
        return found
    import fsspec

    protocol = url.split("://", 1)[0]
    if protocol not in PROTOCOLS:
        raise StoreError(
            f"{url}: object stores are supported on S3 and S3-compatible servers "
            f"({', '.join(p + '://' for p in PROTOCOLS)}): the commit needs S3's conditional "
            "writes; use such a URL or a local path"
        )
    try:
        fs, root = fsspec.url_to_fs(url, **_OPTIONS)
    except ImportError as error:
        raise StoreError(f"{url}: s3fs is not installed ({error}); pip install s3fs") from error
    found = ObjectRoot(url, fs, root)
    with _roots_guard:
        _roots[cache_key] = found
    return found


def _unless_refused(write: Callable[[], T], *absent: type[OSError]) -> T | None:
    """``write()``, or None when S3 refuses its condition (412; 409 when a concurrent
    conditional write won) or it raises one of ``absent``."""
    try:
        return write()
    except absent:
        return None
    except OSError as error:
        if condition_failed(error):
            return None
        raise


def condition_failed(error: BaseException) -> bool:
    """Whether ``error`` is S3 refusing a conditional write (412, or 409 for a concurrent one)."""
    cause: BaseException | None = error
    while cause is not None:
        response = getattr(cause, "response", None)
        if isinstance(response, dict):
            code = str(response.get("Error", {}).get("Code", ""))
            return code in {"PreconditionFailed", "ConditionalRequestConflict", "412", "409"}
        cause = cause.__cause__
    return False
