"""Label fidelity of a generated store against the Train split it imitates.

Class fractions of the committed labels against Train's (total-variation distance),
off-palette share before snapping (from the manifests), and rejects by reason (from the
shard metadata). Read from the store alone: no image is decoded.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline_lib.data.classes import CLASS_NAMES
from pipeline_lib.store.manifest import FRACTION_COLUMNS, read_manifests, read_shard_meta


@dataclass(frozen=True)
class LabelFidelity:
    samples: int
    attempts: int
    rejected: dict[str, int]
    generated_fractions: dict[str, float]
    train_fractions: dict[str, float]
    class_fraction_tv: float
    off_palette_mean: float
    off_palette_p95: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def total_variation(p: dict[str, float], q: dict[str, float]) -> float:
    """Half the L1 distance between two class distributions (0 same, 1 disjoint)."""
    return 0.5 * float(sum(abs(p.get(c, 0.0) - q.get(c, 0.0)) for c in CLASS_NAMES))


def label_fidelity(store: str | Path, train_fractions: dict[str, float]) -> LabelFidelity:
    """How closely the store's committed labels follow ``train_fractions``."""
    table = read_manifests(store)
    fractions = np.stack([table[c].to_numpy() for c in FRACTION_COLUMNS], axis=1)
    # Every sample has the same size, so the mean of per-sample shares is the pixel share.
    mean = fractions.mean(axis=0) if len(table) else np.zeros(len(CLASS_NAMES))
    generated = {c: float(v) for c, v in zip(CLASS_NAMES, mean, strict=True)}
    off = table["off_palette_share"].to_numpy() if len(table) else np.zeros(1)
    attempts, rejected = 0, {}
    for shard in sorted(set(table["shard_id"].to_pylist())):
        meta = read_shard_meta(store, shard)
        attempts += int(meta.get("attempts", 0))
        for reason, count in meta.get("rejected", {}).items():
            rejected[reason] = rejected.get(reason, 0) + int(count)
    return LabelFidelity(
        samples=len(table),
        attempts=attempts,
        rejected=rejected,
        generated_fractions=generated,
        train_fractions=dict(train_fractions),
        class_fraction_tv=total_variation(generated, train_fractions),
        off_palette_mean=float(np.mean(off)),
        off_palette_p95=float(np.quantile(off, 0.95)),
    )
