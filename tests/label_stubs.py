"""A Generator whose labels and images come from seeded numpy code, not diffusion models.

Everything but the two model calls is the real generator: draws, QA verdicts as given,
selection toward class targets, near-duplicate checks, manifest records. Labels depend
only on what ``layout`` derives from a draw, so a test decides which draws repeat.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from pipeline_lib.config import FactoryConfig
from pipeline_lib.data.classes import VALUE_BY_NAME
from pipeline_lib.generate.qa import LabelQA
from pipeline_lib.generate.sampler import Draw, Generator

SIZE = 16


def banded_label(seed: int, size: int = SIZE) -> np.ndarray:
    """Background with a barren band of 0..6 rows on top and a water band of 0..3 at the
    bottom, their heights drawn from ``seed``: barren 3/16 and water 1.5/16 on average."""
    rng = np.random.default_rng(seed)
    mask = np.full((size, size), VALUE_BY_NAME["background"], np.uint8)
    mask[: rng.integers(0, 7)] = VALUE_BY_NAME["barren"]
    mask[size - rng.integers(0, 4) :] = VALUE_BY_NAME["water"]
    return mask


class StubGenerator(Generator):
    """Generator with ``layout(draw) -> raw mask`` for labels and seeded noise for images."""

    def __init__(self, cfg: FactoryConfig, layout: Callable[[Draw], np.ndarray] | None = None):
        self.cfg = cfg
        self.device = "cpu"
        self.hashes = dict.fromkeys(
            ("label_model_hash", "lora_hash", "image_model_hash", "controlnet_hash"), "stub"
        )
        self.layout = layout or (lambda draw: banded_label(draw.seed))

    def sample_labels(self, draws: list[Draw]) -> list[tuple[np.ndarray, np.ndarray, LabelQA]]:
        labels = []
        for draw in draws:
            mask = self.layout(draw)
            labels.append((mask, mask, LabelQA(0.0, 0.0, int(mask.size), None)))
        return labels

    def sample_images(self, draws: list[Draw], masks: list[np.ndarray]) -> np.ndarray:
        size = self.cfg.generation.resolution
        images = [
            np.random.default_rng(d.seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
            for d in draws
        ]
        return np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8)
