"""Check a store against its manifests, and summarise what it holds."""

from __future__ import annotations

import logging
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline_lib.data.classes import CLASS_NAMES
from pipeline_lib.errors import IntegrityError, StoreError
from pipeline_lib.store.manifest import (
    FRACTION_COLUMNS,
    manifest_path,
    read_manifest,
    read_shard_meta,
    recorded_class_targets,
    sha256,
)
from pipeline_lib.store.store import SampleStore, store_lock

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VerifyReport:
    """Outcome of :func:`verify_store`.

    ``problems`` mean committed data is wrong; ``orphans`` only waste space.
    """

    path: Path
    shards: int
    samples: int
    problems: tuple[str, ...] = ()
    orphans: tuple[str, ...] = ()

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
    before its commit) and ``*.partial`` temp files.
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
    orphans = _orphans(store, set(shards))
    report = VerifyReport(store.path, len(shards), samples, tuple(problems), tuple(orphans))
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
    """A file or folder no committed shard needs: safe to delete, only wastes space."""

    path: Path
    why: str

    def __str__(self) -> str:
        return f"{self.path}: {self.why}"


def leftovers(store: SampleStore, committed: set[int] | None = None) -> list[Leftover]:
    """Temp files of interrupted writes and the array data of shards that never committed
    (a run killed between staging and commit, or a staged shard never committed)."""
    if committed is None:
        committed = set(store.committed_shards())
    found = [
        Leftover(p, "temp file of an interrupted write")
        for p in sorted(store.path.rglob("*.partial"))
    ]
    for name in ("images", "labels"):
        chunk_root = store.path / name / "c"
        if not chunk_root.is_dir():
            continue
        for shard_dir in sorted(chunk_root.iterdir(), key=lambda p: p.name):
            if shard_dir.name.isdigit() and int(shard_dir.name) not in committed:
                found.append(
                    Leftover(
                        shard_dir,
                        f"data of uncommitted shard {shard_dir.name} "
                        "(`lfactory store repair` removes it; generating the shard rewrites it)",
                    )
                )
    return found


def _orphans(store: SampleStore, committed: set[int]) -> list[str]:
    return [str(leftover) for leftover in leftovers(store, committed)]


def repair_store(path: str | Path) -> list[Leftover]:
    """Delete every leftover of :func:`leftovers`, never committed data; return them.

    Run it while no writer works on the store: a shard being staged right now looks
    exactly like one whose writer was killed.
    """
    store = SampleStore(path)
    removed = []
    with store_lock(store.path):
        for leftover in leftovers(store):
            shard = leftover.path.name
            if leftover.path.is_dir():
                # Re-checked under the lock: a shard committed meanwhile keeps its data.
                if manifest_path(store.path, int(shard)).is_file():
                    continue
                shutil.rmtree(leftover.path)
            else:
                leftover.path.unlink(missing_ok=True)
            removed.append(leftover)
    log.info("repaired %s: removed %d leftover(s)", store.path, len(removed))
    return removed


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
