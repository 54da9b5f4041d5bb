"""An image model told each sample's colours: its UNet reads a tile-style vector.

An image model that sees 64 px at a time draws each class in about one colour on every
tile: on the synthetic scenes the drawn classes varied 0.35 to 0.76 times as much between
tiles as the real ones (README, "Where Gen. loses"). Told the style of each training
crop's whole source tile, the mean colour of each class on it, the model learns
p(image | label, style); sampled with Train tiles' styles it draws their spread, and every
window of a sample drawn in windows shares one. The vector enters as diffusers' projection
class embedding, as the label model's class mix does (``models.class_mix``). The bank of
Train tile styles is saved beside the model with each tile's class mix: a sample takes the
style of one of the Train tiles whose mix is nearest its label's, so that a scene of roofs
and roads gets the colours of a town. Measured: the spread comes back, the segmenter
trained on the images gains less than one seed's spread (README, "Tile styles").
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from diffusers import UNet2DConditionModel

from pipeline_lib.data.classes import CLASSES, MAX_VALUE, NO_DATA, NUM_CLASSES, class_fractions
from pipeline_lib.errors import CheckpointError
from pipeline_lib.models.unet_input import vector_conditioned_unet

STYLE_BANK = "tile_styles.json"
STYLE_DIM = 3 * NUM_CLASSES
# A sample's style is drawn among this many Train tiles of the nearest class mix.
NEAREST = 3
# XORed into a draw's seed for its style pick: the noise draws stay as they were.
_STYLE_SALT = 0x51E7


def tile_style(mask: np.ndarray, image: np.ndarray) -> torch.Tensor:
    """(H, W) raw LoveDA values and their (H, W, 3) uint8 image -> the mean RGB of each
    class in [-1, 1], classes in order (STYLE_DIM,); a class the tile lacks takes the mean
    of the tile's labelled pixels, so the vector always says the tile's overall colour."""
    values = mask.reshape(-1).astype(np.int64)
    pixels = image.reshape(-1, 3).astype(np.float64)
    counts = np.bincount(values, minlength=MAX_VALUE + 1)
    sums = np.stack([np.bincount(values, pixels[:, c], MAX_VALUE + 1) for c in range(3)], 1)
    labelled = counts[NO_DATA + 1 :].sum()
    overall = sums[NO_DATA + 1 :].sum(0) / labelled if labelled else pixels.mean(0)
    means = [sums[c.value] / counts[c.value] if counts[c.value] else overall for c in CLASSES]
    return torch.tensor(np.concatenate(means) / 127.5 - 1, dtype=torch.float32)


def style_conditioned_unet(unet: UNet2DConditionModel) -> UNet2DConditionModel:
    """``unet`` reading a tile style too, starting out computing exactly what it did."""
    return vector_conditioned_unet(unet, STYLE_DIM)


def save_style_bank(folder: Path, mixes: torch.Tensor, styles: torch.Tensor) -> None:
    """Each Train tile's class mix and style, beside the model that is sampled with them."""
    rows = [
        {"mix": [round(float(v), 5) for v in mix], "style": [round(float(v), 5) for v in style]}
        for mix, style in zip(mixes, styles, strict=True)
    ]
    (Path(folder) / STYLE_BANK).write_text(json.dumps(rows))


class StyleBank:
    """Train tiles' class mixes and styles, read from beside a style-conditioned model."""

    def __init__(self, mixes: np.ndarray, styles: np.ndarray):
        self.mixes, self.styles = mixes, styles

    @classmethod
    def load(cls, folder: Path) -> StyleBank:
        """The saved bank; a clear error where the model folder lacks it or it is malformed."""
        path = Path(folder) / STYLE_BANK
        if not path.is_file():
            raise CheckpointError(
                f"{path}: a style-conditioned image model needs the Train tile styles it was "
                "trained with; train it again (`lfactory train controlnet --no-resume`)"
            )
        try:
            rows = json.loads(path.read_text())
            mixes = np.asarray([row["mix"] for row in rows], dtype=np.float32)
            styles = np.asarray([row["style"] for row in rows], dtype=np.float32)
        except (ValueError, KeyError, TypeError) as err:
            raise CheckpointError(f"{path}: unreadable style bank ({err})") from err
        if (
            not len(rows)
            or mixes.shape != (len(rows), NUM_CLASSES)
            or styles.shape != (len(rows), STYLE_DIM)
        ):
            raise CheckpointError(
                f"{path}: expected rows of {NUM_CLASSES} class shares and {STYLE_DIM} colours"
            )
        return cls(mixes, styles)

    def pick(self, masks: np.ndarray, seeds: list[int]) -> torch.Tensor:
        """One style per (H, W) raw mask: a seeded pick among the NEAREST tiles whose class
        mix is closest (L1) to the mask's (a replayed draw gets its style back)."""
        picks = []
        for mask, seed in zip(masks, seeds, strict=True):
            mix = np.fromiter(class_fractions(mask).values(), np.float32, NUM_CLASSES)
            nearest = np.argsort(np.abs(self.mixes - mix).sum(1), kind="stable")[:NEAREST]
            picks.append(nearest[np.random.default_rng(seed ^ _STYLE_SALT).integers(len(nearest))])
        return torch.from_numpy(self.styles[picks])
