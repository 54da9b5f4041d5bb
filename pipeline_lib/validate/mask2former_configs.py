"""Mask2Former model presets for validation, as mmengine config dicts.

``mask2former-r50`` and ``mask2former-swin-t`` are mmseg's own configs (the research's
sizes), read from mmseg's packaged config folder and edited: 7 classes, plain BN (one
process, no SyncBN), random init unless local backbone weights are given. ``mask2former-cpu``
is the same architecture cut down (ResNet-18, 128 channels, 20 queries, 2 encoder +
3 decoder layers) so tests and the demo train in seconds on a laptop CPU.
"""

from __future__ import annotations

import copy
from functools import cache
from pathlib import Path
from typing import Any

from pipeline_lib.choices import SEGMENTERS
from pipeline_lib.config import ValidationConfig
from pipeline_lib.data.classes import CLASS_NAMES, IGNORE_INDEX, NUM_CLASSES
from pipeline_lib.errors import CheckpointError, ConfigError
from pipeline_lib.validate.mmcv_compat import ensure_mmseg

PRESETS = SEGMENTERS
_MMSEG_FILES = {
    "mask2former-r50": "mask2former_r50_8xb2-160k_ade20k-512x512.py",
    "mask2former-swin-t": "mask2former_swin-t_8xb2-160k_ade20k-512x512.py",
    "mask2former-cpu": "mask2former_r50_8xb2-160k_ade20k-512x512.py",
}
# ImageNet mean/std in RGB order, as in every mmseg config.
MEAN = [123.675, 116.28, 103.53]
STD = [58.395, 57.12, 57.375]


def mmseg_config_path(preset: str) -> Path:
    ensure_mmseg()
    import mmseg

    return Path(mmseg.__file__).parent / ".mim" / "configs" / "mask2former" / _MMSEG_FILES[preset]


def _load_mmseg_config(preset: str) -> Any:
    from mmengine.config import Config

    path = mmseg_config_path(preset)
    if not path.is_file():
        raise ConfigError(
            f"{path}: mmseg's Mask2Former config is missing; reinstall mmsegmentation==1.2.2"
        )
    return Config.fromfile(str(path))


def _shrink_to_cpu(model: dict[str, Any], crop_size: int) -> None:
    channels = 128
    model["backbone"].update(depth=18)
    head = model["decode_head"]
    head.update(
        in_channels=[64, 128, 256, 512],
        feat_channels=channels,
        out_channels=channels,
        num_queries=20,
    )
    decoder_pe = dict(num_feats=channels // 2, normalize=True)
    head["positional_encoding"] = decoder_pe
    pixel = head["pixel_decoder"]
    pixel["positional_encoding"] = copy.deepcopy(decoder_pe)
    pixel["encoder"]["num_layers"] = 2
    pixel["encoder"]["layer_cfg"]["self_attn_cfg"].update(embed_dims=channels, num_heads=4)
    pixel["encoder"]["layer_cfg"]["ffn_cfg"].update(embed_dims=channels, feedforward_channels=512)
    decoder = head["transformer_decoder"]
    decoder["num_layers"] = 3
    for key in ("self_attn_cfg", "cross_attn_cfg"):
        decoder["layer_cfg"][key].update(embed_dims=channels, num_heads=4)
    decoder["layer_cfg"]["ffn_cfg"].update(embed_dims=channels, feedforward_channels=512)
    # Mask loss points per query: the research's 12544 exceeds a small crop's pixel count.
    head["train_cfg"]["num_points"] = min(12544, crop_size * crop_size)


@cache
def _slide_head() -> str:
    """Register (once) and name mmseg's Mask2FormerHead with masks sized to the window."""
    ensure_mmseg()
    from mmseg.models.decode_heads import Mask2FormerHead
    from mmseg.registry import MODELS

    class SlideMask2FormerHead(Mask2FormerHead):
        """mmseg's head sizes its masks by ``pad_shape``, which ``slide_inference`` leaves at
        the whole tile's while it sets ``img_shape`` to the window's: every window's masks
        then come out tile-sized and fail to add up (open-mmlab/mmsegmentation#3752)."""

        def predict(self, x, batch_img_metas, test_cfg):
            if test_cfg.get("mode") == "slide":
                batch_img_metas = [
                    {k: v for k, v in meta.items() if k != "pad_shape"} for meta in batch_img_metas
                ]
            return super().predict(x, batch_img_metas, test_cfg)

    MODELS.register_module(module=SlideMask2FormerHead, force=True)
    return SlideMask2FormerHead.__name__


def model_config(cfg: ValidationConfig) -> dict[str, Any]:
    """The ``model`` dict of ``cfg.model`` for ``NUM_CLASSES`` classes at ``cfg.crop_size``;
    with ``cfg.slide``, it predicts in crop-sized windows at a stride of 3/4 of the crop."""
    preset, crop_size, pretrained_backbone = cfg.model, cfg.crop_size, cfg.pretrained_backbone
    if preset not in PRESETS:
        raise ConfigError(
            f"validation.model {preset!r} is unknown; choose one of {', '.join(PRESETS)}"
        )
    model = _load_mmseg_config(preset).to_dict()["model"]
    if preset == "mask2former-cpu":
        _shrink_to_cpu(model, crop_size)
    backbone = model["backbone"]
    if pretrained_backbone is not None:
        if not Path(pretrained_backbone).is_file():
            raise CheckpointError(
                f"validation.pretrained_backbone {pretrained_backbone} does not exist"
            )
        backbone["init_cfg"] = dict(type="Pretrained", checkpoint=str(pretrained_backbone))
    else:
        backbone["init_cfg"] = None
    if "norm_cfg" in backbone:
        # One process: SyncBN would fail. A random-init backbone must learn its BN affine.
        backbone["norm_cfg"] = dict(type="BN", requires_grad=pretrained_backbone is None)
    head = model["decode_head"]
    head["num_classes"] = NUM_CLASSES
    weights = dict(cfg.class_weights)
    unknown = sorted(set(weights) - set(CLASS_NAMES))
    if unknown:
        raise ConfigError(
            f"validation.class_weights: unknown class {unknown[0]!r}; "
            f"classes are {', '.join(CLASS_NAMES)}"
        )
    # The last entry weighs Mask2Former's "no object" class, as in mmseg's configs.
    head["loss_cls"]["class_weight"] = [weights.get(c, 1.0) for c in CLASS_NAMES] + [0.1]
    model["data_preprocessor"].update(
        mean=MEAN, std=STD, size=(crop_size, crop_size), seg_pad_val=IGNORE_INDEX
    )
    if cfg.slide:
        head["type"] = _slide_head()
        stride = crop_size * 3 // 4  # measured on the genuine tiles: 3/4 above 1/2
        model["test_cfg"] = dict(mode="slide", crop_size=(crop_size,) * 2, stride=(stride,) * 2)
    return model


def optim_config(preset: str, lr: float, pretrained: bool = False) -> dict[str, Any]:
    """mmseg's AdamW + parameter-wise multipliers of the preset, at learning rate ``lr``."""
    optim = _load_mmseg_config(preset).to_dict()["optim_wrapper"]
    optim["optimizer"]["lr"] = lr
    # paramwise_cfg gives every parameter its own group, so AdamW's default loop runs ~8
    # small ops per tensor per step; fused is one kernel (mask2former-cpu at crop 64:
    # 0.546 -> 0.505 s per iteration).
    optim["optimizer"]["fused"] = True
    if not pretrained:
        # mmseg slows the backbone 10x to protect ImageNet features; a random one has none.
        optim["paramwise_cfg"]["custom_keys"]["backbone"]["lr_mult"] = 1.0
    return optim
