"""LoveDA on disk: the official release layout, its checks, and mmsegmentation's layout.

Release layout: ``{Train,Val,Test}/{Urban,Rural}/{images_png,masks_png}/<id>.png``
(Test has no masks). mmsegmentation layout: ``img_dir/{train,val}``, ``ann_dir/{train,val}``
with the raw mask values kept (its LoveDADataset applies ``reduce_zero_label`` itself).
All pixel I/O goes through rasterio.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from collections import defaultdict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

from pipeline_lib.data.classes import MAX_VALUE, fractions_from_counts
from pipeline_lib.errors import DataError

SPLITS = ("Train", "Val", "Test")
SCENES = ("Urban", "Rural")
IMAGES, MASKS = "images_png", "masks_png"
MMSEG_SPLITS = {"Train": "train", "Val": "val"}


@dataclass(frozen=True)
class Tile:
    split: str
    scene: str
    tile_id: str
    image_path: Path
    mask_path: Path | None


@contextmanager
def _quiet_gdal() -> Iterator[None]:
    # PNGs carry no georeferencing; PAM would drop .aux.xml files beside them.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.Env(GDAL_PAM_ENABLED="NO", CPL_LOG="/dev/null"):
            yield


def read_image(path: str | Path) -> np.ndarray:
    """Read an RGB image as (H, W, 3) uint8; anything else is a DataError naming the file."""
    array = _read(path)
    if array.shape[0] != 3 or array.dtype != np.uint8:
        raise DataError(
            f"{path}: image must be 8-bit RGB, found {array.shape[0]} band(s) {array.dtype}"
        )
    return np.ascontiguousarray(array.transpose(1, 2, 0))


def read_mask(path: str | Path) -> np.ndarray:
    """Read a single-band 8-bit mask as (H, W) uint8 with raw LoveDA values."""
    array = _read(path)
    if array.shape[0] != 1 or array.dtype != np.uint8:
        raise DataError(
            f"{path}: mask must be single-band 8-bit, found {array.shape[0]} band(s) {array.dtype}"
        )
    return array[0]


# GDAL's PNG driver returns garbage pixels for a truncated file instead of failing,
# so a PNG must end with its IEND chunk to count as complete.
_PNG_END = b"IEND\xaeB`\x82"


def _read(path: str | Path) -> np.ndarray:
    if Path(path).suffix.lower() == ".png" and Path(path).is_file():
        with open(path, "rb") as f:
            f.seek(max(0, Path(path).stat().st_size - len(_PNG_END)))
            if f.read() != _PNG_END:
                raise DataError(f"{path}: unreadable or truncated (no PNG end chunk)")
    try:
        with _quiet_gdal(), rasterio.open(path) as src:
            return src.read()
    except RasterioIOError as error:
        raise DataError(f"{path}: unreadable or truncated ({error})") from None


def write_png(path: str | Path, array: np.ndarray) -> None:
    """Write (H, W) or (H, W, 3) uint8 as PNG, atomically (temp file, then rename)."""
    array = np.asarray(array, dtype=np.uint8)
    bands = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial")
    with (
        _quiet_gdal(),
        rasterio.open(
            tmp,
            "w",
            driver="PNG",
            width=bands.shape[2],
            height=bands.shape[1],
            count=bands.shape[0],
            dtype="uint8",
        ) as dst,
    ):
        dst.write(bands)
    os.replace(tmp, path)


def tile_paths(root: Path, split: str, scene: str, tile_id: str) -> tuple[Path, Path]:
    base = Path(root) / split / scene
    return base / IMAGES / f"{tile_id}.png", base / MASKS / f"{tile_id}.png"


def write_tile(
    root: str | Path,
    split: str,
    scene: str,
    tile_id: str,
    image: np.ndarray,
    mask: np.ndarray | None,
) -> None:
    """Write one tile into a release-layout tree, creating folders as needed."""
    image_path, mask_path = tile_paths(Path(root), split, scene, tile_id)
    image_path.parent.mkdir(parents=True, exist_ok=True)
    write_png(image_path, image)
    if mask is not None:
        mask_path.parent.mkdir(parents=True, exist_ok=True)
        write_png(mask_path, mask)


def _sort_key(stem: str) -> tuple[int, int | str]:
    return (0, int(stem)) if stem.isdigit() else (1, stem)


def list_tiles(root: str | Path, splits: Iterable[str] = SPLITS) -> list[Tile]:
    """Tiles that have an image, in split, scene, numeric id order (no checks)."""
    root = Path(root)
    tiles = []
    for split in splits:
        for scene in SCENES:
            image_dir = root / split / scene / IMAGES
            if not image_dir.is_dir():
                continue
            for image_path in sorted(image_dir.glob("*.png"), key=lambda p: _sort_key(p.stem)):
                mask_path = root / split / scene / MASKS / image_path.name
                tiles.append(
                    Tile(
                        split,
                        scene,
                        image_path.stem,
                        image_path,
                        mask_path if mask_path.is_file() else None,
                    )
                )
    return tiles


def labelled_tiles(root: str | Path, splits: Iterable[str] = SPLITS) -> list[Tile]:
    """The tiles of :func:`list_tiles` that have a mask."""
    return [t for t in list_tiles(root, splits) if t.mask_path is not None]


@dataclass
class CheckReport:
    root: Path
    tiles: dict[tuple[str, str], int] = field(default_factory=dict)
    pixel_counts: np.ndarray = field(default_factory=lambda: np.zeros(MAX_VALUE + 1, np.int64))

    @property
    def total_tiles(self) -> int:
        return sum(self.tiles.values())

    def class_fractions(self) -> dict[str, float]:
        return fractions_from_counts(self.pixel_counts)

    def no_data_fraction(self) -> float:
        total = self.pixel_counts.sum()
        return float(self.pixel_counts[0] / total) if total else 0.0


def check_layout(root: str | Path) -> list[str]:
    """The split folders of ``root``, in a second and without reading a tile; raise
    DataError when it is no release-layout folder at all (what ``check_dataset`` then
    reads tile by tile)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: data set folder does not exist")
    splits = [s for s in SPLITS if (root / s).is_dir()]
    if not splits:
        raise DataError(f"{root}: no split folder found; expected some of {', '.join(SPLITS)}")
    return splits


def check_dataset(root: str | Path, progress: bool = False) -> CheckReport:
    """Check a release-layout folder completely; raise DataError listing every bad path."""
    root = Path(root)
    splits = check_layout(root)
    problems: list[str] = []
    report = CheckReport(root)
    work: list[tuple[Path, Path | None, str, str]] = []
    for split in splits:
        split_tiles = 0
        scenes = [s for s in SCENES if (root / split / s).is_dir()]
        if not scenes:
            problems.append(
                f"{root / split}: missing folder: no {' or '.join(SCENES)} scene inside"
            )
        for scene in scenes:
            base = root / split / scene
            image_dir, mask_dir = base / IMAGES, base / MASKS
            needs_masks = split != "Test"
            missing = [
                d
                for d in (image_dir, mask_dir)
                if not d.is_dir() and (d is image_dir or needs_masks)
            ]
            for d in missing:
                problems.append(f"{d}: missing folder")
            if missing:
                continue
            images = {p.stem: p for p in image_dir.glob("*.png")}
            masks = {p.stem: p for p in mask_dir.glob("*.png")} if mask_dir.is_dir() else {}
            for stem in sorted(set(images) - set(masks) if needs_masks else (), key=_sort_key):
                problems.append(
                    f"{images[stem]}: image without mask (expected {mask_dir / (stem + '.png')})"
                )
            for stem in sorted(set(masks) - set(images), key=_sort_key):
                problems.append(
                    f"{masks[stem]}: mask without image (expected {image_dir / (stem + '.png')})"
                )
            both = (
                sorted(set(images) & set(masks), key=_sort_key)
                if needs_masks
                else sorted(images, key=_sort_key)
            )
            for stem in both:
                work.append((images[stem], masks.get(stem), split, scene))
            report.tiles[(split, scene)] = len(both)
            split_tiles += len(both)
        if scenes and split_tiles == 0:
            problems.append(f"{root / split}: empty split: no image/mask pairs")

    iterator: Iterable = work
    if progress:
        from tqdm import tqdm

        iterator = tqdm(work, desc="checking tiles", unit="tile")
    for image_path, mask_path, _, _ in iterator:
        problems.extend(_check_pair(image_path, mask_path, report))
    if problems:
        raise DataError(f"{root}: {len(problems)} problem(s) found", problems)
    return report


def _check_pair(image_path: Path, mask_path: Path | None, report: CheckReport) -> list[str]:
    try:
        image = read_image(image_path)
    except DataError as error:
        return [str(error)]
    if mask_path is None:
        return []
    try:
        mask = read_mask(mask_path)
    except DataError as error:
        return [str(error)]
    if mask.shape != image.shape[:2]:
        return [
            f"{mask_path}: size {mask.shape[1]}x{mask.shape[0]} differs from its image "
            f"{image.shape[1]}x{image.shape[0]}"
        ]
    top = int(mask.max())
    if top > MAX_VALUE:
        bad = sorted(int(v) for v in np.unique(mask) if v > MAX_VALUE)
        return [f"{mask_path}: holds value(s) {bad}; LoveDA masks use 0..{MAX_VALUE}"]
    report.pixel_counts += np.bincount(mask.ravel(), minlength=MAX_VALUE + 1)
    return []


@contextmanager
def staged_dir(out: str | Path) -> Iterator[Path]:
    """Yield a temp folder beside ``out`` that becomes ``out`` only if the block succeeds.

    A crash or an error leaves nothing at ``out``, never a half-written data set.
    """
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise DataError(f"{out}: already exists and is not empty; choose a new folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        yield tmp
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def export_mmseg(
    root: str | Path, out: str | Path, splits: dict[str, str] = MMSEG_SPLITS
) -> dict[str, int]:
    """Copy a release-layout data set into mmsegmentation's layout; returns tiles per split.

    Urban and Rural are merged; file names become ``<scene>_<id>.png`` so ids stay unique.
    """
    counts: dict[str, int] = defaultdict(int)
    tiles = labelled_tiles(root, splits)
    if not tiles:
        raise DataError(f"{root}: no labelled tiles in {', '.join(splits)}")
    with staged_dir(out) as tmp:
        for tile in tiles:
            name = f"{tile.scene.lower()}_{tile.tile_id}.png"
            for kind, src in (("img_dir", tile.image_path), ("ann_dir", tile.mask_path)):
                dst = tmp / kind / splits[tile.split] / name
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, dst)
            counts[splits[tile.split]] += 1
    return dict(counts)


def fingerprint(root: str | Path) -> str:
    """A cheap identity of a data set's files (names and sizes) for cache keys."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted(Path(root).rglob("*.png")):
        digest.update(f"{path.relative_to(root)}:{path.stat().st_size}\n".encode())
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class SplitStats:
    """Labelled tiles, pixels and class fractions of one split of a LoveDA-layout folder."""

    tiles: int
    pixels: int
    fractions: dict[str, float]


def split_stats(root: Path, split: str) -> SplitStats:
    counts = np.zeros(MAX_VALUE + 1, np.int64)
    tiles = labelled_tiles(root, [split])
    for tile in tiles:
        counts += np.bincount(read_mask(tile.mask_path).ravel(), minlength=MAX_VALUE + 1)
    return SplitStats(len(tiles), int(counts[1:].sum()), fractions_from_counts(counts))
