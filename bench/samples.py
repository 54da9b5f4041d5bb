"""The two kinds of samples the store benchmarks measure on: synthetic landscapes and real crops.

Real imagery compresses differently from the synthetic landscapes, so a codec is chosen on
both. The genuine LoveDA tiles are read from ``../shared/data/loveda-real`` (never copied).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline_lib.data.loveda import read_image, read_mask
from pipeline_lib.data.synth import SYNTH_SCENES, synth_tile, tile_rng

REAL_ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "loveda-real"
KINDS = ("synth", "real")


def synth_samples(n: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` synthetic landscapes (as ``lfactory data synth`` draws them), scenes alternating."""
    images = np.empty((n, size, size, 3), np.uint8)
    labels = np.empty((n, size, size), np.uint8)
    for i in range(n):
        scene = SYNTH_SCENES[i % len(SYNTH_SCENES)]
        images[i], labels[i] = synth_tile(tile_rng(seed, "Train", scene, i), size, scene)
    return images, labels


def real_tiles(root: Path = REAL_ROOT) -> list[Path]:
    """The genuine tiles' image paths, sorted by id; empty where the folder is absent."""
    folder = root / "Train" / "Rural" / "images_png"
    return sorted(folder.glob("*.png"), key=lambda p: int(p.stem)) if folder.is_dir() else []


def real_crops(n: int, size: int, seed: int, root: Path = REAL_ROOT) -> tuple[np.ndarray, ...]:
    """``n`` crops of ``size`` px of the genuine tiles, at seeded positions, tiles in turn."""
    paths = real_tiles(root)
    if not paths:
        raise FileNotFoundError(f"{root}: no genuine LoveDA tiles here")
    rng = np.random.default_rng(seed)
    images = np.empty((n, size, size, 3), np.uint8)
    labels = np.empty((n, size, size), np.uint8)
    per_tile = -(-n // len(paths))
    i = 0
    for path in paths:
        image, label = read_image(path), read_mask(path.parent.parent / "masks_png" / path.name)
        for _ in range(per_tile):
            if i == n:
                return images, labels
            y, x = (
                rng.integers(0, image.shape[0] - size + 1),
                rng.integers(0, image.shape[1] - size + 1),
            )
            images[i], labels[i] = (
                image[y : y + size, x : x + size],
                label[y : y + size, x : x + size],
            )
            i += 1
    return images, labels


def samples(kind: str, n: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Samples of ``kind`` (``synth`` or ``real``)."""
    if kind == "synth":
        return synth_samples(n, size, seed)
    if kind == "real":
        return real_crops(n, size, seed)
    raise ValueError(f"unknown sample kind {kind!r}; choose one of {', '.join(KINDS)}")
