"""Image generator: a ControlNet that turns a colourised label map into the aerial image.

UNet, VAE and text encoder stay frozen; the ControlNet starts from ``<base>/controlnet``
(written by ``models init``) or, when absent, from a copy of the UNet's encoder.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from diffusers import ControlNetModel

from pipeline_lib.config import FactoryConfig
from pipeline_lib.models.checkpoint import (
    CONTROLNET_SUBDIR,
    controlnet_from_unet,
    ensure_base_models,
    load_controlnet,
    load_sd_components,
    model_hash,
)
from pipeline_lib.train.datasets import Batch
from pipeline_lib.train.objective import DiffusionLoss, training_prompt
from pipeline_lib.train.resumable import (
    TrainJob,
    TrainSummary,
    make_accelerator,
    place,
    run_training,
    train_section_hash,
    weight_dtype,
)

log = logging.getLogger(__name__)


def initial_controlnet(base: Path, unet: torch.nn.Module, vae_scale_factor: int) -> ControlNetModel:
    """The ControlNet saved beside the base model, else one copied from its UNet."""
    if (base / CONTROLNET_SUBDIR / "config.json").is_file():
        return load_controlnet(base / CONTROLNET_SUBDIR)
    log.info("no %s; initialising the ControlNet from the UNet", base / CONTROLNET_SUBDIR)
    return controlnet_from_unet(unet, vae_scale_factor)


def train_controlnet(
    cfg: FactoryConfig, resume: bool = True, max_steps: int | None = None, progress: bool = True
) -> TrainSummary:
    """Train (or resume) the ControlNet into ``cfg.controlnet.output`` (save_pretrained)."""
    train = cfg.controlnet
    base = ensure_base_models(cfg)
    accelerator = make_accelerator(cfg, train)
    dtype = weight_dtype(accelerator)
    sd = load_sd_components(base)
    scale = 2 ** (len(sd.vae.config.block_out_channels) - 1)
    controlnet = initial_controlnet(base, sd.unet, scale)
    for frozen in (sd.unet, sd.vae, sd.text_encoder):
        place(frozen.requires_grad_(False).eval(), accelerator.device, dtype)
    controlnet.requires_grad_(True).to(accelerator.device)

    loss = DiffusionLoss.for_training(cfg, train, sd, accelerator.device, dtype, use_label=False)

    def step_loss(batch: Batch, step: int, micro: int) -> torch.Tensor:
        noisy, t, text, target = loss.inputs(batch)
        # The conditioning image stays in [0, 1], as StableDiffusionControlNetPipeline feeds it.
        cond = batch.label.to(accelerator.device, torch.float32)
        with accelerator.autocast():
            down, mid = job.model(
                noisy, t, encoder_hidden_states=text, controlnet_cond=cond, return_dict=False
            )
            prediction = sd.unet(
                noisy,
                t,
                encoder_hidden_states=text,
                down_block_additional_residuals=[r.to(dtype) for r in down],
                mid_block_additional_residual=mid.to(dtype),
            ).sample
        return loss.mse(prediction, target)

    job = TrainJob(
        kind="controlnet",
        model=controlnet,
        batch=loss.batch,
        loss=step_loss,
        save_final=lambda out: accelerator.unwrap_model(job.model).save_pretrained(
            out, safe_serialization=True
        ),
        samples_per_step=train.batch_size * train.grad_accum,
        config_hash=train_section_hash(train, training_prompt(cfg)),
        base_model_hash=model_hash(base),
        output=train.output,
    )
    return run_training(
        job, train, accelerator, resume=resume, max_steps=max_steps, progress=progress
    )
