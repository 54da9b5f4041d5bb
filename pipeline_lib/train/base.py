"""Pre-training of a from-scratch preset's UNet: text-to-image on the Train images.

Stable Diffusion had learnt images before anyone fine-tuned it; a preset base starts
random, and a LoRA on a random UNet is a low-rank random network, a ControlNet has
nothing to steer. This stage trains the whole UNet once, as SD was trained (the style
prompt, v or epsilon as the base's scheduler says), and installs it into
``<base>/unet``; ``<base>/base_training.json`` records it, so a second call does not
train again. Real SD checkpoints skip it (``base.steps: 0`` or no preset).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from pipeline_lib.config import FactoryConfig
from pipeline_lib.micro_batches import effective_batch
from pipeline_lib.models.build import ensure_base_models
from pipeline_lib.models.sd_folder import load_sd_components
from pipeline_lib.train.objective import DiffusionLoss, training_prompt
from pipeline_lib.train.pair_sampler import Batch
from pipeline_lib.train.resumable import (
    TrainJob,
    TrainSummary,
    config_hash,
    make_accelerator,
    place,
    run_training,
    train_section_hash,
    weight_dtype,
)
from pipeline_lib.train.vae import RECORD as VAE_RECORD
from pipeline_lib.train.vae import (
    already_installed,
    initial_hash,
    install_trained,
    read_record,
    restore_interrupted_swap,
)

log = logging.getLogger(__name__)

RECORD = "base_training.json"
UNET_SUBDIR = "unet"


def base_training_applies(cfg: FactoryConfig) -> bool:
    """True for a base built from a preset with ``base.steps > 0``."""
    return cfg.models.preset is not None and cfg.base.steps > 0


def _start_identity(base: Path) -> str:
    # The random UNet is fixed by preset and seed, the VAE by its own record; unlike the
    # base's hash, this survives the install, so a run killed after it still resumes.
    vae = read_record(base, VAE_RECORD)
    return config_hash(initial_hash(base), vae["output_hash"] if vae else None)


def train_base(
    cfg: FactoryConfig, resume: bool = True, max_steps: int | None = None, progress: bool = True
) -> TrainSummary | None:
    """Pre-train a preset base's UNet once and install it into ``<base>/unet``.

    Returns None when the stage does not apply; checkpoints and the summary live in
    ``cfg.base.output``.
    """
    train = cfg.base
    if not base_training_applies(cfg):
        log.info("base: not trained (models.preset unset or base.steps is 0)")
        return None
    base = Path(cfg.models.base)
    restore_interrupted_swap(base, UNET_SUBDIR, RECORD)
    base = ensure_base_models(cfg)
    section_hash = train_section_hash(train, training_prompt(cfg))
    done = already_installed("base", cfg, train, UNET_SUBDIR, RECORD, section_hash)
    if done is not None:
        return done

    accelerator = make_accelerator(cfg, train)
    dtype = weight_dtype(accelerator)
    sd = load_sd_components(base)
    for frozen in (sd.vae, sd.text_encoder):
        place(frozen.requires_grad_(False).eval(), accelerator.device, dtype)
    sd.unet.requires_grad_(True).to(accelerator.device)
    loss = DiffusionLoss.for_training(cfg, train, sd, accelerator.device, dtype, use_label=False)

    def step_loss(batch: Batch, step: int, micro: int) -> torch.Tensor:
        noisy, t, text, target = loss.inputs(batch)
        with accelerator.autocast():
            prediction = job.model(noisy, t, encoder_hidden_states=text).sample
        return loss.mse(prediction, target)

    job = TrainJob(
        kind="base",
        model=sd.unet,
        batch=loss.batch,
        loss=step_loss,
        save_final=lambda out: accelerator.unwrap_model(job.model).save_pretrained(
            out, safe_serialization=True
        ),
        samples_per_step=effective_batch(train),
        config_hash=section_hash,
        base_model_hash=_start_identity(base),
        output=train.output,
    )
    summary = run_training(
        job, train, accelerator, resume=resume, max_steps=max_steps, progress=progress
    )
    if summary.complete:
        install_trained(job, summary, train, base, UNET_SUBDIR, RECORD)
    return summary
