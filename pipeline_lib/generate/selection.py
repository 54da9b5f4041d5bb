"""Which QA-passing labels a shard keeps: those that move the store toward its class
targets, and never one that nearly repeats a label already committed or kept.

A store's class share is the mean over its samples of the class's share of labelled
pixels (what ``lfactory store stats`` prints). With ``generation.class_targets`` each
round of draws keeps about one label in ``target_oversample``, picked one at a time as
the label that brings the store's shares closest to the targets. The pick depends only
on the draws and the committed store, so a shard is reproducible per seed; regenerating a
sample needs none of it, as its manifest row names the attempt that was kept.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from pipeline_lib.data.classes import CLASS_NAMES, class_fractions
from pipeline_lib.generate.duplicates import NEAR_DUPLICATE, DuplicateFilter
from pipeline_lib.store.manifest import FRACTION_COLUMNS
from pipeline_lib.store.store import SampleStore

OFF_TARGET = "off_target"


def fraction_vector(mask: np.ndarray) -> np.ndarray:
    """Each class's share of the labelled pixels of a raw mask, in CLASS_NAMES order."""
    return np.array(list(class_fractions(mask).values()))


@dataclass(frozen=True)
class Candidate:
    """A QA-passing label of a round: its raw mask and class shares (CLASS_NAMES order)."""

    key: int
    mask: np.ndarray
    fractions: np.ndarray


class ClassSteering:
    """Running class shares of a store (committed plus kept) against its targets."""

    def __init__(
        self, targets: Mapping[str, float], count: int = 0, sums: Sequence[float] | None = None
    ):
        self.targets = dict(targets)
        self._classes = np.array([CLASS_NAMES.index(name) for name in self.targets], dtype=int)
        self._wanted = np.array(list(self.targets.values()), dtype=float)
        self.count = count
        self.sums = np.zeros(len(CLASS_NAMES)) if sums is None else np.asarray(sums, float)

    @classmethod
    def for_store(cls, store: SampleStore | None, targets: Mapping[str, float]) -> ClassSteering:
        """Steering that starts from the class shares of the committed samples of ``store``."""
        if store is None or not store.committed_shards():
            return cls(targets)
        table = store.manifest()
        sums = [float(np.nansum(table[c].to_numpy(zero_copy_only=False))) for c in FRACTION_COLUMNS]
        return cls(targets, table.num_rows, sums)

    def error_after(self, fractions: np.ndarray) -> float:
        """Squared distance to the targets of the store's shares once ``fractions`` is added."""
        shares = (self.sums[self._classes] + fractions[self._classes]) / (self.count + 1)
        return float(((shares - self._wanted) ** 2).sum())

    def furthest(self) -> tuple[str, float, float]:
        """The targeted class furthest from its target: name, store share, target."""
        shares = self.sums[self._classes] / max(self.count, 1)
        worst = int(np.argmax(np.abs(shares - self._wanted)))
        return list(self.targets)[worst], float(shares[worst]), float(self._wanted[worst])

    def best(self, candidates: Sequence[Candidate]) -> int:
        """Position of the candidate that brings the store closest (the first on ties)."""
        return int(np.argmin([self.error_after(c.fractions) for c in candidates]))

    def add(self, fractions: np.ndarray) -> None:
        self.count += 1
        self.sums = self.sums + fractions

    def remove(self, fractions: np.ndarray) -> None:
        self.count -= 1
        self.sums = self.sums - fractions


def select(
    candidates: Sequence[Candidate],
    room: int,
    oversample: int,
    steering: ClassSteering | None,
    duplicates: DuplicateFilter,
) -> tuple[list[tuple[Candidate, float | None]], Counter[str]]:
    """The kept candidates with their duplicate distance, and the rejects by reason.

    Keeps at most ``room`` and one per ``oversample`` candidates (rounded up). Without
    ``steering`` they are taken in order, so every passing label is kept, as before class
    targets existed; with it, by :meth:`ClassSteering.best`, and the rest count as
    ``off_target``. A near-duplicate of a known or just kept label counts as
    ``near_duplicate`` and frees its place.
    """
    pool = list(candidates)
    wanted = min(room, -(-len(pool) // oversample))
    kept: list[tuple[Candidate, float | None]] = []
    rejected: Counter[str] = Counter()
    while pool and len(kept) < wanted:
        candidate = pool.pop(0 if steering is None else steering.best(pool))
        distance = duplicates.nearest(candidate.mask)
        if duplicates.is_duplicate(distance):
            rejected[NEAR_DUPLICATE] += 1
            continue
        duplicates.add(candidate.mask)
        if steering is not None:
            steering.add(candidate.fractions)
        kept.append((candidate, distance))
    if steering is not None and pool:
        rejected[OFF_TARGET] += len(pool)
    return kept, rejected


def release(
    candidate: Candidate, steering: ClassSteering | None, duplicates: DuplicateFilter
) -> None:
    """Undo :func:`select`'s keeping of ``candidate``, which a later check (the agreement
    filter, after its image was drawn) rejected: later picks no longer count it."""
    duplicates.forget(candidate.mask)
    if steering is not None:
        steering.remove(candidate.fractions)
