"""A PNG grid of generated samples: each aerial image beside its colourised label map."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline_lib.data.classes import PALETTE
from pipeline_lib.data.loveda import write_png


def sample_grid(
    images: np.ndarray, labels: np.ndarray, columns: int = 4, gap: int = 2
) -> np.ndarray:
    """(H', W', 3) uint8: pairs (image | colour label) laid out ``columns`` pairs per row."""
    count, height, width = labels.shape[:3]
    rows = -(-count // columns)
    cell_w = 2 * width + gap
    grid = np.full((rows * (height + gap), columns * (cell_w + gap), 3), 255, np.uint8)
    colours = PALETTE[np.clip(labels, 0, len(PALETTE) - 1)]
    for i in range(count):
        y, x = (i // columns) * (height + gap), (i % columns) * (cell_w + gap)
        grid[y : y + height, x : x + width] = images[i]
        grid[y : y + height, x + width + gap : x + cell_w] = colours[i]
    return grid


def write_sample_grid(
    store: str | Path, out: str | Path, count: int = 16, columns: int = 4
) -> Path:
    """Write the store's first ``count`` committed samples as one PNG grid at ``out``."""
    from pipeline_lib.store.store import SampleStore

    sample_store = SampleStore(store)
    indices = sample_store.manifest().column("index").to_pylist()[:count]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not indices:
        write_png(out, np.full((8, 8, 3), 255, np.uint8))
        return out
    images, labels = sample_store.read_rows(indices)
    write_png(out, sample_grid(np.asarray(images), np.asarray(labels), columns))
    return out
