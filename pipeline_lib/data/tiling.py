"""Leak-free crops of a LoveDA-layout folder: every source tile goes whole to Train or to Val.

Crops of one tile look alike (same scene, date, sensor), so crops of one tile on both sides
would score a segmenter on what it has all but seen. ``tile_dataset`` therefore splits by
tile, never by crop, then cuts each tile into a grid of square crops (optionally after
resizing it to a coarser ground sampling distance), drops the crops that are mostly no-data
and writes a LoveDA release-layout folder with ``crops.csv`` (each crop's source tile, offset
and scale) and ``tiling.json`` (the arguments, the seed and the split) beside it.
"""

from __future__ import annotations

import csv
import itertools
import json
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from pipeline_lib.data.classes import CLASS_NAMES, MAX_VALUE, NO_DATA
from pipeline_lib.data.loveda import (
    Tile,
    check_layout,
    labelled_tiles,
    read_image,
    read_mask,
    staged_dir,
    write_tile,
)
from pipeline_lib.errors import ConfigError, DataError

log = logging.getLogger(__name__)

CROPS_FILE = "crops.csv"
TILING_FILE = "tiling.json"
CROP_COLUMNS = (
    "split",
    "scene",
    "crop_id",
    "source_split",
    "source_scene",
    "source_id",
    "y",
    "x",
    "size",
    "scale",
    "no_data_fraction",
)
TRAIN, VAL = "Train", "Val"
DEFAULT_MAX_NO_DATA = 0.5
# Seeded draws of K Val tiles the split chooses from (all K-subsets when there are fewer).
SPLIT_DRAWS = 1000
SPLIT_RULE = (
    f"of {SPLIT_DRAWS} seeded draws of K whole tiles (every K-subset when there are fewer), "
    "the one that leaves the fewest classes missing from Train or Val, then the one whose Val "
    "class mix is closest to Train's (total variation); the first drawn wins a tie"
)


@dataclass(frozen=True)
class TilePlan:
    """One source tile's kept crops (after resizing) and their class pixel counts."""

    tile: Tile
    scale: float
    crops: tuple[tuple[int, int, float], ...]  # (y, x, no-data fraction) in scaled pixels
    dropped: int
    counts: np.ndarray  # bincount of raw values 0..MAX_VALUE over the kept crops

    @property
    def key(self) -> str:
        return tile_key(self.tile)


@dataclass(frozen=True)
class TilingSummary:
    """What ``tile_dataset`` wrote: crops and source tiles per split, and what it dropped."""

    out: Path
    crops: dict[str, int]
    tiles: dict[str, tuple[str, ...]]
    dropped: int
    missing: dict[str, tuple[str, ...]]  # split -> classes of the whole set absent there


def tile_key(tile: Tile) -> str:
    """A source tile's name, unique within its folder: ``Train/Rural/18``."""
    return f"{tile.split}/{tile.scene}/{tile.tile_id}"


def _resize(array: np.ndarray, scale: float, is_mask: bool) -> np.ndarray:
    if scale == 1.0:
        return array
    from PIL import Image

    height, width = array.shape[:2]
    shape = (max(1, round(width * scale)), max(1, round(height * scale)))
    # Area averaging is what a coarser sensor sees; a label is never averaged.
    resample = Image.Resampling.NEAREST if is_mask else Image.Resampling.BOX
    return np.asarray(Image.fromarray(array).resize(shape, resample))


def _scale(tile: Tile, shape: tuple[int, int], resize: int | None) -> float:
    side = max(shape)
    if resize is None:
        return 1.0
    if resize > side:
        raise ConfigError(
            f"resize {resize} px is larger than tile {tile_key(tile)} ({shape[1]}x{shape[0]} px); "
            "resizing only coarsens, so give at most its side"
        )
    return resize / side


def _read_mask_checked(tile: Tile) -> np.ndarray:
    mask = read_mask(tile.mask_path)
    if int(mask.max()) > MAX_VALUE:
        bad = sorted(int(v) for v in np.unique(mask) if v > MAX_VALUE)
        raise DataError(f"{tile.mask_path}: holds value(s) {bad}; LoveDA masks use 0..{MAX_VALUE}")
    return mask


def plan_tile(tile: Tile, size: int, resize: int | None, max_no_data: float) -> TilePlan:
    """The grid of ``size`` crops of one tile (top-left aligned; a remainder narrower than
    ``size`` at the right and bottom edges is left out) that are at most ``max_no_data``
    no-data."""
    mask = _read_mask_checked(tile)
    scale = _scale(tile, mask.shape, resize)
    mask = _resize(mask, scale, is_mask=True)
    height, width = mask.shape
    if size > min(height, width):
        scaled = f" after resizing to {resize} px" if resize is not None else ""
        raise ConfigError(
            f"crop size {size} px is larger than tile {tile_key(tile)} "
            f"({width}x{height} px{scaled}); choose a size of at most {min(height, width)}"
        )
    crops, dropped = [], 0
    counts = np.zeros(MAX_VALUE + 1, np.int64)
    for y in range(0, height - size + 1, size):
        for x in range(0, width - size + 1, size):
            window = mask[y : y + size, x : x + size]
            no_data = float((window == NO_DATA).mean())
            if no_data > max_no_data:
                dropped += 1
                continue
            crops.append((y, x, no_data))
            counts += np.bincount(window.ravel(), minlength=MAX_VALUE + 1)
    return TilePlan(tile, scale, tuple(crops), dropped, counts)


def _present(plans: Iterable[TilePlan]) -> np.ndarray:
    total = sum((p.counts for p in plans), np.zeros(MAX_VALUE + 1, np.int64))
    return total[1:] > 0


def _fractions(plans: Iterable[TilePlan]) -> np.ndarray:
    total = sum((p.counts for p in plans), np.zeros(MAX_VALUE + 1, np.int64))[1:]
    return total / max(1, total.sum())


def missing_classes(side: Sequence[TilePlan], everything: Sequence[TilePlan]) -> tuple[str, ...]:
    """Classes that the crops of ``everything`` hold and the crops of ``side`` do not."""
    gap = _present(everything) & ~_present(side)
    return tuple(name for name, absent in zip(CLASS_NAMES, gap, strict=True) if absent)


def choose_val_tiles(plans: Sequence[TilePlan], k: int, seed: int) -> tuple[str, ...]:
    """The keys of K whole tiles for Val, chosen by ``SPLIT_RULE``."""
    n = len(plans)
    if math.comb(n, k) <= SPLIT_DRAWS:
        draws: Iterable[Sequence[int]] = itertools.combinations(range(n), k)
    else:
        rng = np.random.default_rng(seed)
        draws = (sorted(rng.choice(n, k, replace=False)) for _ in range(SPLIT_DRAWS))
    best, best_score = (), (math.inf, math.inf)
    for draw in draws:
        chosen = set(draw)
        val = [plans[i] for i in chosen]
        train = [p for i, p in enumerate(plans) if i not in chosen]
        missing = len(missing_classes(val, plans)) + len(missing_classes(train, plans))
        tv = 0.5 * float(np.abs(_fractions(val) - _fractions(train)).sum())
        if (missing, tv) < best_score:
            best, best_score = tuple(int(i) for i in draw), (missing, tv)
    return tuple(plans[i].key for i in sorted(best))


def _named_tiles(plans: Sequence[TilePlan], ids: Sequence[str]) -> tuple[str, ...]:
    keys = []
    for given in ids:
        matches = [p.key for p in plans if p.key == given or p.key.endswith(f"/{given}")]
        if not matches:
            raise ConfigError(
                f"val id {given!r} names no tile with a kept crop; tiles: "
                + ", ".join(p.key for p in plans)
            )
        if len(matches) > 1:
            raise ConfigError(
                f"val id {given!r} names {len(matches)} tiles ({', '.join(matches)}); "
                "give scene/id or split/scene/id"
            )
        if matches[0] not in keys:
            keys.append(matches[0])
    return tuple(keys)


def _check_arguments(
    size: int,
    val_tiles: int | Literal["all"] | None,
    val_ids: Sequence[str] | None,
    resize: int | None,
    max_no_data: float,
) -> None:
    if size < 1:
        raise ConfigError(f"crop size {size} must be at least 1 px")
    if resize is not None and resize < size:
        raise ConfigError(f"resize {resize} px is smaller than the crop size {size} px")
    if not 0.0 <= max_no_data <= 1.0:
        raise ConfigError(f"max no-data fraction {max_no_data} must lie in 0..1")
    if (val_tiles is None) == (val_ids is None):
        raise ConfigError(
            "give exactly one of val tiles (a number, or 'all') and val ids "
            f"(got val tiles {val_tiles!r}, val ids {val_ids!r})"
        )
    if val_tiles is not None and val_tiles != "all":
        if not isinstance(val_tiles, int) or isinstance(val_tiles, bool) or val_tiles < 1:
            raise ConfigError(f"val tiles {val_tiles!r} must be a whole number >= 1 or 'all'")
    if val_ids is not None and not val_ids:
        raise ConfigError("val ids is empty; name at least one tile")


def tile_dataset(
    root: str | Path,
    out: str | Path,
    size: int,
    val_tiles: int | Literal["all"] | None = None,
    val_ids: Sequence[str] | None = None,
    seed: int = 0,
    resize: int | None = None,
    max_no_data: float = DEFAULT_MAX_NO_DATA,
    progress: bool = False,
) -> TilingSummary:
    """Cut the labelled tiles of ``root`` (any split) into ``size`` crops under ``out``
    (LoveDA release layout), whole tiles to Train or Val; all or nothing.

    Val is ``val_tiles`` tiles chosen by ``choose_val_tiles``, every tile (``'all'``: an
    evaluation-only set) or the tiles ``val_ids`` names (``18``, ``Rural/18`` or
    ``Train/Rural/18``). ``resize`` scales each tile so its longer side is that many pixels
    before cutting.
    """
    _check_arguments(size, val_tiles, val_ids, resize, max_no_data)
    root, out = Path(root), Path(out)
    if out.exists() and any(out.iterdir()):  # staged_dir checks too, but after the reading
        raise DataError(f"{out}: already exists and is not empty; choose a new folder")
    check_layout(root)
    tiles = labelled_tiles(root)
    if not tiles:
        raise DataError(
            f"{root}: no labelled tiles; expected <split>/<scene>/{{images_png,masks_png}}/<id>.png"
        )
    plans = [plan_tile(t, size, resize, max_no_data) for t in _bar(tiles, progress, "planning")]
    empty = [p.key for p in plans if not p.crops]
    if empty:
        log.warning("no crop of %s is below %.2f no-data; left out", ", ".join(empty), max_no_data)
    dropped = sum(p.dropped for p in plans)
    plans = [p for p in plans if p.crops]
    if not plans:
        raise DataError(f"{root}: every crop is more than {max_no_data:.2f} no-data")
    if val_ids is not None:
        val_keys = _named_tiles(plans, val_ids)
    elif val_tiles == "all":
        val_keys = tuple(p.key for p in plans)
    else:
        if val_tiles >= len(plans):
            raise ConfigError(
                f"val tiles {val_tiles} leaves no Train tile: {root} has {len(plans)} tile(s) "
                "with a kept crop; give fewer, or 'all' for an evaluation-only set"
            )
        val_keys = choose_val_tiles(plans, val_tiles, seed)
    sides = {
        TRAIN: [p for p in plans if p.key not in val_keys],
        VAL: [p for p in plans if p.key in val_keys],
    }
    summary = TilingSummary(
        out=out,
        crops={s: sum(len(p.crops) for p in side) for s, side in sides.items() if side},
        tiles={s: tuple(p.key for p in side) for s, side in sides.items() if side},
        dropped=dropped,
        missing={s: missing_classes(side, plans) for s, side in sides.items() if side},
    )
    for split, names in summary.missing.items():
        if names:
            log.warning("%s has no pixel of %s", split, ", ".join(names))
    with staged_dir(out) as tmp:
        rows = _write_crops(tmp, plans, val_keys, size, progress)
        with open(tmp / CROPS_FILE, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=CROP_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
        record = {
            "root": str(root.resolve()),
            "size": size,
            "resize": resize,
            "max_no_data": max_no_data,
            "seed": seed,
            "val_tiles": val_tiles,
            "val_ids": list(val_ids) if val_ids is not None else None,
            "split_rule": SPLIT_RULE if isinstance(val_tiles, int) else None,
            "crops": summary.crops,
            "tiles": {s: list(keys) for s, keys in summary.tiles.items()},
            "dropped": summary.dropped,
            "left_out_tiles": empty,
            "missing_classes": {s: list(names) for s, names in summary.missing.items()},
        }
        (tmp / TILING_FILE).write_text(json.dumps(record, indent=2))
    return summary


def _write_crops(
    out: Path, plans: Sequence[TilePlan], val_keys: Sequence[str], size: int, progress: bool
) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for plan in _bar(list(plans), progress, "cutting"):
        split = VAL if plan.key in val_keys else TRAIN
        image = read_image(plan.tile.image_path)
        mask = _read_mask_checked(plan.tile)
        if image.shape[:2] != mask.shape:
            raise DataError(
                f"{plan.tile.mask_path}: size {mask.shape[1]}x{mask.shape[0]} differs from its "
                f"image {image.shape[1]}x{image.shape[0]}"
            )
        image = _resize(image, plan.scale, is_mask=False)
        mask = _resize(mask, plan.scale, is_mask=True)
        for y, x, no_data in plan.crops:
            crop_id = str(len(rows))
            window = (slice(y, y + size), slice(x, x + size))
            write_tile(out, split, plan.tile.scene, crop_id, image[window], mask[window])
            rows.append(
                dict(
                    split=split,
                    scene=plan.tile.scene,
                    crop_id=crop_id,
                    source_split=plan.tile.split,
                    source_scene=plan.tile.scene,
                    source_id=plan.tile.tile_id,
                    y=y,
                    x=x,
                    size=size,
                    scale=round(plan.scale, 6),
                    no_data_fraction=round(no_data, 6),
                )
            )
    return rows


def _bar(items: list, progress: bool, desc: str) -> Iterable:
    if not progress:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=desc, unit="tile")
