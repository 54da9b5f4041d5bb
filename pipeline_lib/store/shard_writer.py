"""Commit one shard exactly once: arrays first, then the manifest as the commit record.

A process killed at any moment leaves either no manifest (the shard is invisible and is
simply regenerated and rewritten whole by the next run) or a complete one. A writer holds
the shard's claim (``claims.py``) from staging until its commit, so two runs on one store
never write the same shard's rows at once.

On an object store each array's part of a shard is one object, written whole by one PUT,
and the commit is one conditional PUT of the manifest (``manifest.py``), so the same holds
without rename or fsync; the commit renews the writer's lease on the shard first.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from pipeline_lib.data.classes import CLASS_NAMES, MAX_VALUE
from pipeline_lib.errors import DataError, IntegrityError, ManifestExistsError, StoreError
from pipeline_lib.store.claims import (
    ShardClaim,
    claim_uncommitted,
    confirm_claim,
    release_claim,
    require_claim,
)
from pipeline_lib.store.durable import fsync_dir, fsync_file, fsync_tree, refused_write
from pipeline_lib.store.manifest import (
    FRACTION_COLUMNS,
    SCHEMA_VERSION,
    is_committed,
    manifest_path,
    read_manifest,
    read_shard_meta,
    recorded_class_targets,
    sha256,
    write_manifest,
)
from pipeline_lib.store.object_store import join, object_root
from pipeline_lib.store.shard_encoder import write_shard
from pipeline_lib.store.shard_reader import usable_cores
from pipeline_lib.store.store import SampleStore, ensure_capacity, store_lock

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShardData:
    """The kept samples of one generated shard, before staging.

    ``rows`` holds each sample's generation record (``sample_id`` required; seed, prompt,
    steps, hashes, QA scores...); checksums, fractions and array rows are added on staging.
    """

    shard_id: int
    images: np.ndarray  # (n, H, W, 3) uint8
    labels: np.ndarray  # (n, H, W) uint8, raw LoveDA values
    rows: tuple[dict[str, Any], ...]
    attempts: int = 0
    rejected: Mapping[str, int] = field(default_factory=dict)
    config: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ShardResult:
    """What a committed shard holds, small enough to pass between Prefect tasks."""

    shard_id: int
    kept: int
    rejected: int
    reasons: Mapping[str, int]
    class_fractions: Mapping[str, float]
    already_committed: bool = False
    class_targets: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class StagedShard:
    """A shard whose arrays are written but not yet committed (invisible to readers).

    Small and picklable: it carries the manifest records (with checksums), not pixels,
    so it can cross a task boundary between generating and committing, and the token of
    the shard's claim, which lets the commit run in another process.
    """

    shard_id: int
    rows: tuple[dict[str, Any], ...]
    attempts: int
    rejected: Mapping[str, int]
    config: Mapping[str, Any] = field(default_factory=dict)
    claim_token: str = ""


def commit_shard(store: SampleStore, data: ShardData) -> ShardResult:
    """Stage a shard's arrays, then commit its manifest; a committed shard is left untouched."""
    claim = claim_uncommitted(store.path, data.shard_id)
    if claim is not None:
        return commit_staged_shard(store, stage_shard(store, data, claim))
    log.info("shard %d of %s is already committed; not rewritten", data.shard_id, store.path)
    return shard_result(store, data.shard_id, already_committed=True)


def stage_shard(
    store: SampleStore, data: ShardData, claim: ShardClaim | None = None
) -> StagedShard:
    """Write a shard's arrays whole into its own rows; nothing becomes visible yet.

    Runs under the shard's claim (taken here unless the caller holds ``claim``; a live
    writer's claim raises ShardClaimedError), which the commit releases, or this on failure.
    Refuses a committed shard: its bytes are never overwritten.
    """
    claim = claim or require_claim(store.path, data.shard_id)
    try:
        return _stage(store, data, claim)
    except BaseException:
        release_claim(store.path, data.shard_id, claim.token)
        raise


def _stage(store: SampleStore, data: ShardData, claim: ShardClaim) -> StagedShard:
    if is_committed(store.path, data.shard_id):
        raise StoreError(
            f"{manifest_path(store.path, data.shard_id)}: shard {data.shard_id} is already "
            "committed; its arrays are not rewritten"
        )
    _check(store, data)
    n = len(data.rows)
    rows = store.shard_rows(data.shard_id)
    confirm_claim(store.path, data.shard_id, claim.token)
    try:
        ensure_capacity(store, rows.stop)
        # One whole-shard write per array, no read-modify-write of the file; the checksums
        # are taken on the same threads while the chunks encode.
        with ThreadPoolExecutor(usable_cores(), "shard-stage") as pool:
            hashing = pool.map(lambda i: (sha256(data.labels[i]), sha256(data.images[i])), range(n))
            write_shard(store.arrays(mode="r+"), data.shard_id, (data.images, data.labels), pool)
            digests = list(hashing)
        _sync_shard_data(store, data.shard_id)
    except OSError as error:
        refused = refused_write(error, store.path, f"shard {data.shard_id}'s arrays")
        if refused is None:
            raise
        discard_staged(store, data.shard_id)  # no half-written shard is left behind
        raise refused from error

    records = []
    for i, row in enumerate(data.rows):
        counts = np.bincount(data.labels[i].ravel(), minlength=MAX_VALUE + 1)
        labelled = max(int(counts[1:].sum()), 1)
        record = dict(row)
        record.update(
            schema_version=SCHEMA_VERSION,
            shard_id=data.shard_id,
            index=rows.start + i,
            height=store.height,
            width=store.width,
            label_sha256=digests[i][0],
            image_sha256=digests[i][1],
            **{c: float(counts[v + 1] / labelled) for v, c in enumerate(FRACTION_COLUMNS)},
        )
        records.append(record)
    attempts = data.attempts or n + sum(data.rejected.values())
    return StagedShard(
        data.shard_id,
        tuple(records),
        attempts,
        dict(data.rejected),
        dict(data.config),
        claim.token,
    )


def commit_staged_shard(store: SampleStore, staged: StagedShard) -> ShardResult:
    """Check the staged bytes against their checksums, then publish the manifest (the commit).

    The read-back catches a shard whose arrays were lost or overwritten since staging
    (e.g. a cached staging result replayed against a wiped store). It and the publishing
    run under the store lock and the shard's claim (the staging's own, or taken anew):
    no writer takes the claim over halfway through a commit. ShardClaimedError while
    another live writer holds the claim.
    """
    with store_lock(store.path):
        if is_committed(store.path, staged.shard_id):
            if staged.claim_token:
                release_claim(store.path, staged.shard_id, staged.claim_token)
            return shard_result(store, staged.shard_id, already_committed=True)
        token = staged.claim_token or None
        claim = require_claim(store.path, staged.shard_id, token, store_locked=True)
        try:
            confirm_claim(store.path, staged.shard_id, claim.token)
            _publish(store, staged)
        except ManifestExistsError:  # object stores: another writer committed it first
            return shard_result(store, staged.shard_id, already_committed=True)
        finally:
            release_claim(store.path, staged.shard_id, claim.token)
    return shard_result(store, staged.shard_id)


def _publish(store: SampleStore, staged: StagedShard) -> None:
    if staged.rows:
        images, labels = store.read_rows([r["index"] for r in staged.rows])
        for row, image, label in zip(staged.rows, images, labels, strict=True):
            if sha256(image) != row["image_sha256"] or sha256(label) != row["label_sha256"]:
                raise IntegrityError(
                    f"{store.path}: staged sample {row['sample_id']} of shard {staged.shard_id} "
                    "no longer matches its checksum; generate the shard again"
                )
    created = datetime.now(UTC)
    records = [{**row, "created_at": created} for row in staged.rows]
    meta = {
        "shard_id": staged.shard_id,
        "kept": len(records),
        "attempts": staged.attempts,
        "rejected": dict(staged.rejected),
        "config": dict(staged.config),
    }
    write_manifest(store.path, staged.shard_id, records, meta)
    log.info(
        "committed shard %d of %s: %d kept, %d rejected",
        staged.shard_id,
        store.path,
        len(records),
        sum(staged.rejected.values()),
    )


def shard_result(store: SampleStore, shard_id: int, already_committed: bool = False) -> ShardResult:
    """The summary of a committed shard, read back from its manifest."""
    table = read_manifest(store.path, shard_id)
    meta = read_shard_meta(store.path, shard_id)
    reasons = {str(k): int(v) for k, v in meta.get("rejected", {}).items()}
    fractions = {
        name: float(np.mean(table[c].to_numpy())) if table.num_rows else 0.0
        for name, c in zip(CLASS_NAMES, FRACTION_COLUMNS, strict=True)
    }
    return ShardResult(
        shard_id,
        table.num_rows,
        sum(reasons.values()),
        reasons,
        fractions,
        already_committed,
        recorded_class_targets(store.path, shard_id),
    )


def staged_data_dirs(store: SampleStore, shard_id: int) -> list[Path | str]:
    """The folders (object prefixes) holding shard ``shard_id``'s array data, where they exist."""
    if store.is_object_store:
        root = object_root(store.path)
        names = [n for n in ("images", "labels") if str(shard_id) in root.names(n, "c")]
        return [join(store.path, n, "c", str(shard_id)) for n in names]
    dirs = [store.path / name / "c" / str(shard_id) for name in ("images", "labels")]
    return [d for d in dirs if d.is_dir()]


def discard_staged(store: SampleStore, shard_id: int) -> list[Path | str]:
    """Delete the array data of an uncommitted shard; refuse a committed one."""
    if is_committed(store.path, shard_id):
        raise StoreError(
            f"{manifest_path(store.path, shard_id)}: shard {shard_id} is committed; "
            "its data is never deleted"
        )
    removed = staged_data_dirs(store, shard_id)
    for folder in removed:
        if isinstance(folder, str):
            object_root(store.path).delete_tree(folder.removeprefix(store.path + "/"))
        else:
            shutil.rmtree(folder, ignore_errors=True)
    return removed


def _sync_shard_data(store: SampleStore, shard_id: int) -> None:
    # Before the manifest names these bytes they must be on disk, with the directories
    # that name them and the array metadata (a resize rewrote zarr.json). An object
    # store's PUT is durable once it returns.
    if store.is_object_store:
        return
    for name in ("images", "labels"):
        shard_dir = store.path / name / "c" / str(shard_id)
        if shard_dir.is_dir():
            fsync_tree(shard_dir, up_to=store.path / name)
        fsync_file(store.path / name / "zarr.json")
    fsync_dir(store.path)


def _check(store: SampleStore, data: ShardData) -> None:
    n = len(data.rows)
    where = f"shard {data.shard_id} of {store.path}"
    if data.shard_id < 0:
        raise StoreError(f"{where}: shard ids start at 0")
    if n > store.shard_size:
        raise StoreError(f"{where}: {n} samples exceed the store's shard_size {store.shard_size}")
    if data.images.shape != (n, store.height, store.width, 3) or data.images.dtype != np.uint8:
        raise DataError(
            f"{where}: images must be uint8 {(n, store.height, store.width, 3)}, "
            f"got {data.images.dtype} {data.images.shape}"
        )
    if data.labels.shape != (n, store.height, store.width) or data.labels.dtype != np.uint8:
        raise DataError(
            f"{where}: labels must be uint8 {(n, store.height, store.width)}, "
            f"got {data.labels.dtype} {data.labels.shape}"
        )
    if n and int(data.labels.max()) > MAX_VALUE:
        raise DataError(f"{where}: labels hold value {int(data.labels.max())}; LoveDA uses 0..7")
    ids = [r.get("sample_id") for r in data.rows]
    if None in ids or len(set(ids)) != n:
        raise StoreError(f"{where}: every row needs a unique sample_id")
