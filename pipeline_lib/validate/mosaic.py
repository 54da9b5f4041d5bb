"""Small training samples drawn as 2x2 mosaics, so a segmenter's crops straddle them.

A crop of a 64 px sample at crop 64 is the sample itself, at one offset every time, and
scaled below 1 it is padded with ignored pixels. Four samples side by side give a crop at
any offset and a canvas larger than the crop at every scale, as a large tile does.
"""

from __future__ import annotations

import random
from functools import cache

from pipeline_lib.data.classes import IGNORE_INDEX
from pipeline_lib.validate.mmcv_compat import ensure_mmseg


@cache
def sample_mosaic() -> str:
    """Register (once) and name the transform: mmseg's RandomMosaic, always applied, the
    four samples meeting at the canvas centre (no padding)."""
    ensure_mmseg()
    from mmseg.datasets.transforms import RandomMosaic
    from mmseg.registry import TRANSFORMS

    class SampleMosaic(RandomMosaic):
        def __init__(self, img_scale: tuple[int, int]) -> None:
            super().__init__(
                prob=1.0,
                img_scale=tuple(img_scale),
                center_ratio_range=(1.0, 1.0),
                seg_pad_val=IGNORE_INDEX,
            )

        def get_indices(self, dataset) -> list[int]:
            # mmseg's draws from 0..len(dataset) inclusive: one past the last sample.
            return [random.randrange(len(dataset)) for _ in range(3)]

    TRANSFORMS.register_module(module=SampleMosaic, force=True)
    return SampleMosaic.__name__
