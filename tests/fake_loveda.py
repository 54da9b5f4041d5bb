"""Small, deterministic LoveDA release-layout trees for tests, and each kind of bad file.

``write_fake_loveda`` makes a valid tree; every ``make_*`` helper damages one tree in one
way and returns the path a good error message must name.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from pipeline_lib.data.loveda import IMAGES, MASKS, tile_paths, write_png, write_tile

SPLITS = ("Train", "Val")
SCENES = ("Urban", "Rural")


def write_fake_loveda(root: Path, tiles_per_scene: int = 2, size: int = 32, seed: int = 0) -> Path:
    """A valid tree: Train and Val, Urban and Rural, random RGB images and masks 0..7."""
    rng = np.random.default_rng(seed)
    tile_id = 0
    for split in SPLITS:
        for scene in SCENES:
            for _ in range(tiles_per_scene):
                image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                mask = rng.integers(0, 8, (size, size), dtype=np.uint8)
                write_tile(root, split, scene, str(tile_id), image, mask)
                tile_id += 1
    return root


def first_tile(root: Path, split: str = "Train", scene: str = "Urban") -> tuple[Path, Path]:
    """(image path, mask path) of the lowest-numbered tile of a split and scene."""
    images = sorted((root / split / scene / IMAGES).glob("*.png"), key=lambda p: int(p.stem))
    return tile_paths(root, split, scene, images[0].stem)


def make_missing_folder(root: Path) -> Path:
    """Delete Train/Urban/masks_png."""
    folder = root / "Train" / "Urban" / MASKS
    shutil.rmtree(folder)
    return folder


def make_image_without_mask(root: Path) -> Path:
    """Delete one mask, leaving its image alone."""
    image, mask = first_tile(root)
    mask.unlink()
    return image


def make_mask_without_image(root: Path) -> Path:
    """Delete one image, leaving its mask alone."""
    image, mask = first_tile(root)
    image.unlink()
    return mask


def make_size_mismatch(root: Path) -> Path:
    """Replace one mask by a mask of another size."""
    _, mask = first_tile(root)
    write_png(mask, np.ones((16, 24), np.uint8))
    return mask


def make_single_band_image(root: Path) -> Path:
    """Replace one image by a grey (single-band) image."""
    image, _ = first_tile(root)
    write_png(image, np.full((32, 32), 128, np.uint8))
    return image


def make_rgba_image(root: Path) -> Path:
    """Replace one image by a four-band RGBA image."""
    image, _ = first_tile(root)
    write_png(image, np.full((32, 32, 4), 128, np.uint8))
    return image


def make_bad_mask_value(root: Path, value: int = 9) -> Path:
    """Put one pixel of ``value`` (outside LoveDA's 0..7) into a mask."""
    _, mask = first_tile(root)
    data = np.ones((32, 32), np.uint8)
    data[3, 5] = value
    write_png(mask, data)
    return mask


def make_truncated_png(root: Path) -> Path:
    """Cut the second half off one image file, as an interrupted copy would."""
    image, _ = first_tile(root)
    data = image.read_bytes()
    image.write_bytes(data[: len(data) // 2])
    return image


def make_garbage_file(root: Path) -> Path:
    """Overwrite one mask with bytes that are no image at all."""
    _, mask = first_tile(root)
    mask.write_bytes(b"this is not a PNG file\x00\x01\x02" * 8)
    return mask


def make_empty_split(root: Path) -> Path:
    """Empty Val: its scene folders stay, with no tiles in them."""
    split = root / "Val"
    for scene in SCENES:
        for kind in (IMAGES, MASKS):
            folder = split / scene / kind
            shutil.rmtree(folder)
            folder.mkdir()
    return split


BAD_KINDS = {
    "missing folder": make_missing_folder,
    "image without mask": make_image_without_mask,
    "mask without image": make_mask_without_image,
    "size mismatch": make_size_mismatch,
    "single-band image": make_single_band_image,
    "RGBA image": make_rgba_image,
    "mask value 9": make_bad_mask_value,
    "truncated PNG": make_truncated_png,
    "garbage bytes": make_garbage_file,
    "empty split": make_empty_split,
}


WATER, FOREST = 4, 6
TWO_CLASS_COLOURS = {WATER: (30, 60, 200), FOREST: (40, 170, 40)}


def two_class_mask(rng: np.random.Generator, size: int) -> np.ndarray:
    """Water on one side of a random straight line, forest on the other."""
    angle, offset = rng.uniform(0, 2 * np.pi), rng.uniform(-0.3, 0.3) * size
    y, x = np.mgrid[:size, :size] - size / 2
    side = np.cos(angle) * x + np.sin(angle) * y > offset
    return np.where(side, WATER, FOREST).astype(np.uint8)


def two_class_image(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each class in its own colour, with a little noise: the image follows the label."""
    image = np.zeros((*mask.shape, 3), np.float64)
    for value, colour in TWO_CLASS_COLOURS.items():
        image[mask == value] = colour
    return np.clip(image + rng.normal(0, 8, image.shape), 0, 255).astype(np.uint8)


def write_two_class_loveda(root: Path, tiles: int = 8, size: int = 32, seed: int = 0) -> Path:
    """A toy tree in which an image model that ignores its label cannot beat chance."""
    rng = np.random.default_rng(seed)
    for split in SPLITS:
        for index in range(tiles):
            mask = two_class_mask(rng, size)
            write_tile(root, split, "Rural", str(index), two_class_image(mask, rng), mask)
    return root
