"""The label as an input of a concat-conditioned image model: one-hot class channels.

A colourised RGB label asks the model to learn the palette first; one channel per raw
LoveDA value (no-data included, so the model can tell it apart) says each class outright.
At the latent's resolution the channels are folded like the pixels (pixel unshuffle, no
loss) for small scale factors, and area-averaged (class shares) for SD's factor 8, where
folding would make 512 channels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pipeline_lib.data.classes import NUM_CLASSES

VALUES = NUM_CLASSES + 1  # raw values 0 (no-data) .. 7
_MAX_FOLD = 2


def condition_channels(scale_factor: int) -> int:
    """Channels of :func:`label_condition` for a latent ``scale_factor`` times smaller."""
    return VALUES * scale_factor**2 if scale_factor <= _MAX_FOLD else VALUES


def label_condition(masks: torch.Tensor, scale_factor: int) -> torch.Tensor:
    """(B, H, W) raw LoveDA values -> (B, C, H/f, W/f) float one-hot class channels."""
    one_hot = F.one_hot(masks.long(), VALUES).permute(0, 3, 1, 2).float()
    if scale_factor <= _MAX_FOLD:
        return F.pixel_unshuffle(one_hot, scale_factor)
    return F.avg_pool2d(one_hot, scale_factor)
