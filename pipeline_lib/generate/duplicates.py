"""Near-duplicate labels: a coarse class-layout signature per label and a distance.

A label's signature is its dominant raw value in each cell of a ``grid`` x ``grid`` grid;
two labels' distance is the share of cells whose dominant value differs (0: the same
layout, 1: no cell alike). Signatures of committed samples are recomputed from the labels
in the store, so the check spans shards and resumed runs and needs no manifest column.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from pipeline_lib.data.classes import MAX_VALUE
from pipeline_lib.store.manifest import manifest_stamp, read_manifest
from pipeline_lib.store.store import SampleStore

NEAR_DUPLICATE = "near_duplicate"


def label_signature(mask: np.ndarray, grid: int) -> np.ndarray:
    """The dominant raw value of each grid cell of a raw (H, W) mask, as (grid * grid,) uint8.

    Ties go to the lower value; a side not divisible by ``grid`` gives cells one pixel apart.
    """
    height, width = mask.shape
    rows = np.arange(height) * grid // height
    cols = np.arange(width) * grid // width
    cell = rows[:, None] * grid + cols[None, :]
    values = MAX_VALUE + 1
    counts = np.bincount((cell * values + mask).ravel(), minlength=grid * grid * values)
    return counts.reshape(grid * grid, values).argmax(axis=1).astype(np.uint8)


def signature_distances(signature: np.ndarray, others: np.ndarray) -> np.ndarray:
    """Share of cells in which ``signature`` differs from each row of ``others``."""
    return (others != signature).mean(axis=1)


@lru_cache(maxsize=4096)
def _shard_signatures(store: Path | str, shard_id: int, stamp: tuple, grid: int) -> np.ndarray:
    # A committed shard never changes while its manifest does not: ``stamp`` (the manifest's
    # mtime and size, or its ETag) keys the cache, so each shard is read once per process.
    del stamp
    indices = read_manifest(store, shard_id)["index"].to_numpy()
    if not len(indices):
        return np.zeros((0, grid * grid), np.uint8)
    _, labels = SampleStore(store).arrays()
    block = labels[int(indices.min()) : int(indices.max()) + 1]
    signatures = [label_signature(block[i - indices.min()], grid) for i in indices]
    return np.stack(signatures)


def committed_signatures(store: SampleStore, grid: int) -> np.ndarray:
    """(N, grid * grid) signatures of every committed label of ``store``."""
    parts = [np.zeros((0, grid * grid), np.uint8)]
    for shard_id in store.committed_shards():
        stamp = manifest_stamp(store.path, shard_id)
        root = store.path if store.is_object_store else store.path.absolute()
        parts.append(_shard_signatures(root, shard_id, stamp, grid))
    return np.concatenate(parts)


class DuplicateFilter:
    """The signatures a new label is compared with: the committed store's, then each kept one.

    ``min_distance`` 0 turns the check off: nothing is read or compared.
    """

    def __init__(self, min_distance: float, grid: int, known: np.ndarray | None = None):
        self.min_distance = min_distance
        self.grid = grid
        self._known = [known] if known is not None and len(known) else []
        self._committed = len(self._known)

    @classmethod
    def for_store(
        cls, store: SampleStore | None, min_distance: float, grid: int
    ) -> DuplicateFilter:
        """A filter that knows every committed label of ``store`` (none when it is None)."""
        if not min_distance or store is None:
            return cls(min_distance, grid)
        return cls(min_distance, grid, committed_signatures(store, grid))

    @property
    def enabled(self) -> bool:
        return self.min_distance > 0

    def nearest(self, mask: np.ndarray) -> float | None:
        """Distance of ``mask`` to the closest known label; None when off or none known."""
        if not self.enabled or not self._known:
            return None
        signature = label_signature(mask, self.grid)
        return float(min(signature_distances(signature, k).min() for k in self._known))

    def is_duplicate(self, distance: float | None) -> bool:
        return distance is not None and distance < self.min_distance

    def add(self, mask: np.ndarray) -> None:
        """Remember a kept label: later ones are compared with it too."""
        if self.enabled:
            self._known.append(label_signature(mask, self.grid)[None])

    def forget(self, mask: np.ndarray) -> None:
        """Forget the newest added label with ``mask``'s signature (a later check rejected it)."""
        if not self.enabled:
            return
        signature = label_signature(mask, self.grid)[None]
        for i in range(len(self._known) - 1, self._committed - 1, -1):
            if np.array_equal(self._known[i], signature):
                del self._known[i]
                return
