"""The per-shard Parquet manifest: one row per committed sample, one versioned schema.

A shard's manifest file is its commit record: a shard exists for readers exactly when
``manifests/shard-XXXXX.parquet`` exists. Each row holds what regenerating the sample
needs (seed, prompts, steps, guidance, scheduler, model hashes) plus its class fractions,
QA scores and checksums. Shard-level facts (attempts, rejects by reason, the generation
config) live in the file's key-value metadata.

On an object store the manifest is serialized in memory and written with one conditional
PUT (``If-None-Match``): it appears whole or not at all, and only the first of two
committers of a shard commits it.

Version 2 added the nullable ``dup_distance`` and ``agreement_miou`` columns; version 1
files still read, with those columns null.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from pipeline_lib.data.classes import CLASS_NAMES
from pipeline_lib.errors import ManifestExistsError, ShardNotFoundError, StoreError
from pipeline_lib.store.durable import fsync_dir, fsync_file, refused_write
from pipeline_lib.store.object_store import is_url, join, location, object_root

# Bump on any change to MANIFEST_SCHEMA; readers refuse versions they do not know.
SCHEMA_VERSION = 2
# Versions this code reads: each older one lacks only nullable columns, read as nulls.
READABLE_VERSIONS: tuple[int, ...] = (1, 2)
MANIFEST_DIR = "manifests"
FRACTION_COLUMNS: tuple[str, ...] = tuple(f"frac_{name}" for name in CLASS_NAMES)
_SHARD_FILE = re.compile(r"^shard-(\d{5,})\.parquet$")
_META_KEY = b"label_freedom"

MANIFEST_SCHEMA = pa.schema(
    [
        pa.field("schema_version", pa.int16(), nullable=False),
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("shard_id", pa.int32(), nullable=False),
        pa.field("index", pa.int64(), nullable=False, metadata={"doc": "row in images/labels"}),
        pa.field("attempt", pa.int32(), metadata={"doc": "draw number within the shard"}),
        pa.field("batch_size", pa.int16(), metadata={"doc": "generation batch it was drawn in"}),
        pa.field("style", pa.string()),
        pa.field("prompt", pa.string()),
        pa.field("negative_prompt", pa.string()),
        pa.field("seed", pa.uint64()),
        pa.field("label_steps", pa.int32()),
        pa.field("image_steps", pa.int32()),
        pa.field("label_guidance", pa.float32()),
        pa.field("image_guidance", pa.float32()),
        pa.field("scheduler", pa.string()),
        pa.field("label_model_hash", pa.string()),
        pa.field("lora_hash", pa.string()),
        pa.field("image_model_hash", pa.string()),
        pa.field("controlnet_hash", pa.string()),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),
        *(pa.field(c, pa.float32(), nullable=False) for c in FRACTION_COLUMNS),
        pa.field("off_palette_share", pa.float32()),
        pa.field("small_fragment_share", pa.float32()),
        pa.field("min_fragment_pixels", pa.int64(), metadata={"doc": "smallest fragment's size"}),
        pa.field(
            "dup_distance",
            pa.float32(),
            metadata={"doc": "label distance to the nearest earlier sample; null: none compared"},
        ),
        pa.field(
            "agreement_miou",
            pa.float32(),
            metadata={"doc": "segmenter-vs-label mIoU; null: not measured"},
        ),
        pa.field("label_sha256", pa.string(), nullable=False),
        pa.field("image_sha256", pa.string(), nullable=False),
        pa.field("created_at", pa.timestamp("us", tz="UTC"), nullable=False),
    ],
    metadata={"schema_version": str(SCHEMA_VERSION)},
)


def sha256(array: np.ndarray) -> str:
    """The checksum kept in ``label_sha256`` / ``image_sha256``: of the raw C-order bytes."""
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def manifest_dir(store: str | Path) -> Path | str:
    return join(location(store), MANIFEST_DIR)


def manifest_name(shard_id: int) -> str:
    return f"shard-{shard_id:05d}.parquet"


def manifest_path(store: str | Path, shard_id: int) -> Path | str:
    return join(manifest_dir(store), manifest_name(shard_id))


def is_committed(store: str | Path, shard_id: int) -> bool:
    """Whether shard ``shard_id``'s manifest exists, i.e. the shard is committed."""
    if is_url(store):
        return object_root(location(store)).exists(MANIFEST_DIR, manifest_name(shard_id))
    return manifest_path(store, shard_id).is_file()


def manifest_stamp(store: str | Path, shard_id: int) -> tuple:
    """What changes whenever a shard's manifest file does: (mtime, size), or the ETag."""
    if is_url(store):
        return (object_root(location(store)).etag(MANIFEST_DIR, manifest_name(shard_id)),)
    stat = manifest_path(store, shard_id).stat()
    return (stat.st_mtime_ns, stat.st_size)


def manifest_files(store: str | Path) -> list[tuple[str, int]]:
    """(name, size) of each manifest file, sorted: what a cache key sees of the committed store."""
    if is_url(store):
        found = object_root(location(store)).names(MANIFEST_DIR, sizes=True)
        return [(name, size) for name, size in found if name.endswith(".parquet")]
    return sorted((p.name, p.stat().st_size) for p in manifest_dir(store).glob("*.parquet"))


def committed_shard_ids(store: str | Path) -> list[int]:
    """Ids of the shards whose manifest exists, i.e. the committed shards, sorted."""
    if is_url(store):
        names = object_root(location(store)).names(MANIFEST_DIR)
    else:
        folder = manifest_dir(store)
        names = [p.name for p in folder.iterdir()] if folder.is_dir() else []
    return sorted(int(m.group(1)) for name in names if (m := _SHARD_FILE.match(name)))


def parquet_source(store: str | Path, shard_id: int) -> tuple[str | Path, Any]:
    """``(path, filesystem)`` of a shard's manifest as pyarrow's readers take them."""
    if is_url(store):
        root = object_root(location(store))
        return root.key(MANIFEST_DIR, manifest_name(shard_id)), root.fs
    return manifest_path(store, shard_id), None


def write_manifest(
    store: str | Path, shard_id: int, rows: list[dict[str, Any]], shard_meta: dict[str, Any]
) -> Path | str:
    """Write a shard's manifest atomically; its appearance commits the shard.

    The temp file is fsynced before the rename, and the folder after it, so that a
    crash of the machine (not only of the process) can neither lose the commit nor keep
    a commit whose bytes it lost (the shard's arrays are synced before this is called).
    """
    table = pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA)
    meta = dict(table.schema.metadata or {})
    meta[_META_KEY] = json.dumps(shard_meta).encode()
    table = table.replace_schema_metadata(meta)
    if is_url(store):
        return _put_manifest(location(store), shard_id, table)
    path = manifest_path(store, shard_id)
    if not path.parent.is_dir():
        path.parent.mkdir(parents=True, exist_ok=True)
        fsync_dir(path.parent.parent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        pq.write_table(table, tmp, compression="zstd")
        fsync_file(tmp)
    except OSError as error:
        tmp.unlink(missing_ok=True)
        refused = refused_write(error, tmp, f"shard {shard_id}'s manifest")
        if refused is None:
            raise
        raise refused from error
    os.replace(tmp, path)
    fsync_dir(path.parent)  # the rename itself: until then a power cut can undo the commit
    return path


def _put_manifest(url: str, shard_id: int, table: pa.Table) -> str:
    # One PUT of the whole file, created only if absent: S3 shows it whole or not at all,
    # and a second committer of the shard is refused instead of replacing the first.
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    if object_root(url).create((MANIFEST_DIR, manifest_name(shard_id)), buffer.getvalue()) is None:
        raise ManifestExistsError(
            f"{manifest_path(url, shard_id)}: shard {shard_id} was committed by another writer; "
            "its manifest stands"
        )
    return manifest_path(url, shard_id)


def read_manifest(store: str | Path, shard_id: int) -> pa.Table:
    """One shard's manifest; ShardNotFoundError when the shard is not committed."""
    path = manifest_path(store, shard_id)
    if not is_committed(store, shard_id):
        raise ShardNotFoundError(f"{path}: shard {shard_id} is not committed in {store}")
    try:
        source, filesystem = parquet_source(store, shard_id)
        table = pq.read_table(source, filesystem=filesystem)
    except (pa.ArrowException, OSError) as error:
        raise _unreadable(path, error) from error
    _check_version(path, table.schema)
    return _with_current_columns(table)


def read_shard_meta(store: str | Path, shard_id: int) -> dict[str, Any]:
    """A shard's key-value metadata: attempts, rejects by reason, generation config."""
    path = manifest_path(store, shard_id)
    if not is_committed(store, shard_id):
        raise ShardNotFoundError(f"{path}: shard {shard_id} is not committed in {store}")
    raw = (_read_schema(store, shard_id).metadata or {}).get(_META_KEY)
    try:
        return json.loads(raw) if raw else {}
    except ValueError as error:
        raise _unreadable(path, error) from error


def manifest_dataset(store: str | Path) -> pads.Dataset:
    """A pyarrow dataset over every committed manifest, read with the one fixed schema.

    Passing the schema explicitly stops pyarrow from taking it from the first file and
    silently dropping columns that only later files have.
    """
    sources = [parquet_source(store, k) for k in committed_shard_ids(store)]
    files = [str(path) for path, _ in sources]
    filesystem = object_root(location(store)).fs if is_url(store) else None
    return pads.dataset(files, schema=MANIFEST_SCHEMA, format="parquet", filesystem=filesystem)


def read_manifests(store: str | Path) -> pa.Table:
    """All committed rows as one table, sorted by array row."""
    shard_ids = committed_shard_ids(store)
    for shard_id in shard_ids:
        _check_version(manifest_path(store, shard_id), _read_schema(store, shard_id))
    try:
        table = manifest_dataset(store).to_table()
    except (pa.ArrowException, OSError):
        for shard_id in shard_ids:  # name the damaged file
            read_manifest(store, shard_id)
        raise
    return table.sort_by("index")


def _read_schema(store: str | Path, shard_id: int) -> pa.Schema:
    try:
        source, filesystem = parquet_source(store, shard_id)
        return pq.read_schema(source, filesystem=filesystem)
    except (pa.ArrowException, OSError) as error:
        raise _unreadable(manifest_path(store, shard_id), error) from error


def _unreadable(path: Path | str, error: Exception) -> StoreError:
    return StoreError(
        f"{path}: unreadable manifest ({error}); the shard's commit record is damaged: "
        "delete the file to regenerate the shard, or restore it from a backup"
    )


def _with_current_columns(table: pa.Table) -> pa.Table:
    """An older version's table with the columns added since, as nulls, in schema order."""
    for column in MANIFEST_SCHEMA:
        if column.name not in table.column_names:
            table = table.append_column(column, pa.nulls(table.num_rows, column.type))
    return table.select(MANIFEST_SCHEMA.names)


def _check_version(path: Path | str, schema: pa.Schema) -> None:
    found = (schema.metadata or {}).get(b"schema_version", b"?").decode()
    if found not in {str(v) for v in READABLE_VERSIONS}:
        readable = ", ".join(str(v) for v in READABLE_VERSIONS)
        raise StoreError(
            f"{path}: manifest schema_version {found}, this code reads {readable}; "
            "upgrade the code or migrate the store"
        )


def recorded_class_targets(store: str | Path, shard_id: int) -> dict[str, float]:
    """The ``generation.class_targets`` shard ``shard_id`` was generated toward ({}: none)."""
    generation = read_shard_meta(store, shard_id).get("config", {}).get("generation", {})
    return {str(k): float(v) for k, v in (generation.get("class_targets") or {}).items()}
