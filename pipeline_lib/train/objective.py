"""The standard Stable Diffusion training objective, shared by both trainers.

VAE latents of the target picture, noise at a random timestep, and the scheduler's
target (epsilon or v) as the MSE target. Every random draw comes from a generator
seeded per sample from (seed, step, sample index), which is what makes resume exact.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler

from pipeline_lib.config import FactoryConfig, TrainConfig
from pipeline_lib.data.classes import LABEL_COLOURS, PALETTE
from pipeline_lib.errors import CheckpointError
from pipeline_lib.models.sd_folder import SDComponents
from pipeline_lib.train.pair_sampler import Batch, PairSampler

# XORed into a sample's seed for its self-conditioning coin.
_COIN_SALT = 0x5E1FC0
_OFFSET_SALT = 0x0FF5E7


def training_prompt(cfg: FactoryConfig) -> str:
    """generation.prompt plus the first style's prompt: the text the models learn."""
    style = next(iter(cfg.generation.styles.values()))
    return ", ".join(p for p in (cfg.generation.prompt, style.prompt) if p)


@torch.no_grad()
def encode_prompts(
    sd: SDComponents, prompts: list[str], device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """CLIP hidden states (len(prompts), 77, D), as the SD pipeline computes them."""
    ids = sd.tokenizer(
        prompts,
        padding="max_length",
        max_length=sd.tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids
    return sd.text_encoder(ids.to(device))[0].to(dtype)


class DiffusionLoss:
    """Inputs and target of one micro-batch, deterministic per (seed, step, sample).

    ``use_label`` picks what is noised: the colourised label (label generator) or the
    aerial image (ControlNet, whose condition is the label).
    """

    def __init__(
        self,
        cfg: FactoryConfig,
        sd: SDComponents,
        sampler: PairSampler,
        seed: int,
        batch_size: int,
        device: torch.device,
        dtype: torch.dtype,
        use_label: bool,
        noise_offset: float = 0.0,
    ):
        self.sd, self.sampler, self.seed, self.batch_size = sd, sampler, seed, batch_size
        self.device, self.dtype, self.use_label = device, dtype, use_label
        self.noise_offset = noise_offset
        self.noise_scheduler = DDPMScheduler.from_config(sd.scheduler.config)
        embeddings = encode_prompts(sd, [training_prompt(cfg), ""], device, dtype)
        self.prompt, self.empty = embeddings[:1], embeddings[1:]
        # Latent channels per colour: the pixel codec folds each colour's 2x2 block into
        # adjacent channels, so an offset shared by them shifts the colour, not a phase.
        patch = getattr(sd.vae.config, "patch_size", None)
        self.channels_per_offset = patch**2 if patch else 1

    @classmethod
    def for_training(
        cls,
        cfg: FactoryConfig,
        train: TrainConfig,
        sd: SDComponents,
        device: torch.device,
        dtype: torch.dtype,
        use_label: bool,
    ) -> DiffusionLoss:
        """The loss of one trainer, sampling ``cfg.data.root`` as ``train`` says; images
        are read only when they are what gets noised (the ControlNet's case)."""
        sampler = PairSampler(
            cfg.data.root,
            train.resolution,
            train.seed,
            with_images=not use_label,
            empty_prompt_prob=train.empty_prompt_prob,
            crop_scale=train.crop_scale,
            # The label generator draws its labels in the colours it will be read back with.
            colours=LABEL_COLOURS[cfg.label_lora.colours] if use_label else PALETTE,
        )
        return cls(
            cfg,
            sd,
            sampler,
            train.seed,
            train.batch_size,
            device,
            dtype,
            use_label,
            noise_offset=train.noise_offset,
        )

    def batch(self, step: int, micro: int) -> Batch:
        """The data of one micro-batch (run in DataLoader workers)."""
        return self.sampler.batch(step, micro, self.batch_size)

    def inputs(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Noisy latents, timesteps, text states and target of ``batch``."""
        pixels = (batch.label * 2 - 1) if self.use_label else batch.image
        with torch.no_grad():
            dist = self.sd.vae.encode(pixels.to(self.device, self.dtype)).latent_dist
        shape = dist.mean.shape[1:]
        steps = self.noise_scheduler.config.num_train_timesteps
        draws = [self._draw(int(seed), shape, steps) for seed in batch.seeds]
        sample, noise, t = (torch.stack(d).to(self.device) for d in zip(*draws, strict=True))
        if self.noise_offset:
            noise = noise + self.noise_offset * self._offsets(batch.seeds, shape).to(self.device)
        latents = (dist.mean + dist.std * sample.to(self.dtype)).float()
        latents = latents * self.sd.vae.config.scaling_factor
        noisy = self.noise_scheduler.add_noise(latents, noise, t)
        keep = batch.keep_prompt.to(self.device)[:, None, None]
        text = torch.where(keep, self.prompt, self.empty)
        kind = self.noise_scheduler.config.prediction_type
        if kind == "epsilon":
            target = noise
        elif kind == "v_prediction":
            target = self.noise_scheduler.get_velocity(latents, noise, t)
        else:
            raise CheckpointError(
                f"unsupported prediction_type {kind!r} in the base scheduler config"
            )
        return noisy.to(self.dtype), t, text, target

    def predicted_sample(
        self, noisy: torch.Tensor, t: torch.Tensor, output: torch.Tensor
    ) -> torch.Tensor:
        """The clean latents the model's ``output`` at ``noisy`` implies (its x0 estimate)."""
        alpha = self.noise_scheduler.alphas_cumprod.to(noisy.device)[t].float()
        alpha = alpha.view(-1, *[1] * (noisy.dim() - 1))
        kind = self.noise_scheduler.config.prediction_type
        if kind == "v_prediction":
            return alpha.sqrt() * noisy.float() - (1 - alpha).sqrt() * output.float()
        return (noisy.float() - (1 - alpha).sqrt() * output.float()) / alpha.sqrt()

    @staticmethod
    def self_condition_coins(batch: Batch, probability: float = 0.5) -> torch.Tensor:
        """Which samples of ``batch`` see the model's own estimate (True) rather than zeros;
        from a generator of their own, so the noise and timestep draws stay as they were."""
        coins = [
            torch.rand((), generator=torch.Generator().manual_seed(int(seed) ^ _COIN_SALT))
            for seed in batch.seeds
        ]
        return torch.stack(coins) < probability

    @staticmethod
    def _draw(seed: int, shape: torch.Size, steps: int) -> tuple[torch.Tensor, ...]:
        # Per-sample generators: the draws do not depend on how a step is split.
        gen = torch.Generator(device="cpu").manual_seed(seed)
        return (
            torch.randn(shape, generator=gen),
            torch.randn(shape, generator=gen),
            torch.randint(0, steps, (), generator=gen),
        )

    def _offsets(self, seeds, shape: torch.Size) -> torch.Tensor:
        """One normal draw per colour and sample, spread over the image (noise offset)."""
        colours = shape[0] // self.channels_per_offset
        draws = [
            torch.randn(colours, generator=torch.Generator().manual_seed(int(s) ^ _OFFSET_SALT))
            for s in seeds
        ]
        per_channel = torch.stack(draws).repeat_interleave(self.channels_per_offset, 1)
        return per_channel[:, :, None, None].expand(-1, *shape)

    @staticmethod
    def mse(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(prediction.float(), target.float(), reduction="mean")
