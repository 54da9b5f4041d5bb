"""Per-sample seeds, ids and styles, derived only from (run seed, shard, attempt).

A sample therefore never depends on which other samples shared its batch or on which
worker drew it, and a killed shard regenerates to the very same bytes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def sample_seed(run_seed: int, shard_id: int, attempt: int) -> int:
    """The seed of the label draw number ``attempt`` of shard ``shard_id``."""
    return int(
        np.random.SeedSequence([run_seed, shard_id, attempt]).generate_state(1, np.uint64)[0]
    )


def image_seed(seed: int) -> int:
    """The image pass's seed: independent of the label's noise, derived from its seed."""
    return int(np.random.SeedSequence([seed, 1]).generate_state(1, np.uint64)[0])


def sample_id(run_name: str, run_seed: int, shard_id: int, attempt: int) -> str:
    """A sample id unique per run, shard and draw, e.g. ``factory-s0-00007-0012``."""
    return f"{run_name}-s{run_seed}-{shard_id:05d}-{attempt:04d}"


def pick_style(styles: Sequence[str], seed: int) -> str:
    """The style of a sample, drawn from its seed so styles mix evenly across shards.

    Names are sorted so that the order of styles in a config file changes nothing.
    """
    names = sorted(styles)
    return names[seed % len(names)]
