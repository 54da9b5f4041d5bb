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
_SOFT_EDGE_SALT = 0x50F7ED
# Below this noise level a soft-edge crop's loss is scaled down by (sigma / it)^2: there the
# gap between its input's edge and the sharp target is large against the noise and would
# outweigh every other crop of the batch (the v target moves by about 0.5 / sigma at an edge).
_SOFT_EDGE_SIGMA = 0.3


def soft_edges(pixels: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) pixels under a 3x3 binomial blur: each edge softened over about one pixel
    on either side, as a label model's sampling trajectory leaves them (bench.label_sharpness)."""
    kernel = torch.tensor([0.25, 0.5, 0.25], dtype=pixels.dtype, device=pixels.device)
    channels = pixels.shape[1]
    kernel = (kernel[:, None] * kernel[None]).expand(channels, 1, 3, 3)
    return F.conv2d(F.pad(pixels, (1, 1, 1, 1), mode="replicate"), kernel, groups=channels)


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
        soft_edges: float = 0.0,
    ):
        self.sd, self.sampler, self.seed, self.batch_size = sd, sampler, seed, batch_size
        self.device, self.dtype, self.use_label = device, dtype, use_label
        self.noise_offset, self.soft_edges = noise_offset, soft_edges
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
            soft_edges=getattr(train, "soft_edges", 0.0),
        )

    def batch(self, step: int, micro: int) -> Batch:
        """The data of one micro-batch (run in DataLoader workers)."""
        return self.sampler.batch(step, micro, self.batch_size)

    def inputs(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Noisy latents, timesteps, text states and target of ``batch``."""
        pixels = ((batch.label * 2 - 1) if self.use_label else batch.image).to(self.device)
        with torch.no_grad():
            dist = self.sd.vae.encode(pixels.to(self.dtype)).latent_dist
        shape = dist.mean.shape[1:]
        steps = self.noise_scheduler.config.num_train_timesteps
        draws = [self._draw(int(seed), shape, steps) for seed in batch.seeds]
        sample, noise, t = (torch.stack(d).to(self.device) for d in zip(*draws, strict=True))
        if self.noise_offset:
            noise = noise + self.noise_offset * self._offsets(batch.seeds, shape).to(self.device)
        scale = self.sd.vae.config.scaling_factor
        latents = (dist.mean + dist.std * sample.to(self.dtype)).float() * scale
        soft = self.soft_edge_coins(batch).to(self.device)[:, None, None, None]
        seen = latents
        if soft.any():
            with torch.no_grad():
                blurred = self.sd.vae.encode(soft_edges(pixels).to(self.dtype)).latent_dist
            seen = (blurred.mean + blurred.std * sample.to(self.dtype)).float() * scale
            seen = torch.where(soft, seen, latents)
        noisy = self.noise_scheduler.add_noise(seen, noise, t)
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
        if soft.any():
            # The target whose clean estimate is the sharp latents, from the soft input.
            alpha = self._alphas(t, noisy)
            if kind == "epsilon":
                sharpening = (noisy - alpha.sqrt() * latents) / (1 - alpha).sqrt()
            else:
                sharpening = (alpha.sqrt() * noisy - latents) / (1 - alpha).sqrt()
            target = torch.where(soft, sharpening, target)
        return noisy.to(self.dtype), t, text, target

    def _alphas(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """The cumulative alphas of timesteps ``t``, shaped to broadcast over ``like``."""
        alpha = self.noise_scheduler.alphas_cumprod.to(like.device)[t].float()
        return alpha.view(-1, *[1] * (like.dim() - 1))

    def soft_edge_coins(self, batch: Batch) -> torch.Tensor:
        """Which samples of ``batch`` are noised from their label with soft edges
        (``label_lora.soft_edges``); from generators of their own, so that the other draws
        stay as they were."""
        if not self.soft_edges:
            return torch.zeros(len(batch.seeds), dtype=torch.bool)
        coins = [
            torch.rand((), generator=torch.Generator().manual_seed(int(seed) ^ _SOFT_EDGE_SALT))
            for seed in batch.seeds
        ]
        return torch.stack(coins) < self.soft_edges

    def sample_weights(self, batch: Batch, t: torch.Tensor) -> torch.Tensor:
        """Per-sample loss weights: 1, but (sigma / 0.3)^2 for a soft-edge sample at lower
        noise (see _SOFT_EDGE_SIGMA)."""
        sigma = (1 - self.noise_scheduler.alphas_cumprod[t.cpu()].float()).sqrt()
        weights = (sigma / _SOFT_EDGE_SIGMA).clamp(max=1) ** 2
        return torch.where(self.soft_edge_coins(batch), weights, torch.ones_like(weights))

    def predicted_sample(
        self, noisy: torch.Tensor, t: torch.Tensor, output: torch.Tensor
    ) -> torch.Tensor:
        """The clean latents the model's ``output`` at ``noisy`` implies (its x0 estimate)."""
        alpha = self._alphas(t, noisy)
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
    def mse(
        prediction: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Mean squared error; with ``weights``, each sample's mean weighted by its own."""
        if weights is None:
            return F.mse_loss(prediction.float(), target.float(), reduction="mean")
        per_sample = F.mse_loss(prediction.float(), target.float(), reduction="none")
        per_sample = per_sample.flatten(1).mean(1)
        return (per_sample * weights.to(per_sample.device)).mean()
