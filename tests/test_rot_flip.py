"""validation.rot_flip: training crops turned by multiples of 90 degrees and mirrored."""

from __future__ import annotations

import numpy as np

from pipeline_lib.config import ValidationConfig
from pipeline_lib.validate import mmseg_data


def _turns(pipeline: list[dict]) -> list[dict]:
    return [step for step in pipeline if step["type"] == "RandomRotFlip"]


def test_rot_flip_is_off_by_default_and_leaves_the_dump_as_before():
    assert "rot_flip" not in ValidationConfig().model_dump(mode="json")
    assert ValidationConfig(rot_flip=True).model_dump(mode="json")["rot_flip"] is True
    assert not _turns(mmseg_data.train_pipeline(64))
    assert len(_turns(mmseg_data.train_pipeline(64, rot_flip=True))) == 1


def test_rot_flip_names_its_own_segmenter_folder_and_off_keeps_the_old_one():
    from pipeline_lib.validate.experiment import training_key

    # The key of a default config as computed before rot_flip existed: cached rows resume.
    assert training_key([], ValidationConfig()) == "9a97a35647"
    assert training_key([], ValidationConfig(rot_flip=True)) != "9a97a35647"


def test_turned_crops_keep_exact_labels_aligned_with_their_image():
    from mmcv.transforms import Compose
    from mmengine.registry import init_default_scope

    from pipeline_lib.validate.mmcv_compat import ensure_mmseg

    ensure_mmseg()
    init_default_scope("mmseg")
    pipeline = mmseg_data.train_pipeline(32, rot_flip=True)
    # The turn always mirrors once; the pipeline's own random flip after it undoes that half
    # the time, which gives the pure rotations.
    turn = Compose([s for s in pipeline if s["type"] in ("RandomRotFlip", "RandomFlip")])
    rng = np.random.default_rng(0)
    label = rng.integers(0, 7, (32, 32)).astype(np.uint8)
    # The image encodes its label and its own position, so a turn that moved one but not
    # the other, or interpolated the label, shows.
    image = np.stack([label * 30, np.arange(32 * 32).reshape(32, 32) % 251, label], -1)
    image = image.astype(np.uint8)
    seen = set()
    np.random.seed(0)  # mmseg draws the turn from numpy's global generator
    for _ in range(64):
        sample = dict(img=image.copy(), gt_seg_map=label.copy(), seg_fields=["gt_seg_map"])
        out = turn(sample)
        assert out["gt_seg_map"].dtype == np.uint8
        assert np.array_equal(out["img"][..., 0], out["gt_seg_map"] * 30)
        assert np.array_equal(
            np.bincount(out["gt_seg_map"].ravel(), minlength=7),
            np.bincount(label.ravel(), minlength=7),
        )
        seen.add(out["img"][..., 1].tobytes())
    assert len(seen) == 8  # all eight views of a square seen from above
