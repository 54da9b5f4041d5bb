"""Image sampling with a concat-conditioned UNet: the label's class channels beside the latent.

diffusers has no pipeline for a UNet whose extra input channels are class maps (its
inpainting pipeline expects a mask and a masked image), so this is one: the SD text-to-image
loop, with classifier-free guidance on label and prompt together (the unconditional branch
sees zero class channels and the empty prompt, as in training).
"""

from __future__ import annotations

import numpy as np
import torch
from diffusers import DiffusionPipeline, UNet2DConditionModel
from diffusers.utils.torch_utils import randn_tensor

from pipeline_lib.models.label_condition import condition_channels, label_condition
from pipeline_lib.models.sd_folder import sd_scale_factor


class LabelConcatPipeline(DiffusionPipeline):
    """Text + label-map to image; ``unet.config.in_channels`` = latent + class channels."""

    model_cpu_offload_seq = "text_encoder->unet->vae"

    def __init__(self, vae, text_encoder, tokenizer, unet: UNet2DConditionModel, scheduler):
        super().__init__()
        self.register_modules(
            vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler
        )
        self.scale_factor = sd_scale_factor(vae)
        self.latent_channels = unet.config.out_channels
        expected = self.latent_channels + condition_channels(self.scale_factor)
        if unet.config.in_channels != expected:
            raise ValueError(
                f"unet.config.in_channels is {unet.config.in_channels}; a concat image model "
                f"on this VAE needs {expected} (latent {self.latent_channels} + classes)"
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

    @torch.no_grad()
    def __call__(
        self,
        prompt: list[str],
        masks: np.ndarray,
        num_inference_steps: int = 20,
        guidance_scale: float = 3.0,
        generator: list[torch.Generator] | None = None,
        negative_prompt: list[str] | None = None,
    ) -> np.ndarray:
        """(B, H, W) raw LoveDA masks -> (B, H, W, 3) float images in [0, 1]."""
        masks = np.asarray(masks)
        if masks.ndim != 3 or len(prompt) != len(masks):
            raise ValueError(
                f"masks must be (B, H, W) with one prompt each; got {masks.shape} "
                f"for {len(prompt)} prompts"
            )
        batch, height, width = masks.shape
        if height % self.scale_factor or width % self.scale_factor:
            raise ValueError(f"mask size {height}x{width} is not a multiple of {self.scale_factor}")
        dtype, device = self.unet.dtype, self.device
        cond = label_condition(torch.from_numpy(masks.astype(np.int64)), self.scale_factor)
        cond = cond.to(device, dtype)
        text = self._encode(list(prompt))
        guided = guidance_scale > 1
        if guided:
            text = torch.cat([self._encode(negative_prompt or [""] * batch), text])
            cond = torch.cat([torch.zeros_like(cond), cond])
        shape = (
            batch,
            self.latent_channels,
            height // self.scale_factor,
            width // self.scale_factor,
        )
        latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        latents = latents * self.scheduler.init_noise_sigma
        for t in self.progress_bar(self.scheduler.timesteps):
            model_in = torch.cat([latents] * 2) if guided else latents
            model_in = self.scheduler.scale_model_input(model_in, t)
            out = self.unet(torch.cat([model_in, cond], 1), t, encoder_hidden_states=text).sample
            if guided:
                uncond, conditioned = out.chunk(2)
                out = uncond + guidance_scale * (conditioned - uncond)
            latents = self.scheduler.step(out, t, latents).prev_sample
        images = self.vae.decode(latents / self.vae.config.scaling_factor).sample
        return (images / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).float().cpu().numpy()
