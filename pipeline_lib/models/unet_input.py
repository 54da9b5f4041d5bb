"""UNets whose input takes more than the noisy latent: extra channels concatenated to it.

SD's inpainting model widens its UNet's first convolution this way; here the extra channels
are the label's class maps (a concat image model) or the model's own previous estimate of
what it draws (a self-conditioned label model).
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import UNet2DConditionModel

from pipeline_lib.errors import CheckpointError

# diffusers' class embedding that reads a vector (a linear projection added to the time's).
VECTOR_EMBEDDING = "projection"


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


def vector_conditioned_unet(unet: UNet2DConditionModel, dim: int) -> UNet2DConditionModel:
    """``unet`` reading a ``dim``-vector through a projection class embedding whose output
    layer is zero, so that it starts out computing exactly what ``unet`` does."""
    conditioned = reconfigured_unet(
        unet, class_embed_type=VECTOR_EMBEDDING, projection_class_embeddings_input_dim=dim
    )
    missing, unexpected = conditioned.load_state_dict(unet.state_dict(), strict=False)
    if unexpected or any(not k.startswith("class_embedding.") for k in missing):
        raise CheckpointError(f"the base UNet does not fit a vector-conditioned one: {missing}")
    with torch.no_grad():
        conditioned.class_embedding.linear_2.weight.zero_()
        conditioned.class_embedding.linear_2.bias.zero_()
    return conditioned


def is_vector_conditioned(unet: UNet2DConditionModel) -> bool:
    """True for a UNet that reads a vector: a label model's class mix, an image model's
    tile style (which of the two, the model's role says)."""
    return unet.config.class_embed_type == VECTOR_EMBEDDING


def saved_vector_conditioned(folder: Path) -> bool:
    """True where the UNet saved in ``folder`` reads a vector (its weights unread)."""
    return UNet2DConditionModel.load_config(folder).get("class_embed_type") == VECTOR_EMBEDDING


def is_self_conditioned(unet: UNet2DConditionModel) -> bool:
    """True for a label UNet that takes its previous estimate beside the noisy latent."""
    return unet.config.in_channels == 2 * unet.config.out_channels
