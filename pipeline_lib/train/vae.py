"""The VAE of a from-scratch (preset) base, trained on aerial images and colourised labels.

The label LoRA and the ControlNet learn in the VAE's latent space, so a random VAE
makes both useless: a colourised label round-tripped through it keeps 1-3% of its
pixels. This stage trains the base's own VAE once, before them, and installs it into
``<base>/vae``, so everything that loads the base picks it up unchanged (its hash
changes, and generation manifests record that). ``<base>/vae_training.json`` records
what was trained, so a second call does not train again.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL
from safetensors.torch import load_file

from pipeline_lib.config import FactoryConfig, TrainConfig, VaeConfig
from pipeline_lib.errors import CheckpointError
from pipeline_lib.micro_batches import effective_batch
from pipeline_lib.models.build import PRESET_RECORD, ensure_base_models
from pipeline_lib.models.model_hash import model_hash
from pipeline_lib.models.presets import get_preset
from pipeline_lib.train.pair_sampler import Batch, PairSampler
from pipeline_lib.train.resumable import (
    SUMMARY,
    TrainJob,
    TrainSummary,
    config_hash,
    make_accelerator,
    run_training,
    train_section_hash,
)

log = logging.getLogger(__name__)

RECORD = "vae_training.json"
VAE_SUBDIR = "vae"

WEIGHTS = "diffusion_pytorch_model.safetensors"
# Labels and images drawn to measure the latent scale, from steps past the training run.
_CALIBRATION_SAMPLES = 64


def vae_training_applies(cfg: FactoryConfig) -> bool:
    """True for a base built from a preset with a learnt (random) VAE and ``vae.steps > 0``."""
    if cfg.models.preset is None or cfg.vae.steps == 0:
        return False
    return get_preset(cfg.models.preset).vae_class == "AutoencoderKL"


def vae_loss(
    vae: AutoencoderKL, batch: Batch, train: VaeConfig, device: torch.device
) -> torch.Tensor:
    """L1 + MSE reconstruction of labels and images (labels weighted up), plus a small KL."""
    labels, images = batch.label * 2 - 1, batch.image
    pixels = torch.cat([labels, images]).to(device)
    dist = vae.encode(pixels).latent_dist
    # Per-sample generators: the posterior draws do not depend on how a step is split.
    draws = [_posterior_noise(int(s), dist.mean.shape[1:]) for s in batch.seeds]
    noise = torch.stack(draws + draws).to(device)
    error = vae.decode(dist.mean + dist.std * noise).sample - pixels
    per_sample = (error.abs() + error.square()).mean(dim=(1, 2, 3))
    weights = torch.ones_like(per_sample)
    weights[: len(labels)] = train.label_weight
    reconstruction = (weights * per_sample).sum() / weights.sum()
    return reconstruction + train.kl_weight * dist.kl().mean()


def _posterior_noise(seed: int, shape: torch.Size) -> torch.Tensor:
    gen = torch.Generator(device="cpu").manual_seed(seed)
    return torch.randn(shape, generator=gen)


@torch.no_grad()
def latent_scale(vae: AutoencoderKL, sampler: PairSampler, step: int) -> float:
    """1 / std of the latents of a fixed set of labels and images.

    Diffusion assumes unit-variance latents; SD's 0.18215 is this number for its own VAE,
    and a from-scratch VAE's latents have another scale.
    """
    batch = sampler.batch(step, 0, _CALIBRATION_SAMPLES // 2)
    pixels = torch.cat([batch.label * 2 - 1, batch.image]).to(vae.device)
    was_training = vae.training
    vae.eval()
    std = vae.encode(pixels).latent_dist.mode().float().std().item()
    vae.train(was_training)
    # Rounded, so that the config (and the base hash) is the same on every machine.
    return float(f"{1.0 / max(std, 1e-6):.4g}")


def save_vae(vae: AutoencoderKL, sampler: PairSampler, train: VaeConfig, output: Path) -> None:
    """Save in diffusers' layout with the measured latent scaling factor."""
    vae.register_to_config(scaling_factor=latent_scale(vae, sampler, train.steps))
    vae.save_pretrained(output, safe_serialization=True)


def install_trained(
    job: TrainJob, summary: TrainSummary, train: TrainConfig, base: Path, subdir: str, record: str
) -> None:
    """Install a finished stage's weights into ``base/subdir`` with the record that says
    what was trained (what :func:`already_installed` checks on the next call)."""
    data = {
        "kind": job.kind,
        "config_hash": job.config_hash,
        "steps": train.steps,
        "seed": train.seed,
        "initial_hash": job.base_model_hash,
        "output_hash": summary.output_hash,
    }
    install_component(train.output, base, subdir, ("config.json", WEIGHTS), record, data)


def install_component(
    trained: Path, base: Path, subdir: str, files: tuple[str, ...], record: str, data: dict
) -> None:
    """Swap the ``files`` of ``trained`` into ``base/subdir``, then write ``base/record``.

    The new folder is staged beside the old one, so a kill leaves either version whole;
    :func:`restore_interrupted_swap` puts the old one back if a kill came before the record.
    """
    staged = base / f".{subdir}.partial"
    old = base / f".{subdir}.old"
    shutil.rmtree(staged, ignore_errors=True)
    staged.mkdir()
    for name in files:
        shutil.copy2(trained / name, staged / name)
    shutil.rmtree(old, ignore_errors=True)
    (base / subdir).rename(old)
    staged.rename(base / subdir)
    tmp = base / f".{record}.partial"
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tmp.rename(base / record)
    shutil.rmtree(old, ignore_errors=True)
    log.info("installed the trained %s into %s (base hash %s)", subdir, base, model_hash(base))


def restore_interrupted_swap(base: Path, subdir: str, record: str) -> None:
    """Without its record an install did not finish: the old folder is the one."""
    old = base / f".{subdir}.old"
    if not old.is_dir():
        return
    if not (base / record).is_file():
        log.warning("restoring %s from an interrupted install", base / subdir)
        shutil.rmtree(base / subdir, ignore_errors=True)
        old.rename(base / subdir)
    else:
        shutil.rmtree(old, ignore_errors=True)


def read_record(base: Path, record: str = RECORD) -> dict[str, Any] | None:
    """The record (e.g. ``vae_training.json``) of ``base``, or None when never trained."""
    path = base / record
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise CheckpointError(
            f"{path}: unreadable training record ({error}); rebuild the base with "
            f"`lfactory models init {base} --preset <preset> --force`"
        ) from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: a training record must be a JSON object")
    return data


def _load_vae(folder: Path) -> AutoencoderKL:
    # Not from_pretrained: it writes the source path into the saved config, and the
    # trained VAE's hash (hence the base's) would then differ from machine to machine.
    vae = AutoencoderKL.from_config(AutoencoderKL.load_config(folder))
    vae.load_state_dict(load_file(folder / WEIGHTS))
    return vae


def initial_hash(base: Path) -> str:
    # The untrained VAE is fixed by the preset and seed; unlike the base's hash, this
    # survives the install, so a run killed after it still resumes.
    preset = base / PRESET_RECORD
    if not preset.is_file():
        raise CheckpointError(
            f"{base}: no {PRESET_RECORD}, so not built by `lfactory models init`; "
            "VAE training is for preset bases (set vae.steps: 0 for a real checkpoint)"
        )
    return config_hash(json.loads(preset.read_text()))


def recorded_summary(kind: str, train: TrainConfig, record: dict[str, Any]) -> TrainSummary:
    """The summary of the run that an install record describes (no training now)."""
    path = train.output / SUMMARY
    if path.is_file():
        saved = json.loads(path.read_text())
        known = {f.name for f in fields(TrainSummary)}
        if saved.get("config_hash") == record["config_hash"] and known <= set(saved):
            saved["loss_curve"] = [tuple(p) for p in saved["loss_curve"]]
            return TrainSummary(**{k: saved[k] for k in known})
    return TrainSummary(
        kind=kind,
        output=str(train.output),
        steps=record["steps"],
        target_steps=record["steps"],
        complete=True,
        final_loss=None,
        loss_curve=[],
        wall_time_s=0.0,
        samples_per_s=0.0,
        steps_per_s=0.0,
        config_hash=record["config_hash"],
        base_model_hash=record["initial_hash"],
        resumed_from=record["steps"],
        seed=record["seed"],
        device="",
        output_hash=record["output_hash"],
    )


def already_installed(
    kind: str, cfg: FactoryConfig, train: TrainConfig, subdir: str, record: str, section_hash: str
) -> TrainSummary | None:
    """The summary of an install that ``record`` describes, None when there was none; an
    install made with other settings is an error (it would be reused silently otherwise)."""
    base = Path(cfg.models.base)
    data = read_record(base, record)
    if data is None:
        return None
    if data["config_hash"] != section_hash or data["steps"] != train.steps:
        raise CheckpointError(
            f"{base / subdir} was trained with other {kind} settings "
            f"({data['steps']} steps, config hash {data['config_hash']}); rebuild the "
            f"base with `lfactory models init {base} --preset {cfg.models.preset} --force` "
            "to train it again"
        )
    log.info("%s: %s already trained (%s); not training again", kind, base, record)
    return recorded_summary(kind, train, data)


def train_vae(
    cfg: FactoryConfig, resume: bool = True, max_steps: int | None = None, progress: bool = True
) -> TrainSummary | None:
    """Train a preset base's VAE once and install it into ``<base>/vae``.

    Returns None when there is nothing to train (no preset, or ``vae.steps: 0``);
    checkpoints and the summary live in ``cfg.vae.output``.
    """
    train = cfg.vae
    if not vae_training_applies(cfg):
        log.info("vae: not trained (models.preset unset or vae.steps is 0)")
        return None
    base = Path(cfg.models.base)
    restore_interrupted_swap(base, VAE_SUBDIR, RECORD)
    base = ensure_base_models(cfg)
    section_hash = train_section_hash(train)
    done = already_installed("vae", cfg, train, VAE_SUBDIR, RECORD, section_hash)
    if done is not None:
        return done

    accelerator = make_accelerator(cfg, train)
    vae = _load_vae(base / VAE_SUBDIR)
    vae.requires_grad_(True).to(accelerator.device)
    sampler = PairSampler(cfg.data.root, train.resolution, train.seed, with_images=True)

    def step_loss(batch: Batch, step: int, micro: int) -> torch.Tensor:
        with accelerator.autocast():
            return vae_loss(job.model, batch, train, accelerator.device)

    job = TrainJob(
        kind="vae",
        model=vae,
        batch=lambda step, micro: sampler.batch(step, micro, train.batch_size),
        loss=step_loss,
        save_final=lambda out: save_vae(accelerator.unwrap_model(job.model), sampler, train, out),
        samples_per_step=2 * effective_batch(train),
        config_hash=section_hash,
        base_model_hash=initial_hash(base),
        output=train.output,
    )
    summary = run_training(
        job, train, accelerator, resume=resume, max_steps=max_steps, progress=progress
    )
    if summary.complete:
        install_trained(job, summary, train, base, VAE_SUBDIR, RECORD)
    return summary
