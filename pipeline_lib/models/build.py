"""Build Stable Diffusion directories from presets: random, deterministic per seed, offline."""

from __future__ import annotations

import json
import logging
import shutil
import uuid
from pathlib import Path
from typing import Any

import torch
from diffusers import ControlNetModel, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from pipeline_lib.config import FactoryConfig
from pipeline_lib.errors import CheckpointError
from pipeline_lib.models.presets import Preset, get_preset
from pipeline_lib.models.sd_folder import CONTROLNET_SUBDIR, VAE_CLASSES, check_sd_dir
from pipeline_lib.models.tokenizer import build_tokenizer

log = logging.getLogger(__name__)

PRESET_RECORD = "preset.json"


def build_components(preset: str | Preset, seed: int = 0) -> dict[str, Any]:
    """Randomly initialised components of a preset, deterministic per ``seed``."""
    preset = get_preset(preset) if isinstance(preset, str) else preset
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**preset.unet)
    vae = VAE_CLASSES[preset.vae_class](**preset.vae)
    text_encoder = CLIPTextModel(CLIPTextConfig(**preset.text_encoder))
    return {
        "unet": unet,
        "vae": vae,
        "text_encoder": text_encoder,
        # Byte-level tokens: a prompt takes as many positions as it has characters.
        "tokenizer": build_tokenizer(preset.text_encoder["max_position_embeddings"]),
        "scheduler": DDIMScheduler(**preset.scheduler),
    }


def controlnet_from_unet(unet: UNet2DConditionModel, vae_scale_factor: int) -> ControlNetModel:
    """A ControlNet copying ``unet``'s encoder, its conditioning embedding matching the VAE.

    The embedding downsamples by 2**(len(channels) - 1); it must equal the VAE's scale
    factor or the forward fails with a size mismatch.
    """
    levels = vae_scale_factor.bit_length()  # log2(f) + 1
    channels = (16, 32, 96, 256, 512)[:levels]
    return ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=channels)


def init_models(out: Path, preset: str, seed: int = 0, overwrite: bool = False) -> Path:
    """Write a complete SD directory (plus ``out/controlnet``) built from ``preset``.

    Written to a temporary sibling and renamed, so a killed run never leaves a
    half-written model that looks complete. An existing complete ``out`` is an error
    unless ``overwrite``.
    """
    out = Path(out).absolute()
    preset_obj = get_preset(preset)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise CheckpointError(f"{out} already exists; pass overwrite (--force) to rebuild it")
    parts = build_components(preset_obj, seed)
    pipe = StableDiffusionPipeline(
        **parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    # A unique temporary name: two trainers may initialise the same base at once.
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.partial")
    tmp.mkdir(parents=True)
    pipe.save_pretrained(tmp, safe_serialization=True)
    controlnet = controlnet_from_unet(parts["unet"], preset_obj.vae_scale_factor)
    controlnet.save_pretrained(tmp / CONTROLNET_SUBDIR, safe_serialization=True)
    (tmp / PRESET_RECORD).write_text(json.dumps({"preset": preset_obj.name, "seed": seed}) + "\n")
    if overwrite and out.exists():
        shutil.rmtree(out)
    try:
        tmp.rename(out)
    except OSError:
        # Another process finished first: its copy is as good as ours (same preset).
        shutil.rmtree(tmp, ignore_errors=True)
        check_sd_dir(out)
    log.info("initialised %s models (seed %d) in %s", preset_obj.name, seed, out)
    return out


def ensure_base_models(cfg: FactoryConfig) -> Path:
    """``cfg.models.base``, initialised from ``cfg.models.preset`` when it does not exist.

    An existing directory is checked, never overwritten: one built from another preset
    than the config names is an error, not a silent mix of two models.
    """
    base = Path(cfg.models.base)
    if not base.exists() and cfg.models.preset is not None:
        init_models(base, cfg.models.preset, seed=cfg.models.seed)
    check_sd_dir(base)
    record = base / PRESET_RECORD
    if cfg.models.preset is not None and record.is_file():
        built = json.loads(record.read_text()).get("preset")
        if built != cfg.models.preset:
            raise CheckpointError(
                f"{base} was built from preset {built!r}, but models.preset is "
                f"{cfg.models.preset!r}; delete {base} (and the trained models beside it) "
                "or point models.base elsewhere"
            )
    return base
