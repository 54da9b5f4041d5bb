"""Image generator: the model that turns a label map into the aerial image.

``controlnet`` (the research's path, for real SD): UNet, VAE and text encoder stay frozen;
a ControlNet that reads the colourised label starts from ``<base>/controlnet`` (written by
``models init``) or, when absent, from a copy of the UNet's encoder. Its zero
convolutions start silent, which a from-scratch base cannot afford on a CPU budget.

``concat`` (from-scratch presets): the base UNet itself, its input widened by the one-hot
label channels (zero-initialised, as SD's inpainting UNet widens its input), trained
whole; the label and prompt are dropped together for classifier-free guidance.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import torch
from accelerate import Accelerator
from diffusers import ControlNetModel, UNet2DConditionModel

from pipeline_lib.config import FactoryConfig
from pipeline_lib.micro_batches import effective_batch
from pipeline_lib.models.build import controlnet_from_unet, ensure_base_models
from pipeline_lib.models.label_condition import condition_channels, label_condition
from pipeline_lib.models.model_hash import model_hash
from pipeline_lib.models.sd_folder import (
    CONTROLNET_SUBDIR,
    load_controlnet,
    load_sd_components,
    sd_scale_factor,
)
from pipeline_lib.models.tile_style import (
    save_style_bank,
    style_conditioned_unet,
)
from pipeline_lib.models.unet_input import saved_vector_conditioned, widened_unet
from pipeline_lib.train.objective import DiffusionLoss, training_prompt
from pipeline_lib.train.pair_sampler import Batch
from pipeline_lib.train.resumable import (
    TrainJob,
    TrainSummary,
    continued_unet,
    make_accelerator,
    place,
    run_training,
    starting_model,
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


def concat_unet(unet: UNet2DConditionModel, scale_factor: int) -> UNet2DConditionModel:
    """``unet`` with the label's class channels appended to its input, initially ignored."""
    return widened_unet(unet, condition_channels(scale_factor))


def train_controlnet(
    cfg: FactoryConfig, resume: bool = True, max_steps: int | None = None, progress: bool = True
) -> TrainSummary:
    """Train (or resume) the image model into ``cfg.controlnet.output`` (save_pretrained)."""
    if cfg.controlnet.conditioning == "concat":
        return _train_concat(cfg, resume, max_steps, progress)
    train = cfg.controlnet
    base = ensure_base_models(cfg)
    accelerator = make_accelerator(cfg, train)
    dtype = weight_dtype(accelerator)
    sd = load_sd_components(base)
    start = starting_model(train, "controlnet")
    if start is not None:
        controlnet = load_controlnet(start)
    else:
        controlnet = initial_controlnet(base, sd.unet, sd_scale_factor(sd.vae))
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

    job = _image_job("controlnet", controlnet, loss, step_loss, cfg, base, accelerator)
    return run_training(
        job, train, accelerator, resume=resume, max_steps=max_steps, progress=progress
    )


def _image_job(
    kind: str,
    model: torch.nn.Module,
    loss: DiffusionLoss,
    step_loss: Callable[[Batch, int, int], torch.Tensor],
    cfg: FactoryConfig,
    base: Path,
    accelerator: Accelerator,
    save_beside: Callable[[Path], None] | None = None,
) -> TrainJob:
    """The job of either image model, saved with save_pretrained in the diffusers layout
    (and ``save_beside`` writing what sampling it needs beside it)."""
    train = cfg.controlnet

    def save_final(output: Path) -> None:
        accelerator.unwrap_model(job.model).save_pretrained(output, safe_serialization=True)
        if save_beside is not None:
            save_beside(output)

    job = TrainJob(
        kind=kind,
        model=model,
        batch=loss.batch,
        loss=step_loss,
        save_final=save_final,
        samples_per_step=effective_batch(train),
        config_hash=train_section_hash(train, training_prompt(cfg)),
        base_model_hash=model_hash(base),
        output=train.output,
    )
    return job


def _train_concat(
    cfg: FactoryConfig, resume: bool, max_steps: int | None, progress: bool
) -> TrainSummary:
    train = cfg.controlnet
    base = ensure_base_models(cfg)
    accelerator = make_accelerator(cfg, train)
    dtype = weight_dtype(accelerator)
    sd = load_sd_components(base)
    scale = sd_scale_factor(sd.vae)
    unet = concat_unet(sd.unet, scale)
    start = starting_model(train, "controlnet")
    if start is not None and train.tile_style and not saved_vector_conditioned(start):
        # An image model trained without styles goes on with them: the style's embedding
        # starts silent, so training starts from what that model draws.
        unet, start = continued_unet(start, unet, "controlnet"), None
    if train.tile_style:
        unet = style_conditioned_unet(unet)
    if start is not None:
        unet = continued_unet(start, unet, "controlnet")
    for frozen in (sd.vae, sd.text_encoder):
        place(frozen.requires_grad_(False).eval(), accelerator.device, dtype)
    unet.requires_grad_(True).to(accelerator.device)
    loss = DiffusionLoss.for_training(cfg, train, sd, accelerator.device, dtype, use_label=False)

    def step_loss(batch: Batch, step: int, micro: int) -> torch.Tensor:
        noisy, t, text, target = loss.inputs(batch)
        cond = label_condition(batch.mask, scale).to(accelerator.device, noisy.dtype)
        keep = batch.keep_prompt.to(accelerator.device)
        cond = cond * keep[:, None, None, None]
        style = None
        if train.tile_style:
            # Dropped with the label: the unconditional branch of guidance sees no style.
            style = torch.stack([loss.sampler.tile_style(int(i)) for i in batch.tile])
            style = style.to(accelerator.device) * keep[:, None]
        with accelerator.autocast():
            prediction = job.model(
                torch.cat([noisy, cond], 1), t, encoder_hidden_states=text, class_labels=style
            )
        return loss.mse(prediction.sample, target)

    def save_style_bank_of(output: Path) -> None:
        tiles = range(len(loss.sampler))
        mixes = torch.stack([loss.sampler.tile_mix(i) for i in tiles])
        save_style_bank(output, mixes, torch.stack([loss.sampler.tile_style(i) for i in tiles]))

    extra = save_style_bank_of if train.tile_style else None
    job = _image_job("image-concat", unet, loss, step_loss, cfg, base, accelerator, extra)
    return run_training(
        job, train, accelerator, resume=resume, max_steps=max_steps, progress=progress
    )
