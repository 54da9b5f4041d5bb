"""Sampling loops for UNets that read more than the noisy latent and the prompt.

diffusers has no pipeline for these: its inpainting pipeline expects a mask and a masked
image. ``LabelConcatPipeline`` draws an image beside the label's class channels, with
classifier-free guidance on label and prompt together (the unconditional branch sees zero
class channels and the empty prompt, as in training). ``LabelPipeline`` draws a label map
with a label UNet that reads its estimate of the clean label from the step before beside
the noisy latent (zeros at the first step, as half of training sees), a class-mix vector
(``models.class_mix``), or both.
"""

from __future__ import annotations

import inspect

import numpy as np
import torch
from diffusers import DiffusionPipeline, UNet2DConditionModel
from diffusers.utils.torch_utils import randn_tensor

from pipeline_lib.models.label_condition import condition_channels, label_condition
from pipeline_lib.models.sd_folder import sd_scale_factor
from pipeline_lib.models.unet_input import is_self_conditioned, is_vector_conditioned


class _WideInputPipeline(DiffusionPipeline):
    """Text encoding, the initial noise and decoding shared by both loops."""

    model_cpu_offload_seq = "text_encoder->unet->vae"

    def __init__(self, vae, text_encoder, tokenizer, unet: UNet2DConditionModel, scheduler):
        super().__init__()
        self.register_modules(
            vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler
        )
        self.scale_factor = sd_scale_factor(vae)
        self.latent_channels = unet.config.out_channels

    def _check_input_channels(self, extra: int, what: str) -> None:
        expected = self.latent_channels + extra
        if self.unet.config.in_channels != expected:
            raise ValueError(
                f"unet.config.in_channels is {self.unet.config.in_channels}; {what} on this "
                f"VAE needs {expected} (latent {self.latent_channels} + {extra})"
            )

    @torch.no_grad()
    def _encode(self, prompts: list[str]) -> torch.Tensor:
        ids = self.tokenizer(
            prompts,
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        return self.text_encoder(ids.to(self.device))[0].to(self.unet.dtype)

    def _text(self, prompt: list[str], negative_prompt: list[str] | None, guided: bool):
        text = self._encode(list(prompt))
        if guided:
            text = torch.cat([self._encode(negative_prompt or [""] * len(prompt)), text])
        return text

    def _noise(self, batch: int, height: int, width: int, generator) -> torch.Tensor:
        """The initial latents; call after ``scheduler.set_timesteps``."""
        if height % self.scale_factor or width % self.scale_factor:
            raise ValueError(f"size {height}x{width} is not a multiple of {self.scale_factor}")
        factor = self.scale_factor
        shape = (batch, self.latent_channels, height // factor, width // factor)
        dtype = self.unet.dtype
        latents = randn_tensor(shape, generator=generator, device=self.device, dtype=dtype)
        # After set_timesteps: a sigma scheduler's initial noise scale depends on them.
        return latents * self.scheduler.init_noise_sigma

    def _step_kwargs(self, generator) -> dict:
        # A stochastic scheduler (DDPM) draws its step noise from the samples' own
        # generators, as diffusers' pipelines pass them, so a seed gives the same sample.
        # Read once per call, as diffusers' prepare_extra_step_kwargs does, not per step.
        if "generator" in inspect.signature(self.scheduler.step).parameters:
            return {"generator": generator}
        return {}

    def _decode(self, latents: torch.Tensor) -> np.ndarray:
        images = self.vae.decode(latents / self.vae.config.scaling_factor).sample
        return (images / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).float().cpu().numpy()


class LabelConcatPipeline(_WideInputPipeline):
    """Text + label-map (+ a tile style, ``models.tile_style``) to image;
    ``unet.config.in_channels`` = latent + class channels."""

    def __init__(self, vae, text_encoder, tokenizer, unet: UNet2DConditionModel, scheduler):
        super().__init__(vae, text_encoder, tokenizer, unet, scheduler)
        self._check_input_channels(condition_channels(self.scale_factor), "a concat image model")
        self.style_conditioned = is_vector_conditioned(unet)

    @torch.no_grad()
    def __call__(
        self,
        prompt: list[str],
        masks: np.ndarray,
        num_inference_steps: int = 20,
        guidance_scale: float = 3.0,
        generator: list[torch.Generator] | None = None,
        negative_prompt: list[str] | None = None,
        style: torch.Tensor | None = None,
    ) -> np.ndarray:
        """(B, H, W) raw LoveDA masks -> (B, H, W, 3) float images in [0, 1]; ``style``
        (B, STYLE_DIM) is required by a style-conditioned model, the unconditional branch
        sees zeros."""
        masks = np.asarray(masks)
        if masks.ndim != 3 or len(prompt) != len(masks):
            raise ValueError(
                f"masks must be (B, H, W) with one prompt each; got {masks.shape} "
                f"for {len(prompt)} prompts"
            )
        if self.style_conditioned != (style is not None):
            raise ValueError(
                "a style-conditioned image model needs style, and only such a model takes it"
            )
        batch, height, width = masks.shape
        self.scheduler.set_timesteps(num_inference_steps, device=self.device)
        step_kwargs = self._step_kwargs(generator)
        latents = self._noise(batch, height, width, generator)
        cond = label_condition(torch.from_numpy(masks.astype(np.int64)), self.scale_factor)
        cond = cond.to(self.device, self.unet.dtype)
        guided = guidance_scale > 1
        text = self._text(prompt, negative_prompt, guided)
        if style is not None:
            style = style.to(self.device, self.unet.dtype)
        if guided:
            cond = torch.cat([torch.zeros_like(cond), cond])
            style = None if style is None else torch.cat([torch.zeros_like(style), style])
        for t in self.progress_bar(self.scheduler.timesteps):
            model_in = torch.cat([latents] * 2) if guided else latents
            model_in = self.scheduler.scale_model_input(model_in, t)
            out = self.unet(
                torch.cat([model_in, cond], 1), t, encoder_hidden_states=text, class_labels=style
            ).sample
            if guided:
                uncond, conditioned = out.chunk(2)
                out = uncond + guidance_scale * (conditioned - uncond)
            latents = self.scheduler.step(out, t, latents, **step_kwargs).prev_sample
        return self._decode(latents)


class LabelPipeline(_WideInputPipeline):
    """Text to label map for a label UNet that reads more than the noisy latent and text:
    its previous estimate of the clean label beside the latent (``in_channels`` twice the
    latent), a class-mix vector (``class_embed_type="projection"``), or both."""

    def __init__(self, vae, text_encoder, tokenizer, unet: UNet2DConditionModel, scheduler):
        super().__init__(vae, text_encoder, tokenizer, unet, scheduler)
        self.self_conditioned = is_self_conditioned(unet)
        extra = self.latent_channels if self.self_conditioned else 0
        self._check_input_channels(extra, "a label model")
        self.mix_conditioned = is_vector_conditioned(unet)

    @torch.no_grad()
    def __call__(
        self,
        prompt: list[str],
        height: int,
        width: int,
        num_inference_steps: int = 20,
        guidance_scale: float = 1.0,
        generator: list[torch.Generator] | None = None,
        negative_prompt: list[str] | None = None,
        class_mix: torch.Tensor | None = None,
    ) -> np.ndarray:
        """(B, H, W, 3) float label maps in [0, 1], one per prompt; ``class_mix`` (B, C)
        is required by a mix-conditioned model, the unconditional branch sees zeros."""
        if self.mix_conditioned != (class_mix is not None):
            raise ValueError(
                "a mix-conditioned label model needs class_mix, and only such a model takes it"
            )
        self.scheduler.set_timesteps(num_inference_steps, device=self.device)
        step_kwargs = self._step_kwargs(generator)
        latents = self._noise(len(prompt), height, width, generator)
        guided = guidance_scale > 1
        text = self._text(prompt, negative_prompt, guided)
        if class_mix is not None:
            class_mix = class_mix.to(self.device, self.unet.dtype)
            if guided:
                class_mix = torch.cat([torch.zeros_like(class_mix), class_mix])
        estimate = torch.zeros_like(latents)
        for t in self.progress_bar(self.scheduler.timesteps):
            model_in = self.scheduler.scale_model_input(latents, t)
            if self.self_conditioned:
                model_in = torch.cat([model_in, estimate], 1)
            if guided:
                model_in = torch.cat([model_in] * 2)
            out = self.unet(model_in, t, encoder_hidden_states=text, class_labels=class_mix).sample
            if guided:
                uncond, conditioned = out.chunk(2)
                out = uncond + guidance_scale * (conditioned - uncond)
            step = self.scheduler.step(out, t, latents, **step_kwargs)
            latents = step.prev_sample
            if self.self_conditioned:
                estimate = _clean_estimate(step, self.scheduler)
        return self._decode(latents)


def _clean_estimate(step, scheduler) -> torch.Tensor:
    estimate = getattr(step, "pred_original_sample", None)
    if estimate is None:
        raise ValueError(
            f"{type(scheduler).__name__} reports no estimate of the clean sample; "
            "a self-conditioned label model needs one (ddpm, ddim, euler)"
        )
    return estimate
