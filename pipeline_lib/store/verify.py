"""Check a store against its manifests, and summarise what it holds."""

from __future__ import annotations

import logging
import re
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline_lib.data.classes import CLASS_NAMES
from pipeline_lib.errors import IntegrityError, StoreError
from pipeline_lib.store.claims import (
    ShardClaim,
    claim_files,
    claim_path,
    claim_shard,
    is_held,
    read_claim,
    release_claim,
)
from pipeline_lib.store.manifest import (
    FRACTION_COLUMNS,
    MANIFEST_DIR,
    is_committed,
    read_manifest,
    read_shard_meta,
    recorded_class_targets,
    sha256,
)
from pipeline_lib.store.object_store import join, object_root
from pipeline_lib.store.store import SampleStore, store_lock

log = logging.getLogger(__name__)

# write_manifest's temp file: manifests/.shard-00007.parquet.<pid>.partial
_MANIFEST_TEMP = re.compile(r"^\.shard-(\d+)\.parquet\.")


@dataclass(frozen=True)
class VerifyReport:
    """Outcome of :func:`verify_store`.

    ``problems`` mean committed data is wrong; ``orphans`` only waste space;
    ``in_progress`` names the shards live writers hold claims on right now.
    """

    path: Path | str
    shards: int
    samples: int
    problems: tuple[str, ...] = ()
    orphans: tuple[str, ...] = ()
    in_progress: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """The one pass/fail rule: committed data is intact (orphans do not fail it)."""
        return not self.problems

    def require_ok(self) -> VerifyReport:
        """This report, or an IntegrityError listing every problem when it is not ok."""
        if self.ok:
            return self
        lines = "\n".join(f"  {p}" for p in self.problems)
        raise IntegrityError(
            f"{self.path}: {len(self.problems)} problem(s) in committed data "
            f"(regenerate the shards named, or restore them from a backup):\n{lines}"
        )


def verify_store(path: str | Path, check_bytes: bool = True) -> VerifyReport:
    """Re-read every committed sample and compare it with its manifest row and sha256.

    Also lists orphans (see :func:`leftovers`): uncommitted shard data (a run killed
    before its commit), claims of writers that are gone and ``*.partial`` temp files; a
    shard a live writer holds is in progress, not an orphan.
    """
    store = SampleStore(path)
    problems: list[str] = []
    try:
        images, labels = store.arrays()
    except StoreError as error:  # the manifests can still be checked
        problems.append(str(error))
        images = labels = None
    seen: dict[str, int] = {}
    samples = 0
    shards = store.committed_shards()
    for shard_id in shards:
        try:
            table = read_manifest(store.path, shard_id)
        except StoreError as error:
            problems.append(str(error))
            continue
        rows = store.shard_rows(shard_id)
        shard_cache: dict[str, np.ndarray] = {}
        for row in table.to_pylist():
            samples += 1
            sid, index = row["sample_id"], row["index"]
            where = f"shard {shard_id} sample {sid} (row {index})"
            if sid in seen:
                problems.append(f"{where}: duplicate sample_id, also in shard {seen[sid]}")
            seen[sid] = shard_id
            if row["shard_id"] != shard_id or index not in rows:
                problems.append(
                    f"{where}: row lies outside shard {shard_id}'s rows [{rows.start}, {rows.stop})"
                )
                continue
            if images is None:
                continue
            if index >= images.shape[0] or index >= labels.shape[0]:
                problems.append(
                    f"{where}: manifest points beyond the arrays ({images.shape[0]} rows)"
                )
                continue
            if check_bytes:
                problems.extend(_check_bytes(where, images, labels, row, shard_cache))
    orphans = [str(leftover) for leftover in leftovers(store, set(shards))]
    writing = [
        f"shard {k}: being written by {claim.describe() if claim else 'a live writer'}"
        for k, claim in held_claims(store.path)
    ]
    report = VerifyReport(
        store.path, len(shards), samples, tuple(problems), tuple(orphans), tuple(writing)
    )
    log.info(
        "verified %s: %d shards, %d samples, %d problems, %d orphans",
        store.path,
        report.shards,
        report.samples,
        len(report.problems),
        len(report.orphans),
    )
    return report


def _check_bytes(where: str, images, labels, row: dict, cache: dict) -> list[str]:
    index = row["index"]
    try:
        if not cache:
            # One whole-shard read per array, not one per sample.
            start = index - index % images.shards[0]
            stop = min(start + images.shards[0], images.shape[0])
            cache.update(start=start, images=images[start:stop], labels=labels[start:stop])
        image = cache["images"][index - cache["start"]]
        label = cache["labels"][index - cache["start"]]
    except Exception:  # zstd checksum failures surface as codec errors: find the sample
        try:
            image, label = images[index], labels[index]
        except Exception as error:
            return [f"{where}: unreadable ({type(error).__name__}: {error})"]
    out = []
    if sha256(label) != row["label_sha256"]:
        out.append(f"{where}: label bytes differ from the manifest sha256")
    if sha256(image) != row["image_sha256"]:
        out.append(f"{where}: image bytes differ from the manifest sha256")
    return out


@dataclass(frozen=True)
class Leftover:
    """A file or folder no committed shard needs: safe to delete, only wastes space.

    ``shard`` is the shard it belongs to, if any: it is deleted only under that shard's claim.
    """

    path: Path | str
    why: str
    shard: int | None = None

    def __str__(self) -> str:
        return f"{self.path}: {self.why}"


def held_claims(store: str | Path) -> list[tuple[int, ShardClaim | None]]:
    """(shard id, claim) of every shard a live writer holds now."""
    return [
        (k, read_claim(store, k))
        for k, path in claim_files(store)
        if path == claim_path(store, k) and is_held(path)
    ]


def leftovers(store: SampleStore, committed: set[int] | None = None) -> list[Leftover]:
    """Temp files of interrupted writes, the array data of shards that never committed
    (a run killed between staging and commit, or a staged shard never committed) and
    the claims of writers that are gone; a shard a live writer holds has none."""
    if committed is None:
        committed = set(store.committed_shards())
    held = {k for k, _ in held_claims(store.path)}
    found = []
    for path in [] if store.is_object_store else sorted(store.path.rglob("*.partial")):
        shard = _shard_of(store, path)
        if shard not in held:
            found.append(Leftover(path, "temp file of an interrupted write", shard))
    for name in ("images", "labels"):
        for shard_dir in _shard_folders(store, name):
            shard = int(str(shard_dir).rsplit("/", 1)[-1])
            if shard not in committed and shard not in held:
                found.append(
                    Leftover(
                        shard_dir,
                        f"data of uncommitted shard {shard} "
                        "(`lfactory store repair` removes it; generating the shard rewrites it)",
                        shard,
                    )
                )
    for shard, path in claim_files(store.path):
        if not is_held(path):
            claim = read_claim(store.path, shard) if path == claim_path(store.path, shard) else None
            who = claim.describe() if claim is not None else "a writer"
            found.append(
                Leftover(
                    path,
                    f"claim on shard {shard} of {who}, which is gone "
                    "(the shard's next writer takes it over)",
                    shard,
                )
            )
    return found


def _shard_folders(store: SampleStore, name: str) -> list[Path | str]:
    """The folders (object prefixes) of ``name``'s shards: ``<name>/c/<k>``, by ``k``."""
    if store.is_object_store:
        found = object_root(store.path).names(name, "c")
        return [join(store.path, name, "c", k) for k in sorted(found, key=int) if k.isdigit()]
    chunk_root = store.path / name / "c"
    if not chunk_root.is_dir():
        return []
    folders = sorted(chunk_root.iterdir(), key=lambda p: p.name)
    return [folder for folder in folders if folder.name.isdigit()]


def _shard_of(store: SampleStore, path: Path) -> int | None:
    # images/c/<k>/... and labels/c/<k>/... hold shard k; manifests/.shard-0000k.parquet...
    parts = path.relative_to(store.path).parts
    if len(parts) > 2 and parts[0] in ("images", "labels") and parts[1] == "c":
        return int(parts[2]) if parts[2].isdigit() else None
    if parts[0] == MANIFEST_DIR and (match := _MANIFEST_TEMP.match(parts[-1])):
        return int(match.group(1))
    return None


def repair_store(path: str | Path) -> list[Leftover]:
    """Delete every leftover of :func:`leftovers`, never committed data; return them.

    Safe beside running writers: a shard's leftovers are deleted only while holding the
    shard's claim, so a shard a live writer is staging or committing is left alone.
    """
    store = SampleStore(path)
    by_shard: dict[int | None, list[Leftover]] = {}
    for leftover in leftovers(store):
        by_shard.setdefault(leftover.shard, []).append(leftover)
    removed = []
    for shard, found in by_shard.items():
        removed += _remove(store, shard, found)
    log.info("repaired %s: removed %d leftover(s)", store.path, len(removed))
    return removed


def _remove(store: SampleStore, shard: int | None, found: list[Leftover]) -> list[Leftover]:
    if shard is None:
        with store_lock(store.path):  # e.g. a zarr.json temp file: resizes hold this lock
            for leftover in found:
                leftover.path.unlink(missing_ok=True)
        return found
    # Taking a dead writer's claim over is what removes its claim file.
    claim = claim_shard(store.path, shard)
    if claim is None:
        return []  # a live writer took the shard since it was listed
    try:
        removed = []
        for leftover in found:
            if leftover.path == claim_path(store.path, shard):
                pass  # taken over above; releasing the claim deletes it
            elif isinstance(leftover.path, str) or leftover.path.is_dir():
                if is_committed(store.path, shard):
                    continue  # committed since it was listed: its data stays
                _remove_folder(store, leftover.path)
            else:
                leftover.path.unlink(missing_ok=True)
            removed.append(leftover)
        return removed
    finally:
        release_claim(store.path, shard, claim.token)


def _remove_folder(store: SampleStore, folder: Path | str) -> None:
    if isinstance(folder, str):  # an object store's prefix
        object_root(store.path).delete_tree(folder.removeprefix(f"{store.path}/"))
    else:
        shutil.rmtree(folder)


@dataclass(frozen=True)
class StoreStats:
    """Counts, mean class fractions (and the targets they are steered toward), QA and
    reject rates of a store."""

    shards: int
    samples: int
    attempts: int
    rejected: int
    reject_reasons: dict[str, int] = field(default_factory=dict)
    class_fractions: dict[str, float] = field(default_factory=dict)
    mean_off_palette_share: float = 0.0
    mean_small_fragment_share: float = 0.0
    styles: dict[str, int] = field(default_factory=dict)
    class_targets: dict[str, float] = field(default_factory=dict)

    @property
    def reject_rate(self) -> float:
        return self.rejected / self.attempts if self.attempts else 0.0


def store_stats(path: str | Path) -> StoreStats:
    """Summarise a store from its manifests only (no pixel reads)."""
    store = SampleStore(path)
    table = store.manifest()
    shards = store.committed_shards()
    reasons: Counter[str] = Counter()
    attempts = 0
    for shard_id in shards:
        meta = read_shard_meta(store.path, shard_id)
        reasons.update({k: int(v) for k, v in meta.get("rejected", {}).items()})
        attempts += int(meta.get("attempts", 0))

    def mean(column: str) -> float:
        values = table[column].to_numpy(zero_copy_only=False).astype(float)
        values = values[~np.isnan(values)]
        return float(values.mean()) if len(values) else 0.0

    fractions = {n: mean(c) for n, c in zip(CLASS_NAMES, FRACTION_COLUMNS, strict=True)}
    styles = Counter(s or "" for s in table["style"].to_pylist())
    return StoreStats(
        shards=len(shards),
        samples=table.num_rows,
        attempts=attempts,
        rejected=sum(reasons.values()),
        reject_reasons=dict(reasons),
        class_fractions=fractions,
        mean_off_palette_share=mean("off_palette_share"),
        mean_small_fragment_share=mean("small_fragment_share"),
        styles=dict(styles),
        # The newest shard's: what generation steers toward now.
        class_targets=recorded_class_targets(store.path, shards[-1]) if shards else {},
    )
