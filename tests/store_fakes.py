"""Deterministic fake shards for store tests: no diffusion model needed.

A sample's pixels depend only on (seed, shard, attempt), like the real generator's,
so a re-run after a kill must reproduce the very same bytes.
"""

from __future__ import annotations

import numpy as np

from pipeline_lib.generate.seeds import sample_id, sample_seed
from pipeline_lib.store import ShardData

SIZE = 16


def fake_sample(seed: int, shard_id: int, attempt: int, size: int = SIZE):
    rng = np.random.default_rng(sample_seed(seed, shard_id, attempt))
    label = rng.integers(0, 8, (size // 4, size // 4), dtype=np.uint8).repeat(4, 0).repeat(4, 1)
    image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    return image, label


def fake_shard(
    shard_id: int, n: int, seed: int = 0, size: int = SIZE, rejected: int = 1
) -> ShardData:
    """``n`` kept samples drawn at attempts 0, 2, 4...; odd attempts count as rejected."""
    attempts = [2 * i for i in range(n)]
    pairs = [fake_sample(seed, shard_id, a, size) for a in attempts]
    rows = tuple(
        {
            "sample_id": sample_id("fake", seed, shard_id, a),
            "attempt": a,
            "style": ("urban", "rural", "default")[a % 3],
            "seed": sample_seed(seed, shard_id, a),
            "off_palette_share": 0.01,
            "small_fragment_share": 0.0,
            "min_fragment_pixels": 16,
        }
        for a in attempts
    )
    return ShardData(
        shard_id=shard_id,
        images=np.stack([p[0] for p in pairs]).reshape(n, size, size, 3),
        labels=np.stack([p[1] for p in pairs]).reshape(n, size, size),
        rows=rows,
        attempts=n + rejected,
        rejected={"off_palette": rejected} if rejected else {},
    )
