"""A label model told which classes to draw: its UNet reads a class-mix vector.

A label model trained from scratch draws the classes in the proportions it finds easiest
(on the genuine tiles: agriculture on 0.70 of pixels against Train's 0.485, buildings on
0.0004 against 0.019), and choosing among its draws cannot add what it never draws. Told
each training crop's class shares, it learns p(label | mix); sampled with the shares of
Train crops, it draws Train's class mix. The vector enters as diffusers' projection class
embedding (``class_embed_type="projection"``), added to the timestep embedding; the bank
of Train crop mixes it is sampled with is saved beside the model, so a generator needs no
Train split. Told instead the shares of each crop's whole source tile (``mix_of: tile``),
it learns what a crop of such a scene holds, and the bank holds the Train tiles' mixes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from diffusers import UNet2DConditionModel

from pipeline_lib.data.classes import NUM_CLASSES, class_fractions
from pipeline_lib.errors import CheckpointError
from pipeline_lib.models.unet_input import vector_conditioned_unet

MIX_BANK = "class_mixes.json"
# XORed into a draw's seed for the mix it is drawn with: the noise draws stay as they were.
_MIX_SALT = 0x3A1C5


def class_mix(masks: torch.Tensor) -> torch.Tensor:
    """(B, H, W) raw LoveDA values -> (B, NUM_CLASSES) shares of the labelled pixels
    (no-data excluded; a crop without labelled pixels gives zeros)."""
    shares = [list(class_fractions(mask).values()) for mask in masks.numpy()]
    return torch.tensor(shares, dtype=torch.float32)


def mix_conditioned_unet(unet: UNet2DConditionModel) -> UNet2DConditionModel:
    """``unet`` reading a class mix too, starting out computing exactly what it did."""
    return vector_conditioned_unet(unet, NUM_CLASSES)


def save_mix_bank(folder: Path, mixes: torch.Tensor) -> None:
    """The Train crop mixes a generator samples the model with, beside the model."""
    rows = [[round(float(v), 5) for v in row] for row in mixes]
    (Path(folder) / MIX_BANK).write_text(json.dumps(rows))


def load_mix_bank(folder: Path) -> np.ndarray:
    """The saved bank; a clear error where the model folder lacks it."""
    path = Path(folder) / MIX_BANK
    if not path.is_file():
        raise CheckpointError(
            f"{path}: a mix-conditioned label model needs the class mixes it was trained "
            "with; train it again (`lfactory train label-lora --no-resume`)"
        )
    bank = np.asarray(json.loads(path.read_text()), dtype=np.float32)
    if bank.ndim != 2 or bank.shape[1] != NUM_CLASSES or not len(bank):
        raise CheckpointError(f"{path}: expected rows of {NUM_CLASSES} class shares")
    return bank


def draw_mixes(bank: np.ndarray, seeds: list[int]) -> torch.Tensor:
    """One bank row per draw, picked by the draw's seed (a replayed draw gets its mix)."""
    picks = [np.random.default_rng(seed ^ _MIX_SALT).integers(len(bank)) for seed in seeds]
    return torch.from_numpy(bank[picks])
