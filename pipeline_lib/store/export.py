"""Export a store's committed samples as LoveDA release layout, mmseg layout or GeoTIFFs.

Tile ids are the samples' array rows (numeric, unique in the store, as LoveDA's are).
LoveDA layout: everything goes to ``<split>/<scene>/`` (default ``Train``); a sample whose
style is named ``urban`` or ``rural`` goes to that scene, every other to ``default_scene``.
A ``manifest.parquet`` beside the tiles keeps each tile's provenance.
Every export is staged in a temp folder and appears at ``out`` only when complete.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow.parquet as pq
import rasterio
from rasterio.transform import from_origin

from pipeline_lib.config import GeoConfig
from pipeline_lib.data.loveda import SCENES, staged_dir, write_png, write_tile
from pipeline_lib.errors import DataError, StoreError
from pipeline_lib.store.store import SampleStore

log = logging.getLogger(__name__)

ExportFormat = Literal["loveda", "mmseg", "geotiff"]
FORMATS: tuple[str, ...] = ("loveda", "mmseg", "geotiff")


def export_store(
    store: str | Path,
    out: str | Path,
    format: ExportFormat = "loveda",
    geo: GeoConfig | None = None,
    split: str = "Train",
    default_scene: str = "Rural",
    columns: int = 32,
    limit: int | None = None,
) -> dict[str, int]:
    """Write every committed sample to ``out``; returns tiles written per folder.

    GeoTIFF tiles are laid on a grid ``columns`` tiles wide starting at the config's
    origin (top-left), each shifted by its row in the store, at ``geo.pixel_size``.
    ``limit`` exports only the first that many committed samples (in store row order).
    """
    if format not in FORMATS:
        raise DataError(f"unknown export format {format!r}; choose one of {', '.join(FORMATS)}")
    if default_scene not in SCENES:
        raise DataError(f"default_scene {default_scene!r} must be one of {', '.join(SCENES)}")
    sample_store = SampleStore(store)
    table = sample_store.manifest()
    if limit is not None:
        table = table.slice(0, limit)
    if table.num_rows == 0:
        raise StoreError(f"{sample_store.path}: no committed samples to export")
    counts: Counter[str] = Counter()
    rows = table.to_pylist()
    with staged_dir(out) as tmp:
        for start in range(0, len(rows), sample_store.shard_size):
            batch = rows[start : start + sample_store.shard_size]
            images, labels = sample_store.read_rows([r["index"] for r in batch])
            for row, image, label in zip(batch, images, labels, strict=True):
                tile_id = str(row["index"])
                if format == "loveda":
                    scene = _scene(row["style"], default_scene)
                    write_tile(tmp, split, scene, tile_id, image, label)
                    counts[f"{split}/{scene}"] += 1
                elif format == "mmseg":
                    for kind, array in (("img_dir", image), ("ann_dir", label)):
                        path = tmp / kind / split.lower() / f"{tile_id}.png"
                        path.parent.mkdir(parents=True, exist_ok=True)
                        write_png(path, array)
                    counts[split.lower()] += 1
                else:
                    _write_geotiffs(
                        tmp, tile_id, row["index"], image, label, geo or GeoConfig(), columns
                    )
                    counts["geotiff"] += 1
        pq.write_table(table, tmp / "manifest.parquet")
    log.info("exported %d samples of %s to %s (%s)", len(rows), sample_store.path, out, format)
    return dict(counts)


def _scene(style: str | None, default_scene: str) -> str:
    by_name = {s.lower(): s for s in SCENES}
    return by_name.get((style or "").lower(), default_scene)


def tile_transform(index: int, height: int, width: int, geo: GeoConfig, columns: int):
    """The affine transform of the tile at store row ``index`` on the export grid."""
    col, line = index % columns, index // columns
    x = geo.origin_x + col * width * geo.pixel_size
    y = geo.origin_y - line * height * geo.pixel_size
    return from_origin(x, y, geo.pixel_size, geo.pixel_size)


def _write_geotiffs(
    root: Path,
    tile_id: str,
    index: int,
    image: np.ndarray,
    label: np.ndarray,
    geo: GeoConfig,
    columns: int,
) -> None:
    height, width = label.shape
    transform = tile_transform(index, height, width, geo, max(1, columns))
    for kind, bands in (("images", image.transpose(2, 0, 1)), ("labels", label[None])):
        path = root / kind / f"{tile_id}.tif"
        path.parent.mkdir(parents=True, exist_ok=True)
        with rasterio.open(
            path,
            "w",
            driver="GTiff",
            width=width,
            height=height,
            count=bands.shape[0],
            dtype="uint8",
            crs=geo.crs,
            transform=transform,
            compress="deflate",
        ) as dst:
            dst.write(bands)
