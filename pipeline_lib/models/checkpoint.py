"""Build, check, load and hash Stable Diffusion directories in the diffusers layout.

Every load is ``local_files_only``: the factory never downloads. A directory that is
incomplete or of the wrong kind raises :class:`CheckpointError` naming what is missing,
before any weights are read.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import torch
from diffusers import (
    AutoencoderKL,
    ControlNetModel,
    DDIMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from pipeline_lib.config import FactoryConfig
from pipeline_lib.errors import CheckpointError
from pipeline_lib.models.pixel_codec import PixelShuffleAutoencoder
from pipeline_lib.models.presets import Preset, get_preset
from pipeline_lib.models.tokenizer import build_tokenizer

log = logging.getLogger(__name__)

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
_HASHED_SUFFIXES = (".json", ".safetensors", ".bin", ".txt", ".model")
_UNHASHED_NAMES = {"training_summary.json"}
_UNHASHED_DIRS = {"checkpoints"}


@dataclass
class SDComponents:
    """The five parts of an SD 1.x/2.x pipeline, loaded from a local directory."""

    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    scheduler: Any
    path: Path


# ---------------------------------------------------------------- building


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
    (tmp / "preset.json").write_text(json.dumps({"preset": preset_obj.name, "seed": seed}) + "\n")
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

    An existing directory is checked, never overwritten.
    """
    base = Path(cfg.models.base)
    if not base.exists() and cfg.models.preset is not None:
        init_models(base, cfg.models.preset, seed=cfg.models.seed)
    check_sd_dir(base)
    return base


# ---------------------------------------------------------------- checking


def _read_json(path: Path) -> dict[str, Any]:
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
    index = _read_json(index_path)
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
    config = _read_json(config_path)
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
    name = _read_json(path / "vae" / "config.json").get("_class_name")
    if name not in VAE_CLASSES:
        raise CheckpointError(
            f"{path}/vae: unknown VAE _class_name={name!r} (known: {', '.join(VAE_CLASSES)})"
        )
    return VAE_CLASSES[name]


def _scheduler_class(path: Path) -> Any:
    import diffusers

    name = _read_json(path / "scheduler" / "scheduler_config.json").get("_class_name")
    cls = getattr(diffusers, str(name), None)
    if cls is None:
        raise CheckpointError(f"{path}/scheduler: unknown scheduler _class_name={name!r}")
    return cls


def load_controlnet(path: str | Path, dtype: torch.dtype = torch.float32) -> ControlNetModel:
    """Load a ControlNet saved with ``save_pretrained``, checked first."""
    check_controlnet_dir(path)
    return ControlNetModel.from_pretrained(path, torch_dtype=dtype, local_files_only=True)


# ---------------------------------------------------------------- hashing

_HASH_CACHE: dict[tuple[Any, ...], str] = {}


def _hashed_files(root: Path) -> list[Path]:
    index_path = root / "model_index.json"
    if index_path.is_file():
        # A pipeline's hash covers its declared components, not extras such as
        # the ControlNet initialised beside it.
        index = _read_json(index_path)
        tops = [index_path] + [root / k for k in sorted(index) if (root / k).is_dir()]
    else:
        tops = [root]
    files: list[Path] = []
    for top in tops:
        candidates = [top] if top.is_file() else top.rglob("*")
        for f in candidates:
            rel = f.relative_to(root)
            if (
                f.is_file()
                and f.suffix in _HASHED_SUFFIXES
                and f.name not in _UNHASHED_NAMES
                and not _UNHASHED_DIRS.intersection(rel.parts[:-1])
                and not any(p.startswith(".") for p in rel.parts)
            ):
                files.append(f)
    return sorted(files, key=lambda f: f.relative_to(root).as_posix())


def _canonical_safetensors_header(fh: BinaryIO) -> bytes:
    """The header with sorted keys: safetensors writes ``__metadata__`` in random order,
    so the same weights saved twice differ in bytes."""
    size = int.from_bytes(fh.read(8), "little")
    header = json.loads(fh.read(size))
    return json.dumps(header, sort_keys=True).encode()


def model_hash(path: str | Path, length: int = 16) -> str:
    """Short sha256 over the sorted relative paths and bytes of a model's weight/config files.

    Stable across machines and copies; ignores training summaries and resume
    checkpoints. Cached in-process by (path, size, mtime) since weights can be GBs.
    """
    root = Path(path).absolute()
    if not root.exists():
        raise CheckpointError(f"{root}: model directory does not exist")
    files = _hashed_files(root)
    if not files:
        raise CheckpointError(f"{root}: no weight or config files to hash")
    key = tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    if key not in _HASH_CACHE:
        digest = hashlib.sha256()
        for f in files:
            digest.update(f.relative_to(root).as_posix().encode() + b"\0")
            with f.open("rb") as fh:
                if f.suffix == ".safetensors":
                    digest.update(_canonical_safetensors_header(fh))
                while chunk := fh.read(1 << 22):
                    digest.update(chunk)
            digest.update(b"\0")
        _HASH_CACHE[key] = digest.hexdigest()
    return _HASH_CACHE[key][:length]
