"""Images drawn by the image model for label maps a user already has.

:func:`render_split` gives every labelled tile of one split of a LoveDA-layout folder an
image from the config's image model, conditioned on the tile's own mask, and writes the
pairs (the mask unchanged) as a LoveDA-layout folder. It isolates the image model: a
segmenter trained on rendered real labels shows what the images cost, apart from the
label model (``bench.quality_gap``). All or nothing: the folder appears only when complete.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm import tqdm

from pipeline_lib.config import FactoryConfig
from pipeline_lib.data.loveda import labelled_tiles, read_mask, staged_dir, write_tile
from pipeline_lib.errors import DataError

# Render draws take shard ids from here on: their seeds never meet a store's draws.
RENDER_SHARDS = 1_000_000


def render_split(
    cfg: FactoryConfig, root: str | Path, out: str | Path, split: str, progress: bool = True
) -> int:
    """Render every labelled tile of ``root/split`` into ``out`` (same split and names);
    return the number of tiles. Masks must be ``generation.resolution`` px square."""
    from pipeline_lib.generate.sampler import Generator

    root, out = Path(root), Path(out)
    tiles = labelled_tiles(root, [split])
    if not tiles:
        raise DataError(f"{root}: no labelled tile in {split}")
    res = cfg.generation.resolution
    masks = [read_mask(t.mask_path) for t in tiles]
    for tile, mask in zip(tiles, masks, strict=True):
        if mask.shape != (res, res):
            raise DataError(
                f"{tile.mask_path}: {mask.shape[1]}x{mask.shape[0]} px; the image model draws "
                f"{res}x{res} (generation.resolution): cut the tiles to that size first "
                f"(lfactory data tile --size {res})"
            )
    generator = Generator(cfg)
    size = cfg.generation.batch_size
    with staged_dir(out) as tmp:
        batches = range(0, len(tiles), size)
        for batch, first in enumerate(tqdm(batches, desc="rendering", disable=not progress)):
            chunk = slice(first, first + size)
            draws = [generator.draw(RENDER_SHARDS + batch, a) for a in range(len(tiles[chunk]))]
            images = generator.sample_images(draws, masks[chunk])
            for tile, mask, image in zip(tiles[chunk], masks[chunk], images, strict=True):
                write_tile(tmp, split, tile.scene, tile.tile_id, np.asarray(image), mask)
    return len(tiles)
