"""The sample store: a Zarr v3 group with ``images`` (N,H,W,3) and ``labels`` (N,H,W) uint8.

One chunk per label, two per image (its top and bottom bands of rows, which a single-sample
read decodes on two cores), ``shard_size`` samples per zarr shard file. Lossless: images through a
lossless image codec (WebP lossless by default, see ``codecs.py``) with a crc32c checksum,
labels through zstd with its checksum (exact, and readable by any Zarr v3 implementation).
Shard k owns rows ``[k*S, (k+1)*S)``, so different shards never share a file and any
worker can write any shard. Which rows hold committed samples is known only from the
manifests: array rows beyond them read as zeros, never as an error.

On an object store (an ``s3://`` URL, see ``object_store.py``) the arrays are created once,
pre-sized for ``OBJECT_STORE_SHARDS`` shards, and their metadata is never rewritten: two
writers on two machines cannot both resize a ``zarr.json`` they cannot lock, and rows
never written cost nothing (no object) and read as the fill value.
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import zarr

from pipeline_lib.errors import IntegrityError, ShardNotFoundError, StoreError
from pipeline_lib.store.codecs import DEFAULT_IMAGE_CODEC, image_codecs, label_codecs
from pipeline_lib.store.manifest import (
    SCHEMA_VERSION,
    committed_shard_ids,
    parquet_source,
    read_manifests,
    sha256,
)
from pipeline_lib.store.object_store import is_url, join, location, object_root
from pipeline_lib.store.shard_reader import ShardReader

log = logging.getLogger(__name__)

STORE_FORMAT = "label-freedom-store"
LOCK_FILE = ".writer.lock"
# The geometry every store records in its group attributes, beside ``format``.
STORE_ATTRS = ("shard_size", "height", "width")
# Shards the arrays are pre-sized for when a store is created; they grow by doubling.
INITIAL_SHARDS = 4
# Shards an object store's arrays are sized for, once: a million shards (64 million samples
# at 64 per shard). Unwritten shards cost nothing.
OBJECT_STORE_SHARDS = 2**20
# Chunks per image (bands of rows): a random single-sample read is bound by decoding one
# image, and two bands decode on two cores at once (README, "Benchmarks").
IMAGE_BANDS = 2


@contextmanager
def store_lock(path: str | Path) -> Iterator[None]:
    """An exclusive advisory lock: only its holder creates or resizes the arrays.

    zarr's resize rewrites zarr.json; two resizing processes would race, data writes to
    different shards of a pre-sized array would not. An object store needs no lock
    (its arrays never resize, its metadata and manifests are created conditionally).
    """
    if is_url(path):
        yield
        return
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    with open(path / LOCK_FILE, "a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


class SampleStore:
    """An opened store: its geometry, arrays and read access to committed samples."""

    def __init__(self, path: str | Path):
        self.path = location(path)
        if not self._exists("zarr.json"):
            raise StoreError(
                f"{self.path}: no sample store here (zarr.json missing); "
                "run `lfactory generate` to create one"
            )
        meta = join(self.path, "zarr.json")
        try:
            attrs = dict(zarr.open_group(self._zarr_store("r"), mode="r").attrs)
        except (ValueError, TypeError, KeyError) as error:  # what zarr raises on bad JSON
            raise StoreError(f"{meta}: unreadable store metadata ({error})") from error
        if attrs.get("format") != STORE_FORMAT:
            raise StoreError(f"{self.path}: a Zarr group but not a Label Freedom store")
        missing = [k for k in STORE_ATTRS if not isinstance(attrs.get(k), int)]
        if missing:
            raise StoreError(
                f"{meta}: store attribute(s) {', '.join(missing)} missing or not integers; "
                "the store's metadata is damaged (restore zarr.json from a backup)"
            )
        self.shard_size, self.height, self.width = (attrs[k] for k in STORE_ATTRS)
        # Read handles, opened once per process and reopened only when the arrays' metadata
        # changed (a resize rewrites zarr.json): (pid, metadata stamp, arrays, readers).
        self._opened: tuple | None = None

    @property
    def is_object_store(self) -> bool:
        return isinstance(self.path, str)

    def _exists(self, *parts: str) -> bool:
        if self.is_object_store:
            return object_root(self.path).exists(*parts)
        return self.path.joinpath(*parts).is_file()

    def _zarr_store(self, mode: str):
        """What zarr opens: the folder, or an FsspecStore on the URL."""
        if self.is_object_store:
            return object_root(self.path).zarr_store(read_only=mode == "r")
        return self.path

    def _metadata_stamp(self) -> tuple:
        if self.is_object_store:
            return ("never resized",)
        stamps = []
        for name in ("images", "labels"):
            try:
                stat = os.stat(self.path / name / "zarr.json")
            except FileNotFoundError:
                return ()
            stamps.append((stat.st_ino, stat.st_size, stat.st_mtime_ns))
        return tuple(stamps)

    def _open_for_reading(self) -> tuple:
        stamp = self._metadata_stamp()
        opened = self._opened
        if opened is None or opened[0] != os.getpid() or opened[1] != stamp or not stamp:
            arrays = self._open_arrays("r")
            # Object stores are read through zarr; the direct reader is for local files.
            readers = tuple(
                None if self.is_object_store else ShardReader.for_array(self.path / name, array)
                for name, array in zip(("images", "labels"), arrays, strict=True)
            )
            opened = self._opened = (os.getpid(), stamp, arrays, readers)
        return opened

    def arrays(self, mode: str = "r") -> tuple[zarr.Array, zarr.Array]:
        """``(images, labels)``; read-only handles are kept and reopened after the store grew.

        ``mode="r+"`` (writers) always opens afresh.
        """
        if mode == "r":
            return self._open_for_reading()[2]
        return self._open_arrays(mode)

    def _open_arrays(self, mode: str) -> tuple[zarr.Array, zarr.Array]:
        group = zarr.open_group(self._zarr_store(mode), mode=mode)
        arrays = []
        for name in ("images", "labels"):
            try:
                arrays.append(group[name])
            except (ValueError, TypeError, KeyError) as error:  # absent or bad zarr.json
                raise StoreError(
                    f"{join(self.path, name, 'zarr.json')}: array metadata missing or unreadable "
                    f"({type(error).__name__}: {error}); the store is damaged"
                ) from error
        return arrays[0], arrays[1]

    def shard_rows(self, shard_id: int) -> range:
        return range(shard_id * self.shard_size, (shard_id + 1) * self.shard_size)

    def committed_shards(self) -> list[int]:
        return committed_shard_ids(self.path)

    def committed_count(self) -> int:
        return committed_count(self.path)

    def manifest(self) -> pa.Table:
        """Every committed manifest row as a pyarrow Table sorted by array row."""
        return read_manifests(self.path)

    def read_rows(self, indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """Images and labels at array rows ``indices`` (committed or not: check first).

        Rows are read from the shard files, each file opened and its index read once per
        call however many of its rows are asked for (zarr's own integer-array selection
        decodes far more than it returns on sharded arrays).
        """
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        _, _, (images, labels), readers = self._open_for_reading()
        if idx.size and idx.max() >= images.shape[0]:  # the store may have grown since
            self._opened = None
            _, _, (images, labels), readers = self._open_for_reading()
        try:
            if idx.size and (idx.min() < 0 or idx.max() >= images.shape[0]):
                raise IndexError(f"rows outside 0..{images.shape[0] - 1}")
            if None not in readers:
                return readers[0].read(idx), readers[1].read(idx)
            if self.is_object_store:
                return _read_runs(images, idx), _read_runs(labels, idx)
            return (
                images.get_orthogonal_selection((idx,)),
                labels.get_orthogonal_selection((idx,)),
            )
        except Exception as error:  # checksum failures surface as codec errors
            raise IntegrityError(
                f"{self.path}: rows {idx.min()}..{idx.max()} are unreadable "
                f"({type(error).__name__}: {error}); `lfactory store verify` names the samples"
            ) from error

    def read_sample(
        self, sample_id: str, verify: bool = True
    ) -> tuple[np.ndarray, np.ndarray, dict]:
        """``(image, label, manifest row)`` of one committed sample.

        With ``verify`` the bytes are checked against the manifest's sha256 and a
        mismatch (or a zstd checksum failure) raises IntegrityError.
        """
        table = self.manifest()
        matches = table.filter(pc.equal(table["sample_id"], sample_id))
        if matches.num_rows == 0:
            raise ShardNotFoundError(f"{self.path}: sample {sample_id!r} is not committed")
        row = matches.slice(0, 1).to_pylist()[0]
        try:
            images, labels = self.read_rows([row["index"]])
        except Exception as error:  # zstd checksum failures surface as codec errors
            raise IntegrityError(
                f"{self.path}: sample {sample_id!r} (row {row['index']}) is unreadable: {error}"
            ) from error
        if verify and (
            sha256(images[0]) != row["image_sha256"] or sha256(labels[0]) != row["label_sha256"]
        ):
            raise IntegrityError(
                f"{self.path}: sample {sample_id!r} (row {row['index']}) no longer matches its "
                "manifest sha256; run `lfactory store verify` and regenerate the shard"
            )
        return images[0], labels[0], row


def _read_runs(array: zarr.Array, rows: np.ndarray) -> np.ndarray:
    """``array[rows]``, each run of consecutive rows read as one slice.

    zarr's integer-array selection allocates arrays over every chunk of the dimension, which
    on a pre-sized object store are millions; a slice touches only the chunks it needs.
    """
    order = np.argsort(rows, kind="stable")
    ordered = rows[order]
    out = np.empty((len(rows), *array.shape[1:]), array.dtype)
    for run in np.split(np.arange(len(rows)), np.flatnonzero(np.diff(ordered) != 1) + 1):
        if len(run):
            out[order[run]] = array[int(ordered[run[0]]) : int(ordered[run[-1]]) + 1]
    return out


def create_or_open_store(
    path: str | Path,
    *,
    shard_size: int,
    height: int,
    width: int,
    compression_level: int = 3,
    image_codec: str = DEFAULT_IMAGE_CODEC,
) -> SampleStore:
    """Open the store at ``path``, creating it if absent; its geometry must match.

    ``compression_level`` is zstd's (labels, and images with ``image_codec="zstd"``);
    ``image_codec`` names a lossless image codec of ``choices.IMAGE_CODECS``. Both apply only
    when the store is created: an existing store keeps the codecs it was written with.
    """
    path = location(path)
    if isinstance(path, str):
        _create_on_object_store(path, shard_size, height, width, compression_level, image_codec)
    else:
        with store_lock(path):
            if not (path / "zarr.json").is_file():
                _create(path, shard_size, height, width, compression_level, image_codec)
                log.info("created store %s (shard_size %d, %dx%d)", path, shard_size, height, width)
    store = SampleStore(path)
    wanted = (shard_size, height, width)
    found = (store.shard_size, store.height, store.width)
    if wanted != found:
        raise StoreError(
            f"{path}: store has shard_size/height/width {found}, the config asks "
            f"for {wanted}; use a new store path or the store's settings"
        )
    return store


def _create(
    path,
    shard_size: int,
    height: int,
    width: int,
    level: int,
    image_codec: str,
    shards: int = INITIAL_SHARDS,
) -> None:
    # Resolved first: an unknown codec name then leaves no half-created store behind.
    codecs = {"images": image_codecs(image_codec, level), "labels": label_codecs(level)}
    # "a", not "w": "w" empties the folder first, the store lock's own file with it, and a
    # second creator could then lock a new file and create the store again beside this one.
    group = zarr.open_group(
        path,
        mode="a",
        attributes={
            "format": STORE_FORMAT,
            "schema_version": SCHEMA_VERSION,
            "shard_size": shard_size,
            "height": height,
            "width": width,
        },
    )
    rows = shards * shard_size
    # Every chain ends in a checksum: a flipped byte fails the read instead of returning
    # wrong pixels.
    image_band = height // IMAGE_BANDS if height % IMAGE_BANDS == 0 else height
    chunks = {"images": (1, image_band, width, 3), "labels": (1, height, width)}
    for name, sample in (("images", (height, width, 3)), ("labels", (height, width))):
        group.create_array(
            name,
            shape=(rows, *sample),
            dtype="uint8",
            chunks=chunks[name],
            shards=(shard_size, *sample),
            **codecs[name],
            fill_value=0,
            dimension_names=("sample", "y", "x", "band")[: 1 + len(sample)],
        )


def _create_on_object_store(
    url: str, shard_size: int, height: int, width: int, level: int, image_codec: str
) -> None:
    """Write a new store's metadata objects, each only if absent: arrays first, the group
    last, so a store whose group exists is whole, and a creator racing another (or
    re-running after being killed) never replaces what is there."""
    root = object_root(url)
    if root.exists("zarr.json"):
        return
    # The metadata documents are made by zarr itself, in memory, then copied.
    documents: dict = {}
    memory = zarr.storage.MemoryStore(documents)
    _create(memory, shard_size, height, width, level, image_codec, shards=OBJECT_STORE_SHARDS)
    for key in sorted(documents, key=lambda k: k == "zarr.json"):
        root.create(tuple(key.split("/")), documents[key].to_bytes())
    log.info("created store %s (shard_size %d, %dx%d)", url, shard_size, height, width)


def ensure_capacity(store: SampleStore, rows: int) -> None:
    """Grow both arrays (by doubling) to hold at least ``rows`` rows, under the lock.

    An object store's arrays never grow (see the module's docstring).
    """
    images, _ = store.arrays()
    if images.shape[0] >= rows:
        return
    if store.is_object_store:
        raise StoreError(
            f"{store.path}: shard {rows // store.shard_size - 1} lies beyond the "
            f"{images.shape[0] // store.shard_size} shards this object store holds"
        )
    with store_lock(store.path):
        images, labels = store.arrays(mode="r+")
        if images.shape[0] >= rows:
            return
        new = max(rows, 2 * images.shape[0])
        new = -(-new // store.shard_size) * store.shard_size
        for array in (images, labels):
            array.resize((new, *array.shape[1:]))
        log.info("grew %s to %d rows", store.path, new)


def store_exists(path: str | Path) -> bool:
    """Whether there is a store (a folder, or an object store's ``zarr.json``) at ``path``."""
    path = location(path)
    if isinstance(path, str):
        return object_root(path).exists("zarr.json")
    return path.exists()


def committed_count(store: str | Path) -> int:
    """Committed samples, from manifest footers only (no data read)."""
    sources = [parquet_source(store, k) for k in committed_shard_ids(store)]
    return sum(pq.read_metadata(path, filesystem=fs).num_rows for path, fs in sources)


def plan_shards(store: str | Path, quota: int, shard_size: int, top_up: bool = False) -> list[int]:
    """Shard ids among the first ``ceil(quota / shard_size)`` that are not committed yet.

    With ``top_up``, once those are all committed but QA rejections left the store short
    of ``quota`` samples, the ids after the highest committed shard that would cover the
    shortfall at ``shard_size`` samples each.
    """
    wanted = -(-quota // shard_size)
    done = set(committed_shard_ids(store))
    plan = [k for k in range(wanted) if k not in done]
    short = quota - committed_count(store)
    if plan or not top_up or short <= 0:
        return plan
    start = max(done) + 1
    return list(range(start, start + -(-short // shard_size)))
