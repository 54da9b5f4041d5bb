"""Asymmetric time intervals for the label pass (Chen et al., "Analog Bits", 2023).

While sampling, the denoiser is told a later (noisier) timestep than the one the sample is
at, by ``generation.label_time_shift`` training timesteps. A model that over-estimates
the noise removes more of it at each step, which the paper found to sharpen generated bits.
Done as a forward pre-hook on the UNet, so every diffusers pipeline and scheduler keeps its
own loop; the hook is removed when the pass ends.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch


@contextmanager
def shifted_timesteps(
    unet: torch.nn.Module, shift: int, last: int = 999, below: int = 1000
) -> Iterator[None]:
    """While open, ``unet`` sees each timestep under ``below`` plus ``shift`` (at most
    ``last``); later timesteps as they are."""
    if not shift:
        yield
        return

    def later(_: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict]:
        if len(args) > 1:
            args = (args[0], _shift(args[1], shift, last, below), *args[2:])
        else:
            kwargs = {**kwargs, "timestep": _shift(kwargs["timestep"], shift, last, below)}
        return args, kwargs

    handle = unet.register_forward_pre_hook(later, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def _shift(timestep: Any, shift: int, last: int, below: int) -> Any:
    if isinstance(timestep, torch.Tensor):
        return torch.where(timestep < below, (timestep + shift).clamp(max=last), timestep)
    return min(timestep + shift, last) if timestep < below else timestep
