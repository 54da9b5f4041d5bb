"""Label clean-up: snap a generated colour label to the palette, score it, keep or reject."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from pipeline_lib.config import QAConfig
from pipeline_lib.data.classes import PALETTE
from pipeline_lib.data.palette import snap_to_palette

OFF_PALETTE = "off_palette"
SMALL_FRAGMENTS = "small_fragments"


@dataclass(frozen=True)
class LabelQA:
    """QA scores of one snapped label; ``reason`` is None when the label is kept."""

    off_palette_share: float
    small_fragment_share: float
    min_fragment_pixels: int
    reason: str | None

    @property
    def kept(self) -> bool:
        return self.reason is None


def fragment_stats(mask: np.ndarray, min_pixels: int) -> tuple[float, int]:
    """Share of pixels in 4-connected same-class fragments smaller than ``min_pixels``,
    and the smallest fragment's size."""
    small = 0
    smallest = mask.size
    for value in np.unique(mask):
        labelled, count = ndimage.label(mask == value)
        sizes = np.bincount(labelled.ravel())[1:]
        small += int(sizes[sizes < min_pixels].sum())
        smallest = min(smallest, int(sizes.min()))
    return small / mask.size, smallest


def score_label(
    rgb: np.ndarray, qa: QAConfig, colours: np.ndarray = PALETTE
) -> tuple[np.ndarray, LabelQA]:
    """Snap ``rgb`` (H, W, 3 uint8) to raw LoveDA values and judge it against ``qa``;
    ``colours`` are the ones the label generator was trained to draw."""
    mask, off = snap_to_palette(rgb, qa.palette_tolerance, colours, qa.fill_off_code)
    small, smallest = fragment_stats(mask, qa.min_fragment_pixels)
    reason = None
    if off > qa.max_off_palette:
        reason = OFF_PALETTE
    elif small > qa.max_small_fragment_share:
        reason = SMALL_FRAGMENTS
    return mask, LabelQA(float(off), float(small), smallest, reason)
