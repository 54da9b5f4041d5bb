"""Score an already trained Mask2Former on any LoveDA-layout folder, without training again.

Used for consistency (the Ori. model on generated images, against the labels they were
drawn from) and for validating trained segmenters on a user's own tiles.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline_lib.config import ValidationConfig
from pipeline_lib.errors import CheckpointError
from pipeline_lib.validate import mmseg_data, runner
from pipeline_lib.validate.mask2former_configs import model_config
from pipeline_lib.validate.mmcv_compat import ensure_mmseg, trust_checkpoint_dir


def load_segmenter(cfg: ValidationConfig, checkpoint: Path) -> Any:
    """The Mask2Former of ``cfg`` with the weights of a checkpoint its runner wrote."""
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise CheckpointError(f"{checkpoint}: no such segmenter checkpoint; validate first")
    ensure_mmseg()
    from mmengine.config import ConfigDict
    from mmengine.registry import init_default_scope
    from mmengine.runner import load_checkpoint
    from mmseg.registry import MODELS

    init_default_scope("mmseg")
    model = MODELS.build(
        ConfigDict(
            model_config(cfg.model, cfg.crop_size, cfg.pretrained_backbone, cfg.class_weights)
        )
    )
    trust_checkpoint_dir(checkpoint.parent)
    load_checkpoint(model, str(checkpoint), map_location="cpu", logger="silent")
    return model


def score_checkpoint(
    cfg: ValidationConfig,
    checkpoint: Path,
    eval_root: Path,
    cache_dir: Path,
    progress: bool = True,
) -> runner.EvalScores:
    """IoU of the checkpoint's model on the Val split of the LoveDA-layout ``eval_root``."""
    model = load_segmenter(cfg, checkpoint)
    prepared = mmseg_data.prepare_split(Path(eval_root), mmseg_data.VAL, Path(cache_dir))
    return runner.evaluate(
        model,
        prepared,
        cfg.crop_size,
        cfg.tta,
        progress,
        native_scale=cfg.scale_factors is not None,
    )
