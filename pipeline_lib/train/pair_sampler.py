"""Training samples drawn from a LoveDA Train split as a pure function of (seed, step).

No iterator state: the sample at (step, micro-batch, index) is the same in every run,
so a resumed run sees exactly the batches an uninterrupted one would have seen.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pipeline_lib.data.classes import PALETTE, class_fractions
from pipeline_lib.data.loveda import Tile, labelled_tiles, read_image, read_mask
from pipeline_lib.data.palette import colourise
from pipeline_lib.errors import DataError
from pipeline_lib.models.tile_style import tile_style

TRAIN_SPLIT = "Train"
CACHE_BYTES = 1 << 30


@dataclass(frozen=True)
class Batch:
    """``label``: colourised masks in [0, 1]; ``image``: aerial images in [-1, 1] (B,3,H,W).

    ``mask``: the raw LoveDA values of the same crops (B,H,W) int64; ``tile_mix``: the
    class shares of each crop's whole source tile (B, classes); ``tile``: the index of
    each crop's source tile among the sampler's tiles (B,);
    ``keep_prompt`` is False where the prompt (and a concatenated condition) is dropped,
    for classifier-free guidance; ``seeds`` seed each sample's diffusion noise.
    """

    label: torch.Tensor
    image: torch.Tensor
    keep_prompt: torch.Tensor
    seeds: torch.Tensor
    mask: torch.Tensor
    tile_mix: torch.Tensor
    tile: torch.Tensor


def train_tiles(root: str | Path) -> list[Tile]:
    """Train tiles that have a mask; a DataError when there are none."""
    tiles = labelled_tiles(root, [TRAIN_SPLIT])
    if not tiles:
        raise DataError(f"{root}: no Train tiles with masks (expected Train/*/masks_png/*.png)")
    return tiles


class PairSampler:
    """Random crops of (colourised label, image) pairs, resized to ``resolution``.

    Crops take between half and all of the tile's shorter side (never less than
    ``resolution`` when the tile allows), then flips and 90-degree rotations: aerial
    views have no up.
    """

    def __init__(
        self,
        root: str | Path,
        resolution: int,
        seed: int,
        with_images: bool = True,
        empty_prompt_prob: float = 0.0,
        cache_bytes: int = CACHE_BYTES,
        crop_scale: tuple[float, float] | None = None,
        colours: np.ndarray = PALETTE,
    ):
        self.tiles = train_tiles(root)
        self.crop_scale = crop_scale
        self.colours = colours
        self.resolution = resolution
        self.seed = seed
        self.with_images = with_images
        self.empty_prompt_prob = empty_prompt_prob
        self._cache: OrderedDict[int, tuple[np.ndarray, np.ndarray | None]] = OrderedDict()
        self._cache_bytes, self._cache_limit = 0, cache_bytes
        self._tile_mixes: dict[int, torch.Tensor] = {}
        self._tile_styles: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.tiles)

    def batch(self, step: int, micro: int, batch_size: int) -> Batch:
        """The micro-batch ``micro`` of optimizer step ``step``.

        Sample j of a step is the same however the step is split into micro-batches
        (8 x 1 or 4 x 2), so halving the batch after an out-of-memory keeps the data.
        """
        labels, images, keep, seeds, masks, tiles = [], [], [], [], [], []
        for j in range(micro * batch_size, (micro + 1) * batch_size):
            rng = np.random.default_rng([self.seed, step, j])
            tile = int(rng.integers(len(self.tiles)))
            label, image, mask = self._sample(rng, tile)
            labels.append(label)
            images.append(image)
            masks.append(mask)
            tiles.append(tile)
            keep.append(rng.random() >= self.empty_prompt_prob)
            seeds.append(int(rng.integers(1 << 62)))
        return Batch(
            torch.stack(labels),
            torch.stack(images),
            torch.tensor(keep),
            torch.tensor(seeds),
            torch.stack(masks),
            torch.stack([self.tile_mix(tile) for tile in tiles]),
            torch.tensor(tiles),
        )

    def tile_mix(self, index: int) -> torch.Tensor:
        """The class shares of Train tile ``index``'s labelled pixels."""
        if index not in self._tile_mixes:
            shares = class_fractions(self._read(index)[0]).values()
            self._tile_mixes[index] = torch.tensor(list(shares), dtype=torch.float32)
        return self._tile_mixes[index]

    def tile_style(self, index: int) -> torch.Tensor:
        """The mean colour of each class on Train tile ``index`` (``models.tile_style``)."""
        if index not in self._tile_styles:
            mask, image = self._read(index)
            if image is None:
                raise DataError("a tile style needs the images: sample with_images=True")
            self._tile_styles[index] = tile_style(mask, image)
        return self._tile_styles[index]

    def _crop_side(self, rng: np.random.Generator, side: int) -> int:
        if self.crop_scale is not None:
            low, high = (min(side, round(self.resolution * s)) for s in self.crop_scale)
            return int(rng.integers(low, high + 1))
        low = min(side, max(self.resolution, side // 2))
        return int(rng.integers(low, side + 1))

    def _sample(
        self, rng: np.random.Generator, tile: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mask, image = self._read(tile)
        crop = self._crop_side(rng, min(mask.shape))
        y = int(rng.integers(0, mask.shape[0] - crop + 1))
        x = int(rng.integers(0, mask.shape[1] - crop + 1))
        turns, flip = int(rng.integers(4)), bool(rng.integers(2))
        # Nearest sampling of the raw mask, then colour: every pixel stays on the palette,
        # and colourising the small result is far cheaper than the 1024 px tile.
        rows = y + np.arange(self.resolution) * crop // self.resolution
        cols = x + np.arange(self.resolution) * crop // self.resolution
        small = mask[np.ix_(rows, cols)]
        label = _augment(_to_chw(colourise(small, self.colours)), turns, flip)
        raw = _augment(torch.from_numpy(small.astype(np.int64))[None], turns, flip)[0]
        if image is None:
            out_image = torch.zeros_like(label)
        else:
            out_image = _resize(_to_chw(image[y : y + crop, x : x + crop]), self.resolution)
            out_image = _augment(out_image, turns, flip) * 2 - 1
        return label, out_image, raw

    def _read(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        # Decoding a 1024 px PNG costs more than a tiny training step: keep recent tiles.
        if index in self._cache:
            self._cache.move_to_end(index)
            return self._cache[index]
        tile = self.tiles[index]
        mask = read_mask(tile.mask_path)
        image = read_image(tile.image_path) if self.with_images else None
        if image is not None and image.shape[:2] != mask.shape:
            raise DataError(
                f"{tile.image_path}: image {image.shape[:2]} and mask {mask.shape} differ"
            )
        self._cache[index] = (mask, image)
        self._cache_bytes += mask.nbytes + (image.nbytes if image is not None else 0)
        while self._cache_bytes > self._cache_limit and len(self._cache) > 1:
            old_mask, old_image = self._cache.popitem(last=False)[1]
            self._cache_bytes -= old_mask.nbytes + (
                old_image.nbytes if old_image is not None else 0
            )
        return mask, image


def _to_chw(rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float() / 255.0


def _resize(chw: torch.Tensor, size: int) -> torch.Tensor:
    if chw.shape[-1] == size and chw.shape[-2] == size:
        return chw
    resized = F.interpolate(chw[None], size=(size, size), mode="bilinear", antialias=True)
    return resized[0].clamp(0, 1)


def _augment(chw: torch.Tensor, turns: int, flip: bool) -> torch.Tensor:
    chw = torch.rot90(chw, turns, dims=(1, 2))
    return torch.flip(chw, dims=(2,)) if flip else chw
