"""LoveDA data for mmseg: release-layout folders turned into mmseg datasets and pipelines.

Each source is a LoveDA release-layout folder; it is exported once into mmseg's layout
(``img_dir``/``ann_dir``) under the work dir, keyed by a fingerprint of its files so a
changed folder is exported afresh. mmseg's LoveDADataset then reads it with
``reduce_zero_label=True`` (raw 1..7 -> 0..6, no-data 0 -> 255, ignored).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from pipeline_lib.choices import MIX_BY
from pipeline_lib.data.loveda import export_mmseg, labelled_tiles, list_tiles
from pipeline_lib.errors import DataError
from pipeline_lib.validate.mosaic import sample_mosaic

log = logging.getLogger(__name__)

DATASET_TYPE = "LoveDADataset"
TRAIN, VAL = "Train", "Val"


def split_fingerprint(root: Path, split: str) -> str:
    """Short hash of a split's file names, sizes and mtimes: changes when the data does."""
    digest = hashlib.sha256(str(Path(root).resolve()).encode())
    for tile in list_tiles(root, [split]):
        for path in (tile.image_path, tile.mask_path):
            if path is not None:
                stat = path.stat()
                digest.update(
                    f"{path.relative_to(root)}:{stat.st_size}:{stat.st_mtime_ns}".encode()
                )
    return digest.hexdigest()[:16]


def labelled_count(root: Path, split: str) -> int:
    return len(labelled_tiles(root, [split]))


def prepare_split(root: Path, split: str, cache_dir: Path) -> Path:
    """Export ``split`` of a release-layout folder to mmseg layout once; returns its data_root."""
    root = Path(root)
    if labelled_count(root, split) == 0:
        raise DataError(
            f"{root}: no labelled tiles in {split}; expected {split}/{{Urban,Rural}}/"
            "{images_png,masks_png}/<id>.png (LoveDA release layout)"
        )
    out = Path(cache_dir) / f"{root.name}-{split.lower()}-{split_fingerprint(root, split)}"
    if not out.is_dir():
        log.info("exporting %s/%s to mmseg layout at %s", root, split, out)
        export_mmseg(root, out, splits={split: split.lower()})
    return out


def _resize(crop_size: int, scale_factors: Sequence[float] | None) -> dict[str, Any]:
    if scale_factors is None:
        return dict(
            type="RandomResize",
            scale=(crop_size * 4, crop_size),
            ratio_range=(0.5, 2.0),
            keep_ratio=True,
        )
    # Rescale by a factor, not to a size: tiles and generated samples of different sizes
    # but one ground sampling distance keep that distance relative to each other.
    choices = [[dict(type="Resize", scale_factor=f, keep_ratio=True)] for f in scale_factors]
    return dict(type="RandomChoice", transforms=choices)


def _loads() -> list[dict[str, Any]]:
    return [dict(type="LoadImageFromFile"), dict(type="LoadAnnotations", reduce_zero_label=True)]


LOAD_STEPS = len(_loads())  # a mosaic wraps the transforms after them


def train_pipeline(
    crop_size: int, scale_factors: Sequence[float] | None = None, rot_flip: bool = False
) -> list[dict[str, Any]]:
    """mmseg's LoveDA train pipeline, scaled from its 512 crop to ``crop_size``.

    mmseg resizes every tile to a size tied to the crop (LoveDA's 1024 px tiles to
    256-1024); with ``scale_factors`` each sample is rescaled by one of those factors
    instead and evaluated at its native scale. ``rot_flip`` turns each crop by a random
    multiple of 90 degrees and mirrors it: the eight views of a tile seen from above.
    """
    crop = (crop_size, crop_size)
    # rotate_prob 0: mmseg's free-angle rotation would interpolate the label map. The turn
    # always mirrors; the random flip after it undoes that half the time (pure rotations).
    turns = [dict(type="RandomRotFlip", rotate_prob=0.0, flip_prob=1.0)] if rot_flip else []
    return [
        *_loads(),
        _resize(crop_size, scale_factors),
        dict(type="RandomCrop", crop_size=crop, cat_max_ratio=0.75),
        *turns,
        dict(type="RandomFlip", prob=0.5),
        dict(type="PhotoMetricDistortion"),
        dict(type="PackSegInputs"),
    ]


def test_pipeline(
    crop_size: int, tta: bool = False, native_scale: bool = False
) -> list[dict[str, Any]]:
    """Evaluation at the training scale (LoveDA's 1024 -> 2x the 512 crop, or the tile's
    own scale with ``native_scale``), optionally with TTA.

    TTA is mmseg's: multi-scale x horizontal flip, merged by SegTTAModel.
    """
    scale = (crop_size * 2, crop_size * 2)
    if not tta:
        resize = [] if native_scale else [dict(type="Resize", scale=scale, keep_ratio=True)]
        return [
            dict(type="LoadImageFromFile"),
            *resize,
            dict(type="LoadAnnotations", reduce_zero_label=True),
            dict(type="PackSegInputs"),
        ]
    ratios = [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]
    return [
        dict(type="LoadImageFromFile"),
        dict(
            type="TestTimeAug",
            transforms=[
                [dict(type="Resize", scale=scale, keep_ratio=True)],
                [dict(type="Resize", scale_factor=r, keep_ratio=True) for r in ratios],
                [
                    dict(type="RandomFlip", prob=0.0, direction="horizontal"),
                    dict(type="RandomFlip", prob=1.0, direction="horizontal"),
                ],
                # mmseg's own LoveDA tta_pipeline forgets reduce_zero_label: no-data would count.
                [dict(type="LoadAnnotations", reduce_zero_label=True)],
                [dict(type="PackSegInputs")],
            ],
        ),
    ]


def dataset_config(data_root: Path, split: str, pipeline: list[dict[str, Any]]) -> dict[str, Any]:
    sub = split.lower()
    return dict(
        type=DATASET_TYPE,
        data_root=str(data_root),
        reduce_zero_label=True,
        data_prefix=dict(img_path=f"img_dir/{sub}", seg_map_path=f"ann_dir/{sub}"),
        pipeline=pipeline,
    )


def pixel_repeats(roots: Sequence[Path]) -> list[int]:
    """How many times each mmseg-layout root's Train tiles repeat in a mixed set so that
    crops come from each root in proportion to its pixels, not to its tile count."""
    areas = [_mean_tile_area(root) for root in roots]
    smallest = min(areas)
    return [max(1, round(area / smallest)) for area in areas]


def _mean_tile_area(root: Path) -> float:
    """Mean pixel count of an mmseg-layout root's Train images (read from their headers)."""
    files = sorted((Path(root) / "img_dir" / TRAIN.lower()).glob("*.png"))
    if not files:
        raise DataError(f"{root}: no Train images under img_dir/{TRAIN.lower()}")
    sizes = []
    for path in files:
        with Image.open(path) as image:  # reads the header only
            sizes.append(image.width * image.height)
    return sum(sizes) / len(sizes)


def _mosaic_side(root: Path, crop_size: int) -> int | None:
    """The tile side a mosaic of ``root``'s tiles is made of, or None where they are at
    least twice the crop (a crop then already falls at many offsets)."""
    side = round(_mean_tile_area(root) ** 0.5)
    return side if side < 2 * crop_size else None


def mosaic_applies(roots: Sequence[Path], crop_size: int) -> bool:
    """Whether ``validation.mosaic`` changes training on these mmseg-layout roots."""
    return any(_mosaic_side(root, crop_size) is not None for root in roots)


def _train_dataset(
    root: Path, pipeline: list[dict[str, Any]], crop_size: int, mosaic: bool
) -> dict[str, Any]:
    """One root's Train split; with ``mosaic``, a root whose tiles are under twice the crop
    is drawn as 2x2 mosaics of its tiles (mmseg's MultiImageMixDataset around the loads)."""
    side = _mosaic_side(root, crop_size) if mosaic else None
    if side is None:
        return dataset_config(root, TRAIN, pipeline)
    loads, rest = pipeline[:LOAD_STEPS], pipeline[LOAD_STEPS:]
    return dict(
        type="MultiImageMixDataset",
        dataset=dataset_config(root, TRAIN, loads),
        pipeline=[dict(type=sample_mosaic(), img_scale=(side, side)), *rest],
    )


def train_dataloader(
    roots: list[Path],
    crop_size: int,
    batch_size: int,
    scale_factors: Sequence[float] | None = None,
    mix_by: str = MIX_BY[0],
    rot_flip: bool = False,
    mosaic: bool = False,
) -> dict[str, Any]:
    """Infinite shuffled loader over the Train splits of ``roots`` (concatenated).

    The sampler draws tiles uniformly; with ``mix_by="pixels"`` the roots with larger
    tiles repeat (mmengine's RepeatDataset) until each tile's share of the draws matches
    its share of the pixels. ``mosaic`` draws a root of small tiles as 2x2 mosaics; a
    mosaic still yields one crop, so the repeats stay those of the tiles' own sizes.
    """
    pipeline = train_pipeline(crop_size, scale_factors, rot_flip)
    datasets = [_train_dataset(r, pipeline, crop_size, mosaic) for r in roots]
    if len(datasets) > 1 and mix_by == "pixels":
        datasets = [
            d if times == 1 else dict(type="RepeatDataset", dataset=d, times=times)
            for d, times in zip(datasets, pixel_repeats(roots), strict=True)
        ]
    dataset = datasets[0] if len(datasets) == 1 else dict(type="ConcatDataset", datasets=datasets)
    # Worker processes would fight the 2 shared CPU cores; the pipeline is light.
    return dict(
        batch_size=batch_size,
        num_workers=0,
        persistent_workers=False,
        sampler=dict(type="InfiniteSampler", shuffle=True),
        dataset=dataset,
    )


def eval_dataloader(
    root: Path, crop_size: int, tta: bool = False, native_scale: bool = False
) -> dict[str, Any]:
    return dict(
        batch_size=1,
        num_workers=0,
        persistent_workers=False,
        sampler=dict(type="DefaultSampler", shuffle=False),
        dataset=dataset_config(root, VAL, test_pipeline(crop_size, tta, native_scale)),
    )
