"""validation.slide: evaluation tiles predicted in crop-sized windows."""

from __future__ import annotations

import numpy as np
import torch

from pipeline_lib.config import ValidationConfig
from pipeline_lib.validate.experiment import training_key


def test_slide_is_off_by_default_and_rescoring_in_windows_reuses_the_trained_row():
    assert "slide" not in ValidationConfig().model_dump(mode="json")
    assert ValidationConfig(slide=True).model_dump(mode="json")["slide"] is True
    # Only prediction changes: the row's folder (and its checkpoint) stays the same.
    assert training_key([], ValidationConfig(slide=True)) == training_key([], ValidationConfig())


def _segmenter(crop: int, slide: bool):
    from mmengine.config import ConfigDict
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS

    from pipeline_lib.validate.mask2former_configs import model_config
    from pipeline_lib.validate.mmcv_compat import ensure_mmseg

    ensure_mmseg()
    init_default_scope("mmseg")
    return MODELS.build(
        ConfigDict(model_config(ValidationConfig(crop_size=crop, slide=slide)))
    ).eval()


def test_windows_give_tile_sized_masks_and_one_window_equals_the_whole_tile():
    from pipeline_lib.validate.evaluate import predict_masks

    torch.manual_seed(0)
    sliding = _segmenter(32, slide=True)
    whole = _segmenter(32, slide=False)
    whole.load_state_dict(sliding.state_dict())
    cfg = ValidationConfig(crop_size=32, scale_factors=[1.0])
    rng = np.random.default_rng(0)

    # mmseg's own head sizes each window's masks to the whole tile and fails on this.
    tiles = rng.integers(0, 256, (2, 80, 72, 3), dtype=np.uint8)
    masks = predict_masks(sliding, tiles, cfg)
    assert masks.shape == (2, 80, 72)
    assert set(np.unique(masks)) <= set(range(1, 8))

    # A tile the size of the window is one window: the same prediction as whole.
    tile = rng.integers(0, 256, (1, 32, 32, 3), dtype=np.uint8)
    assert np.array_equal(predict_masks(sliding, tile, cfg), predict_masks(whole, tile, cfg))
