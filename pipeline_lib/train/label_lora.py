"""Label generator: a LoRA on the UNet (or the whole UNet), trained on colourised masks.

Sampling the LoRA'd UNet from noise yields new label maps. Only the LoRA weights learn;
the objective is the standard SD one (see ``objective.py``). With ``self_condition`` the
fully fine-tuned UNet also reads its own previous estimate of the label.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline
from diffusers.training_utils import cast_training_params
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict

from pipeline_lib.config import FactoryConfig
from pipeline_lib.micro_batches import effective_batch
from pipeline_lib.models.build import ensure_base_models
from pipeline_lib.models.class_mix import (
    class_mix,
    mix_conditioned_unet,
    save_mix_bank,
)
from pipeline_lib.models.label_colours import check_label_colours, save_label_colours
from pipeline_lib.models.model_hash import model_hash
from pipeline_lib.models.sd_folder import load_sd_components
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

ADAPTER = "default"
# Train crops whose class mixes a mix-conditioned model is sampled with.
MIX_BANK_CROPS = 2048


def add_label_lora(unet: torch.nn.Module, cfg: FactoryConfig) -> None:
    """Freeze the UNet and add the configured LoRA; LoRA init is seeded for exact reruns."""
    lora = cfg.label_lora
    unet.requires_grad_(False)
    torch.manual_seed(lora.seed)
    unet.add_adapter(
        LoraConfig(
            r=lora.rank,
            lora_alpha=lora.alpha,
            init_lora_weights="gaussian",
            target_modules=lora.modules,
        ),
        adapter_name=ADAPTER,
    )


def save_label_lora(unet: torch.nn.Module, output: Path) -> None:
    """Save in diffusers' LoRA format; with metadata, so alpha != rank loads right."""
    StableDiffusionPipeline.save_lora_weights(
        output,
        unet_lora_layers=get_peft_model_state_dict(unet, adapter_name=ADAPTER),
        unet_lora_adapter_metadata=unet.peft_config[ADAPTER].to_dict(),
        safe_serialization=True,
    )


def save_label_model(unet: torch.nn.Module, output: Path, full: bool) -> None:
    """A fully fine-tuned label UNet in diffusers' layout, else the LoRA alone."""
    if full:
        unet.save_pretrained(output, safe_serialization=True)
    else:
        save_label_lora(unet, output)


def mix_bank(loss: DiffusionLoss, mix_of: str) -> torch.Tensor:
    """The mixes a mix-conditioned model is sampled with: those of Train crops as training
    drew them, or of every Train tile."""
    if mix_of == "tile":
        return torch.stack([loss.sampler.tile_mix(i) for i in range(len(loss.sampler))])
    steps = range(MIX_BANK_CROPS // loss.batch_size)
    return class_mix(torch.cat([loss.batch(s, 0).mask for s in steps]))


def train_label_lora(
    cfg: FactoryConfig, resume: bool = True, max_steps: int | None = None, progress: bool = True
) -> TrainSummary:
    """Train (or resume) the label generator into ``cfg.label_lora.output``: a LoRA, or the
    whole UNet with ``method: full``."""
    lora = cfg.label_lora
    base = ensure_base_models(cfg)
    accelerator = make_accelerator(cfg, lora)
    dtype = weight_dtype(accelerator)
    sd = load_sd_components(base)
    for frozen in (sd.vae, sd.text_encoder):
        place(frozen.requires_grad_(False).eval(), accelerator.device, dtype)
    full = lora.method == "full"
    if lora.self_condition:
        sd.unet = widened_unet(sd.unet, sd.unet.config.out_channels)
    start = starting_model(lora, "label_lora")
    if start is not None:
        check_label_colours(start, lora.colours, "label_lora.init_from")
    if start is not None and lora.class_mix and not saved_vector_conditioned(start):
        # A label model trained without the mix goes on with it: the mix's embedding starts
        # silent, so training starts from what that model draws.
        sd.unet, start = continued_unet(start, sd.unet, "label_lora"), None
    if lora.class_mix:
        sd.unet = mix_conditioned_unet(sd.unet)
    if start is not None:
        sd.unet = continued_unet(start, sd.unet, "label_lora")
    if full:
        sd.unet.requires_grad_(True).to(accelerator.device)
    else:
        add_label_lora(sd.unet, cfg)
        place(sd.unet, accelerator.device, dtype)
        cast_training_params(sd.unet, dtype=torch.float32)

    loss = DiffusionLoss.for_training(cfg, lora, sd, accelerator.device, dtype, use_label=True)

    def step_loss(batch: Batch, step: int, micro: int) -> torch.Tensor:
        noisy, t, text, target = loss.inputs(batch)
        mix = None
        if lora.class_mix:
            # Dropped with the prompt: the unconditional branch of guidance sees no mix.
            shares = class_mix(batch.mask) if lora.mix_of == "crop" else batch.tile_mix
            mix = (shares * batch.keep_prompt[:, None]).to(noisy.device)
        if lora.self_condition:
            noisy = torch.cat([noisy, self_condition_input(batch, noisy, t, text, mix)], 1)
        with accelerator.autocast():
            prediction = job.model(noisy, t, encoder_hidden_states=text, class_labels=mix).sample
        weights = loss.sample_weights(batch, t) if lora.soft_edges else None
        return loss.mse(prediction, target, weights)

    def self_condition_input(
        batch: Batch,
        noisy: torch.Tensor,
        t: torch.Tensor,
        text: torch.Tensor,
        mix: torch.Tensor | None,
    ) -> torch.Tensor:
        # Half the samples see the model's own estimate from a first, gradient-free pass
        # (Chen et al., analog bits); the others see zeros, as the first sampling step does.
        estimate = torch.zeros_like(noisy)
        coins = loss.self_condition_coins(batch).to(noisy.device)
        if coins.any():
            with torch.no_grad(), accelerator.autocast():
                first = job.model(
                    torch.cat([noisy, estimate], 1), t, encoder_hidden_states=text, class_labels=mix
                )
            guess = loss.predicted_sample(noisy, t, first.sample).to(noisy.dtype)
            estimate = torch.where(coins[:, None, None, None], guess, estimate)
        return estimate

    def save_final(output: Path) -> None:
        save_label_model(accelerator.unwrap_model(job.model), output, full)
        save_label_colours(output, lora.colours)
        if lora.class_mix:
            save_mix_bank(output, mix_bank(loss, lora.mix_of))

    job = TrainJob(
        kind="label-lora",
        model=sd.unet,
        batch=loss.batch,
        loss=step_loss,
        save_final=save_final,
        samples_per_step=effective_batch(lora),
        config_hash=train_section_hash(lora, training_prompt(cfg)),
        base_model_hash=model_hash(base),
        output=lora.output,
    )
    return run_training(
        job, lora, accelerator, resume=resume, max_steps=max_steps, progress=progress
    )
