"""UNets whose input takes more than the noisy latent: extra channels concatenated to it.

SD's inpainting model widens its UNet's first convolution this way; here the extra channels
are the label's class maps (a concat image model) or the model's own previous estimate of
what it draws (a self-conditioned label model).
"""

from __future__ import annotations

import torch
from diffusers import UNet2DConditionModel


def reconfigured_unet(unet: UNet2DConditionModel, **changes) -> UNet2DConditionModel:
    """A new, untrained UNet of ``unet``'s config with ``changes``."""
    # diffusers resets the keys listed in _use_default_values (those the loaded config.json
    # lacked, as SD 1.5's lacks class_embed_type) to their defaults: leave it out.
    config = {k: v for k, v in unet.config.items() if k != "_use_default_values"}
    return UNet2DConditionModel.from_config({**config, **changes})


def widened_unet(unet: UNet2DConditionModel, extra: int) -> UNet2DConditionModel:
    """``unet`` with ``extra`` input channels appended, zero-weighted so that it starts out
    computing exactly what ``unet`` does."""
    widened = reconfigured_unet(unet, in_channels=unet.config.in_channels + extra)
    state = unet.state_dict()
    weight = state.pop("conv_in.weight")
    widened.load_state_dict(state, strict=False)
    with torch.no_grad():
        widened.conv_in.weight.zero_()
        widened.conv_in.weight[:, : weight.shape[1]] = weight
        widened.conv_in.bias.copy_(state["conv_in.bias"])
    return widened


def is_self_conditioned(unet: UNet2DConditionModel) -> bool:
    """True for a label UNet that takes its previous estimate beside the noisy latent."""
    return unet.config.in_channels == 2 * unet.config.out_channels
