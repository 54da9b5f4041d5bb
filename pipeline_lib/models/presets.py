"""Model presets: the one source of truth for the shapes of the SD components we build.

``tiny`` trains on two CPU cores in minutes; ``sd15-shape`` has Stable Diffusion 1.5's
exact shapes (random weights) so throughput can be measured without a download.
Each preset is a set of plain config dicts, so a test can check them without
instantiating anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pipeline_lib.errors import ConfigError
from pipeline_lib.models.tokenizer import MAX_LENGTH, byte_vocab

_SD_SCHEDULER: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "prediction_type": "epsilon",
}


@dataclass(frozen=True)
class Preset:
    """Config dicts for every component of one SD pipeline plus its ControlNet."""

    name: str
    unet: dict[str, Any]
    vae: dict[str, Any]
    text_encoder: dict[str, Any]
    scheduler: dict[str, Any] = field(default_factory=lambda: dict(_SD_SCHEDULER))
    # "AutoencoderKL" (trained by the vae stage) or "PixelShuffleAutoencoder" (exact).
    vae_class: str = "AutoencoderKL"

    @property
    def vae_scale_factor(self) -> int:
        if self.vae_class == "PixelShuffleAutoencoder":
            return int(self.vae["patch_size"])
        return 2 ** (len(self.vae["block_out_channels"]) - 1)


def _text_encoder(
    hidden: int,
    layers: int,
    heads: int,
    intermediate: int,
    vocab_size: int,
    projection_dim: int,
    max_length: int = MAX_LENGTH,
) -> dict[str, Any]:
    vocab = byte_vocab()
    return {
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "max_position_embeddings": max_length,
        "vocab_size": vocab_size,
        "projection_dim": projection_dim,
        "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-5,
        "bos_token_id": vocab["<|startoftext|>"],
        "eos_token_id": vocab["<|endoftext|>"],
        "pad_token_id": vocab["<|endoftext|>"],
    }


TINY = Preset(
    name="tiny",
    unet={
        "sample_size": 32,
        "in_channels": 4,
        "out_channels": 4,
        "block_out_channels": (32, 64),
        "layers_per_block": 2,
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
        "cross_attention_dim": 32,
        "attention_head_dim": 8,
        "norm_num_groups": 32,
    },
    # Scale factor 2, narrow and without attention: trained from scratch on 2 CPU cores
    # (pipeline_lib.train.vae) it keeps ~91% of label pixels after 780 steps where the
    # f=4 (16, 32, 32) VAE keeps 59% after 290 (f=2: 73%), and it runs 2x the steps/s
    # of the f=4 (32, 64, 64) one. The cost: 4x the latent area for the UNet.
    vae={
        "sample_size": 64,
        "in_channels": 3,
        "out_channels": 3,
        "latent_channels": 4,
        "block_out_channels": (16, 32),
        "layers_per_block": 1,
        "down_block_types": ("DownEncoderBlock2D",) * 2,
        "up_block_types": ("UpDecoderBlock2D",) * 2,
        "mid_block_add_attention": False,
        "norm_num_groups": 8,
    },
    text_encoder=_text_encoder(
        hidden=32,
        layers=2,
        heads=4,
        intermediate=64,
        vocab_size=len(byte_vocab()),
        projection_dim=32,
        # Byte-level tokens: room for the default prompt plus a style (77 would cut styles off).
        max_length=256,
    ),
)

# What followed its label and drew label layouts in the CPU probes (DESIGN.md): an
# SD-shaped UNet of (64, 96, 128) channels, one layer per block, cross-attention only at
# the lowest level (4.9M parameters), on v-prediction with the cosine schedule, sampled
# with DDIM on trailing timesteps. Its "VAE" is the exact 2x2 pixel fold, so labels and
# images reach the model and come back without loss and no VAE needs training.
TINY_PIXEL = Preset(
    name="tiny-pixel",
    unet={
        "sample_size": 32,
        "in_channels": 12,
        "out_channels": 12,
        "block_out_channels": (64, 96, 128),
        "layers_per_block": 1,
        "down_block_types": ("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        "cross_attention_dim": 32,
        "attention_head_dim": 8,
        "norm_num_groups": 32,
    },
    vae={"in_channels": 3, "patch_size": 2, "scaling_factor": 1.0},
    vae_class="PixelShuffleAutoencoder",
    text_encoder=TINY.text_encoder,
    scheduler={
        "num_train_timesteps": 1000,
        "beta_schedule": "squaredcos_cap_v2",
        "clip_sample": False,
        "set_alpha_to_one": False,
        "timestep_spacing": "trailing",
        "steps_offset": 1,
        "prediction_type": "v_prediction",
    },
)

SD15_SHAPE = Preset(
    name="sd15-shape",
    unet={
        "sample_size": 64,
        "in_channels": 4,
        "out_channels": 4,
        "block_out_channels": (320, 640, 1280, 1280),
        "layers_per_block": 2,
        "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        "cross_attention_dim": 768,
        "attention_head_dim": 8,
        "norm_num_groups": 32,
    },
    vae={
        "sample_size": 512,
        "in_channels": 3,
        "out_channels": 3,
        "latent_channels": 4,
        "block_out_channels": (128, 256, 512, 512),
        "layers_per_block": 2,
        "down_block_types": ("DownEncoderBlock2D",) * 4,
        "up_block_types": ("UpDecoderBlock2D",) * 4,
        "norm_num_groups": 32,
        "scaling_factor": 0.18215,
    },
    text_encoder=_text_encoder(
        hidden=768, layers=12, heads=12, intermediate=3072, vocab_size=49408, projection_dim=768
    ),
)

# A LoRA on the attention projections only cannot move a randomly initialised UNet
# (measured: loss 1.08 -> 1.00 in 300 steps on one fixed tile); a LoRA on every
# projection and convolution learns it (0.77 -> 0.16 in 80 steps). Use these targets
# when the base is a from-scratch preset rather than real SD weights.
FROM_SCRATCH_LORA_TARGETS: tuple[str, ...] = (
    "to_q",
    "to_k",
    "to_v",
    "to_out.0",
    "proj_in",
    "proj_out",
    "ff.net.0.proj",
    "ff.net.2",
    "conv1",
    "conv2",
    "conv_in",
    "conv_out",
    "time_emb_proj",
)

ATTENTION_LORA_TARGETS: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")
# Named target sets for ``label_lora.target_modules``: the attention projections for real SD
# weights (the research's LoRA), every projection and convolution for a from-scratch base.
LORA_TARGETS: dict[str, tuple[str, ...]] = {
    "attention": ATTENTION_LORA_TARGETS,
    "from-scratch": FROM_SCRATCH_LORA_TARGETS,
}

PRESETS: dict[str, Preset] = {p.name: p for p in (TINY, TINY_PIXEL, SD15_SHAPE)}


def get_preset(name: str) -> Preset:
    """The preset called ``name``; an unknown name is a ConfigError listing the known ones."""
    if name not in PRESETS:
        raise ConfigError(f"unknown model preset {name!r}; known: {', '.join(PRESETS)}")
    return PRESETS[name]
