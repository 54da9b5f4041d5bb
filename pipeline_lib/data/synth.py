"""Synthetic LoveDA-layout landscapes: the embedded default data set.

No real data set can be downloaded here, so the factory makes its own: label maps that
look like land cover (road networks, buildings along roads, rivers, lakes, forest stands,
farmland parcels, barren patches) and aerial-looking images rendered from them, written
in LoveDA's exact release layout and encoding. Only numpy and scipy.ndimage, vectorised,
so 1024 px tiles stay cheap.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from pipeline_lib.data.classes import MAX_VALUE, VALUE_BY_NAME, fractions_from_counts
from pipeline_lib.data.loveda import staged_dir, write_tile
from pipeline_lib.errors import DataError

log = logging.getLogger(__name__)

SYNTH_SPLITS = ("Train", "Val")
SYNTH_SCENES = ("Urban", "Rural")
MIN_SIZE = 32
MIN_TILES = 2
# Bump when the generator changes, so a recorded seed still says what made the data.
GENERATOR_VERSION = 1
# Object ids (parcels, lots, blocks) index per-object random tables of this length.
_OBJECTS = 1 << 16

BACKGROUND, BUILDING, ROAD, WATER, BARREN, FOREST, AGRICULTURE = (
    VALUE_BY_NAME[n]
    for n in ("background", "building", "road", "water", "barren", "forest", "agriculture")
)

# Two end colours per class (RGB), near the genuine rural tiles' class means; each object
# (parcel, roof, block) mixes them at its own ratio, so classes overlap in colour.
_RURAL_COLOURS = {
    BACKGROUND: ((70, 86, 70), (112, 108, 92)),
    BUILDING: ((150, 154, 160), (96, 112, 128)),
    ROAD: ((118, 114, 104), (92, 94, 92)),
    WATER: ((44, 60, 62), (66, 82, 80)),
    BARREN: ((132, 106, 88), (104, 92, 84)),
    FOREST: ((36, 56, 42), (58, 76, 58)),
    AGRICULTURE: ((66, 90, 58), (134, 114, 92)),
}
_URBAN_COLOURS = {
    **_RURAL_COLOURS,
    BACKGROUND: ((98, 100, 94), (124, 118, 106)),
    BUILDING: ((170, 170, 172), (120, 96, 92)),
    ROAD: ((116, 116, 114), (88, 90, 92)),
}


@dataclass(frozen=True)
class SynthSummary:
    """What :func:`make_synthetic_loveda` wrote: tiles per (split, scene) and class mix."""

    root: Path
    size: int
    seed: int
    tiles: dict[tuple[str, str], int] = field(default_factory=dict)
    class_fractions: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def total_tiles(self) -> int:
        return sum(self.tiles.values())


# ---------------------------------------------------------------------------- noise helpers


def _smooth_noise(rng: np.random.Generator, size: int, feature: float) -> np.ndarray:
    """Zero-mean, unit-std noise whose blobs are about ``feature`` pixels across."""
    feature = max(float(feature), 1.0)
    cells = int(np.ceil(size / feature)) + 5
    coarse = rng.standard_normal((cells, cells), dtype=np.float32)
    rows = _upsample_rows(coarse, size, feature, rng.uniform(1, 2))
    out = _upsample_rows(rows.T, size, feature, rng.uniform(1, 2)).T
    return (out - out.mean()) / (out.std() + 1e-6)


def _upsample_rows(coarse: np.ndarray, size: int, feature: float, offset: float) -> np.ndarray:
    """Cubic B-spline interpolation along axis 0: four gathered taps, no BLAS.

    A matrix product would be shorter, but multithreaded BLAS slows to a crawl when
    the machine's cores are shared.
    """
    pos = offset + np.arange(size, dtype=np.float32) / feature
    i = pos.astype(np.int64)
    f = (pos - i)[:, None]
    f2, f3 = f * f, f * f * f
    return (
        (1 - f) ** 3 / 6 * coarse[i - 1]
        + (3 * f3 - 6 * f2 + 4) / 6 * coarse[i]
        + (-3 * f3 + 3 * f2 + 3 * f + 1) / 6 * coarse[i + 1]
        + f3 / 6 * coarse[i + 2]
    )


def _fractal(rng: np.random.Generator, size: int, feature: float, octaves: int = 3) -> np.ndarray:
    """Sum of smooth noises at halving scales: ragged, natural-looking blob outlines."""
    total = np.zeros((size, size), np.float32)
    for i in range(octaves):
        total += _smooth_noise(rng, size, feature / 2**i) * 0.5**i
    return total / total.std()


def _top_share(field_: np.ndarray, share: float) -> np.ndarray:
    """Boolean mask of the highest ``share`` of a field (exact area control)."""
    if share <= 0:
        return np.zeros(field_.shape, bool)
    return field_ > np.quantile(field_[::4, ::4], 1.0 - min(share, 1.0))


def _rotated(size: int, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates in a frame rotated by ``angle`` about the tile centre."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) - size / 2
    c, s = np.cos(angle), np.sin(angle)
    return x * c + y * s, -x * s + y * c


def _curve(
    rng: np.random.Generator, size: int, width: np.ndarray | float, wiggle: float
) -> np.ndarray:
    """A band across the tile (road or river) that meanders by up to ``wiggle`` of the tile."""
    u, v = _rotated(size, rng.uniform(0, np.pi))
    centre = rng.uniform(-0.35, 0.35) * size
    for _ in range(3):
        amp = rng.uniform(0.0, wiggle) * size
        wavelength = rng.uniform(0.4, 1.5) * size
        centre = centre + amp * np.sin(2 * np.pi * u / wavelength + rng.uniform(0, 2 * np.pi))
    return np.abs(v - centre) < np.asarray(width) / 2


def _nearest_line(coord: np.ndarray, lines: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distance to the nearest of sorted ``lines`` and the index of the band between lines."""
    idx = np.searchsorted(lines, coord)
    below = lines[np.clip(idx - 1, 0, len(lines) - 1)]
    above = lines[np.clip(idx, 0, len(lines) - 1)]
    return np.minimum(np.abs(coord - below), np.abs(coord - above)), idx


def _grid_lines(rng: np.random.Generator, size: int, spacing: float) -> np.ndarray:
    """Irregularly spaced parallel line positions covering the rotated tile."""
    n = int(np.ceil(1.6 * size / spacing)) + 2
    steps = spacing * rng.uniform(0.6, 1.4, n)
    return (np.cumsum(steps) - steps.sum() / 2).astype(np.float32)


# ---------------------------------------------------------------------------- label layers


@dataclass
class _Layout:
    """A label map plus per-pixel ids that the renderer uses for per-object colour."""

    mask: np.ndarray
    parcel: np.ndarray  # an object id per pixel (field parcel, building lot, block)
    stripe: np.ndarray  # along-row coordinate for field rows, in pixels
    ridge: np.ndarray | None = None  # field boundaries, drawn darker than their class


def _parcels(rng: np.random.Generator, size: int, scale: float) -> tuple[np.ndarray, ...]:
    """Rotated, irregular field parcels: (parcel id, distance to boundary, row coordinate)."""
    u, v = _rotated(size, rng.uniform(0, np.pi))
    du, iu = _nearest_line(u, _grid_lines(rng, size, scale * rng.uniform(1.0, 2.0)))
    # Parcels in each strip are cut at their own offsets, like real field systems.
    shift = rng.uniform(0, scale, 512).astype(np.float32)
    dv, iv = _nearest_line(v + shift[iu % 512], _grid_lines(rng, size, scale))
    parcel = (iu * 1009 + iv) % 65521
    return parcel, np.minimum(du, dv), (v if rng.random() < 0.5 else u)


def _rural_layout(rng: np.random.Generator, size: int) -> _Layout:
    """Farmland-dominated countryside: parcels, woods, river and ponds, a village by a road."""
    k = size / 1024
    mask = np.full((size, size), BACKGROUND, np.uint8)
    parcel, edge, stripe = _parcels(rng, size, rng.uniform(60, 160) * k)
    farm = _top_share(_fractal(rng, size, 400 * k), rng.uniform(0.5, 0.85))
    mask[farm] = AGRICULTURE
    # Parcels that are not crops: fish ponds, fallow, yards.
    fate = rng.random(65521)
    pond, fallow = fate[parcel] < 0.08, (fate[parcel] > 0.985)
    mask[farm & pond] = WATER
    mask[farm & fallow] = BARREN
    mask[farm & (edge < max(0.5, 3 * k))] = BACKGROUND
    mask[_top_share(_fractal(rng, size, 220 * k), rng.uniform(0.06, 0.3))] = FOREST
    if rng.random() < 0.35:
        mask[_top_share(_fractal(rng, size, 120 * k), rng.uniform(0.005, 0.04))] = BARREN
    if rng.random() < 0.5:
        width = (rng.uniform(25, 90) * k) * (1 + 0.3 * _smooth_noise(rng, size, 300 * k))
        mask[_curve(rng, size, np.maximum(width, 2), 0.1)] = WATER
    if rng.random() < 0.6:
        mask[_top_share(_fractal(rng, size, 200 * k), rng.uniform(0.02, 0.1))] = WATER
    road = np.zeros((size, size), bool)
    for _ in range(rng.integers(1, 4)):
        road |= _curve(rng, size, max(2.0, rng.uniform(8, 22) * k), rng.uniform(0, 0.05))
    mask[road] = ROAD
    village = _top_share(_fractal(rng, size, 250 * k), rng.uniform(0.2, 0.45))
    buildings, lots = _buildings_by_roads(rng, size, road, village, k)
    mask[buildings] = BUILDING
    ridge = edge < max(1.0, 4 * k)
    return _Layout(mask, np.where(buildings, lots, parcel), stripe, ridge)


def _buildings_by_roads(
    rng: np.random.Generator, size: int, road: np.ndarray, area: np.ndarray, k: float
) -> tuple[np.ndarray, np.ndarray]:
    """Rectangular buildings on a rotated lot grid, only near roads inside ``area``."""
    near = ndimage.distance_transform_edt(~road) if road.any() else np.full(road.shape, np.inf)
    u, v = _rotated(size, rng.uniform(0, np.pi))
    lot = rng.uniform(35, 60) * k + 3
    iu, iv = np.floor(u / lot).astype(np.int64), np.floor(v / lot).astype(np.int64)
    fu, fv = u / lot - iu, v / lot - iv
    ids = (iu * 7919 + iv) % 65521
    params = rng.uniform(0.1, 0.45, (65521, 2)).astype(np.float32)
    occupied = rng.random(65521) < 0.8
    inside = (np.abs(fu - 0.5) < params[ids, 0]) & (np.abs(fv - 0.5) < params[ids, 1])
    reach = rng.uniform(60, 120) * k + 2
    keep = inside & occupied[ids] & area & (near > 2 * k + 1) & (near < reach)
    return keep, ids + 70_001


def _urban_layout(rng: np.random.Generator, size: int) -> _Layout:
    """A city quarter: a grid-ish street network, blocks of buildings, parks, lots."""
    k = size / 1024
    u, v = _rotated(size, rng.uniform(0, np.pi / 2) + rng.normal(0, 0.05))
    spacing = rng.uniform(180, 320) * k + 6
    du, iu = _nearest_line(u, _grid_lines(rng, size, spacing))
    dv, iv = _nearest_line(v, _grid_lines(rng, size, spacing * rng.uniform(0.8, 1.6)))
    block = (iu * 211 + iv) % 65521
    width = np.where(rng.random(4096) < 0.2, 2.2, 1.0)[iu % 4096] * max(1.5, rng.uniform(9, 16) * k)
    # Cross streets stop at some blocks: real grids are not complete.
    cross = rng.random(65521) < 0.8
    road = (du < width / 2) | ((dv < width / 2) & cross[(iu * 131 + iv) % 65521])
    mask = np.full((size, size), BACKGROUND, np.uint8)
    kind = rng.choice(
        [BUILDING, BACKGROUND, FOREST, BARREN, WATER, AGRICULTURE],
        p=[0.62, 0.12, 0.12, 0.06, 0.03, 0.05],
        size=65521,
    )[block]
    built = _block_buildings(rng, u, v, du, dv, spacing, k)
    mask[(kind == BUILDING) & built] = BUILDING
    for value in (FOREST, BARREN, WATER, AGRICULTURE):
        blob = _top_share(_fractal(rng, size, spacing * 0.6), 0.6)
        mask[(kind == value) & blob & (np.minimum(du, dv) > width)] = value
    mask[_top_share(_fractal(rng, size, 150 * k), rng.uniform(0.02, 0.08))] = FOREST
    if rng.random() < 0.3:
        river = (rng.uniform(30, 80) * k) * (1 + 0.3 * _smooth_noise(rng, size, 300 * k))
        mask[_curve(rng, size, np.maximum(river, 2), 0.1)] = WATER
    mask[road] = ROAD
    lots = (np.floor(u / (spacing / 5)) * 7919 + np.floor(v / (spacing / 4))).astype(np.int64)
    return _Layout(mask, np.where(mask == BUILDING, lots % 65521 + 70_001, block), u)


def _block_buildings(
    rng: np.random.Generator,
    u: np.ndarray,
    v: np.ndarray,
    du: np.ndarray,
    dv: np.ndarray,
    spacing: float,
    k: float,
) -> np.ndarray:
    """Buildings in rows of lots inside each block, set back from the streets."""
    lot_u, lot_v = spacing / rng.uniform(3, 6), spacing / rng.uniform(2, 4)
    fu, fv = (u / lot_u) % 1.0, (v / lot_v) % 1.0
    fill_u, fill_v = rng.uniform(0.6, 0.9), rng.uniform(0.6, 0.9)
    inside = (np.abs(fu - 0.5) < fill_u / 2) & (np.abs(fv - 0.5) < fill_v / 2)
    setback = rng.uniform(6, 20) * k + 1
    return inside & (du > setback) & (dv > setback)


def _synth_layout(rng: np.random.Generator, size: int, scene: str) -> _Layout:
    if scene == "Urban":
        return _urban_layout(rng, size)
    if scene == "Rural":
        return _rural_layout(rng, size)
    raise DataError(f"scene must be one of {', '.join(SYNTH_SCENES)}; got {scene!r}")


# ---------------------------------------------------------------------------- rendering


def _render(rng: np.random.Generator, layout: _Layout, scene: str) -> np.ndarray:
    """Aerial-looking image: class colour and texture, shading, jitter, soft edges, noise."""
    mask, size = layout.mask, layout.mask.shape[0]
    k = size / 1024
    colours = _URBAN_COLOURS if scene == "Urban" else _RURAL_COLOURS
    ends = np.zeros((2, MAX_VALUE + 1, 3), np.float32)
    for value, pair in colours.items():
        ends[:, value] = pair
    ends += rng.normal(0, 6, ends.shape).astype(np.float32)  # per-tile class colour drift
    # Each parcel / building / block gets its own mix and brightness: crops and roofs differ.
    obj = layout.parcel % _OBJECTS
    mix = rng.random(_OBJECTS, dtype=np.float32)[obj][..., None]
    image = ends[0][mask] * (1 - mix) + ends[1][mask] * mix
    bright = rng.uniform(0.8, 1.25, _OBJECTS).astype(np.float32)[obj]
    image *= bright[..., None]
    image += _textures(rng, layout, k)
    image *= _shadows(mask, k)[..., None]
    image = ndimage.gaussian_filter(image, sigma=(max(0.5, 1.2 * k), max(0.5, 1.2 * k), 0))
    light = _fractal(rng, size, 600 * k, octaves=2) * 0.06
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    gx, gy = rng.normal(0, 0.12, 2)
    image *= (1 + light + gx * xx + gy * yy)[..., None]
    image = image * rng.uniform(0.93, 1.07, 3) * rng.uniform(0.85, 1.15) + rng.normal(0, 5, 3)
    image += rng.normal(0, 6, image.shape).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8)


def _textures(rng: np.random.Generator, layout: _Layout, k: float) -> np.ndarray:
    """Class-specific texture in intensity: canopy, crop rows, ripples, mottling."""
    mask, size = layout.mask, layout.mask.shape[0]
    tex = np.zeros(mask.shape, np.float32)
    canopy = _smooth_noise(rng, size, max(1.5, 10 * k))
    # Crowns are bright, the gaps between them deep shade.
    tex += np.where(mask == FOREST, 16 * canopy - 14 * (canopy < -0.6), 0)
    grain = _smooth_noise(rng, size, max(1.0, 3 * k))
    tex += np.where(
        (mask == AGRICULTURE) | (mask == BACKGROUND) | (mask == BARREN), 7 * grain, 3 * grain
    )
    period = max(3.0, rng.uniform(6, 14) * k * 2)
    phase = (layout.parcel % 7).astype(np.float32)
    rows = np.sin(2 * np.pi * layout.stripe / period + phase)
    row_on = (layout.parcel % 3) != 0  # not every field shows rows
    tex += np.where((mask == AGRICULTURE) & row_on, 11 * rows, 0)
    if layout.ridge is not None:
        tex -= 18 * (layout.ridge & ((mask == AGRICULTURE) | (mask == BACKGROUND)))
    mottle = _smooth_noise(rng, size, max(2.0, 30 * k))
    tex += np.where((mask == BACKGROUND) | (mask == BARREN), 10 * mottle, 0)
    tex += np.where(mask == AGRICULTURE, 5 * mottle, 0)
    ripple = np.sin(2 * np.pi * layout.stripe / max(3.0, 20 * k)) * _smooth_noise(rng, size, 80 * k)
    tex += np.where(mask == WATER, 2.5 * ripple, 0)
    return tex[..., None]


def _shadows(mask: np.ndarray, k: float) -> np.ndarray:
    """Darken ground just beside buildings and trees, offset like a low sun."""
    shift = max(1, int(round(8 * k)))
    tall = (mask == BUILDING) | (mask == FOREST)
    cast = np.zeros_like(tall)
    cast[shift:, shift:] = tall[:-shift, :-shift]
    return np.where(cast & ~tall, 0.7, 1.0).astype(np.float32)


def synth_tile(rng: np.random.Generator, size: int, scene: str) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic tile: (image uint8 HxWx3, mask uint8 HxW with raw values 1..7)."""
    if size < MIN_SIZE:
        raise DataError(f"size must be at least {MIN_SIZE} px; got {size}")
    layout = _synth_layout(rng, size, scene)
    return _render(rng, layout, scene), layout.mask


# ---------------------------------------------------------------------------- data set


def tile_rng(seed: int, split: str, scene: str, index: int) -> np.random.Generator:
    """A tile's own generator: the same tile whatever the number of tiles asked for."""
    key = [seed, SYNTH_SPLITS.index(split), SYNTH_SCENES.index(scene), index]
    return np.random.default_rng(np.random.SeedSequence(key))


def _plan(tiles: int) -> list[tuple[str, str, int, str]]:
    """(split, scene, index, id) for every tile; ids numeric and unique, as in LoveDA."""
    plan, next_id = [], 0
    for split in SYNTH_SPLITS:
        for scene in ("Rural", "Urban"):  # LoveDA numbers Rural before Urban
            count = tiles // 2 if scene == "Urban" else tiles - tiles // 2
            for index in range(count):
                plan.append((split, scene, index, str(next_id)))
                next_id += 1
    return plan


def make_synthetic_loveda(
    out: str | Path, tiles: int, size: int, seed: int, progress: bool = False
) -> SynthSummary:
    """Write a synthetic data set in LoveDA's release layout (Train and Val, Urban and Rural).

    ``tiles`` tiles per split, split between the scenes. Written in a staged folder, so a
    failure leaves nothing at ``out``; ``synth.json`` beside the splits records the seed.
    """
    if tiles < MIN_TILES:
        raise DataError(f"tiles must be at least {MIN_TILES} (one Urban, one Rural); got {tiles}")
    if size < MIN_SIZE:
        raise DataError(f"size must be at least {MIN_SIZE} px; got {size}")
    out = Path(out)
    plan = _plan(tiles)
    counts: dict[tuple[str, str], int] = {}
    pixels = {scene: np.zeros(MAX_VALUE + 1, np.int64) for scene in SYNTH_SCENES}
    iterator = plan
    if progress:
        from tqdm import tqdm

        iterator = tqdm(plan, desc="synthesising tiles", unit="tile")
    with staged_dir(out) as tmp:
        for split, scene, index, tile_id in iterator:
            image, mask = synth_tile(tile_rng(seed, split, scene, index), size, scene)
            write_tile(tmp, split, scene, tile_id, image, mask)
            counts[(split, scene)] = counts.get((split, scene), 0) + 1
            pixels[scene] += np.bincount(mask.ravel(), minlength=MAX_VALUE + 1)
        record = {
            "generator": "synthetic-loveda",
            "version": GENERATOR_VERSION,
            "tiles": tiles,
            "size": size,
            "seed": seed,
        }
        (tmp / "synth.json").write_text(json.dumps(record, indent=2) + "\n")
    log.info("wrote %d synthetic tiles of %d px to %s (seed %d)", len(plan), size, out, seed)
    fractions = {scene: fractions_from_counts(c) for scene, c in pixels.items()}
    return SynthSummary(out, size, seed, counts, fractions)
