"""Check and load Stable Diffusion directories in the diffusers layout.

Every load is ``local_files_only``: the factory never downloads. A directory that is
incomplete or of the wrong kind raises :class:`CheckpointError` naming what is missing,
before any weights are read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from pipeline_lib.errors import CheckpointError
from pipeline_lib.models.pixel_codec import PixelShuffleAutoencoder

SD_PIPELINES = (
    "StableDiffusionPipeline",
    "StableDiffusionImg2ImgPipeline",
    "StableDiffusionControlNetPipeline",
)
SD_COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
CONTROLNET_SUBDIR = "controlnet"
VAE_CLASSES = {"AutoencoderKL": AutoencoderKL, "PixelShuffleAutoencoder": PixelShuffleAutoencoder}
_DIFFUSERS_WEIGHTS = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.bin",
    "diffusion_pytorch_model.safetensors.index.json",
    "diffusion_pytorch_model.bin.index.json",
)
_TRANSFORMERS_WEIGHTS = (
    "model.safetensors",
    "pytorch_model.bin",
    "model.safetensors.index.json",
    "pytorch_model.bin.index.json",
)
# Files whose bytes define a model; logs, summaries and checkpoints do not.


@dataclass
class SDComponents:
    """The five parts of an SD 1.x/2.x pipeline, loaded from a local directory."""

    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    scheduler: Any
    path: Path


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path}: unreadable JSON ({error})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


def _missing_weights(folder: Path, names: tuple[str, ...]) -> str | None:
    if any((folder / n).is_file() for n in names):
        return None
    return f"{folder.name}/{names[0]} missing"


def check_sd_dir(path: str | Path) -> dict[str, Any]:
    """Check that ``path`` is a complete local SD 1.x/2.x diffusers directory.

    Returns its ``model_index.json``. Raises CheckpointError listing every missing
    part (e.g. ``unet/config.json missing``) so one run tells the user all of it.
    """
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: Stable Diffusion directory does not exist")
    index_path = path / "model_index.json"
    if not index_path.is_file():
        raise CheckpointError(
            f"{path}: model_index.json missing; not a diffusers pipeline directory"
        )
    index = read_json(index_path)
    class_name = index.get("_class_name")
    if class_name not in SD_PIPELINES:
        raise CheckpointError(
            f"{path}: not a Stable Diffusion pipeline: _class_name={class_name!r} "
            f"(expected one of {', '.join(SD_PIPELINES)})"
        )
    missing = [f"model_index.json has no {c!r} entry" for c in SD_COMPONENTS if c not in index]
    for name in ("unet", "vae"):
        if not (path / name / "config.json").is_file():
            missing.append(f"{name}/config.json missing")
        elif problem := _missing_weights(path / name, _DIFFUSERS_WEIGHTS):
            missing.append(problem)
    if not (path / "text_encoder" / "config.json").is_file():
        missing.append("text_encoder/config.json missing")
    elif problem := _missing_weights(path / "text_encoder", _TRANSFORMERS_WEIGHTS):
        missing.append(problem)
    tok = path / "tokenizer"
    if not (tok / "tokenizer.json").is_file() and not (tok / "vocab.json").is_file():
        missing.append("tokenizer/tokenizer.json (or vocab.json + merges.txt) missing")
    if not (path / "scheduler" / "scheduler_config.json").is_file():
        missing.append("scheduler/scheduler_config.json missing")
    if missing:
        raise CheckpointError(
            f"{path}: incomplete Stable Diffusion directory: " + "; ".join(missing)
        )
    return index


def check_controlnet_dir(path: str | Path) -> dict[str, Any]:
    """Check a ControlNet ``save_pretrained`` directory; returns its config."""
    path = Path(path)
    config_path = path / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"{path}: ControlNet config.json missing")
    config = read_json(config_path)
    if config.get("_class_name") != "ControlNetModel":
        raise CheckpointError(
            f"{path}: not a ControlNet: _class_name={config.get('_class_name')!r}"
        )
    if problem := _missing_weights(path, _DIFFUSERS_WEIGHTS):
        raise CheckpointError(f"{path}: ControlNet weights {problem}")
    return config


# ---------------------------------------------------------------- loading


def load_sd_components(path: str | Path, dtype: torch.dtype = torch.float32) -> SDComponents:
    """Load unet, vae, text encoder, tokenizer and scheduler from a local SD directory."""
    path = Path(path)
    check_sd_dir(path)
    scheduler_cls = _scheduler_class(path)
    local = {"local_files_only": True}
    return SDComponents(
        unet=UNet2DConditionModel.from_pretrained(
            path, subfolder="unet", torch_dtype=dtype, **local
        ),
        vae=_vae_class(path).from_pretrained(path, subfolder="vae", torch_dtype=dtype, **local),
        text_encoder=CLIPTextModel.from_pretrained(
            path, subfolder="text_encoder", dtype=dtype, **local
        ),
        tokenizer=CLIPTokenizer.from_pretrained(path, subfolder="tokenizer", **local),
        scheduler=scheduler_cls.from_pretrained(path, subfolder="scheduler", **local),
        path=path,
    )


def sd_scale_factor(vae: Any) -> int:
    """How many times smaller than the image the latent is, as diffusers pipelines compute it."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def _vae_class(path: Path) -> Any:
    name = read_json(path / "vae" / "config.json").get("_class_name")
    if name not in VAE_CLASSES:
        raise CheckpointError(
            f"{path}/vae: unknown VAE _class_name={name!r} (known: {', '.join(VAE_CLASSES)})"
        )
    return VAE_CLASSES[name]


def _scheduler_class(path: Path) -> Any:
    import diffusers

    name = read_json(path / "scheduler" / "scheduler_config.json").get("_class_name")
    cls = getattr(diffusers, str(name), None)
    if cls is None:
        raise CheckpointError(f"{path}/scheduler: unknown scheduler _class_name={name!r}")
    return cls


def load_controlnet(path: str | Path, dtype: torch.dtype = torch.float32) -> ControlNetModel:
    """Load a ControlNet saved with ``save_pretrained``, checked first."""
    check_controlnet_dir(path)
    return ControlNetModel.from_pretrained(path, torch_dtype=dtype, local_files_only=True)
