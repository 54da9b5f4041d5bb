"""LoveDA's classes, raw mask values and palette: the one source of truth.

Raw values as released: 0 is no-data (ignored in training and metrics), 1..7 are the
classes. mmsegmentation's LoveDADataset reduces 1..7 to 0..6 and 0 to 255.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LandCoverClass:
    value: int
    name: str
    color: tuple[int, int, int]


NO_DATA = 0
# mmsegmentation's ignore index after reduce_zero_label.
IGNORE_INDEX = 255

CLASSES: tuple[LandCoverClass, ...] = (
    LandCoverClass(1, "background", (255, 255, 255)),
    LandCoverClass(2, "building", (255, 0, 0)),
    LandCoverClass(3, "road", (255, 255, 0)),
    LandCoverClass(4, "water", (0, 0, 255)),
    LandCoverClass(5, "barren", (159, 129, 183)),
    LandCoverClass(6, "forest", (0, 255, 0)),
    LandCoverClass(7, "agriculture", (255, 195, 128)),
)
NUM_CLASSES = len(CLASSES)
CLASS_NAMES: tuple[str, ...] = tuple(c.name for c in CLASSES)
MAX_VALUE = CLASSES[-1].value
NO_DATA_COLOR = (0, 0, 0)

# Row v is the colour of raw value v (row 0: no-data, black, as in LoveDA's own masks).
PALETTE = np.array([NO_DATA_COLOR, *(c.color for c in CLASSES)], dtype=np.uint8)
PALETTE.setflags(write=False)

VALUE_BY_NAME = {c.name: c.value for c in CLASSES}

# The colours a label generator draws. ``palette`` is mmsegmentation's, as the research
# colourises masks for SD. ``bits`` puts each raw value on a corner of the RGB cube (its three
# bits), so every two classes differ by a whole channel: background (0,0,255) and agriculture
# (255,255,255), the two largest classes, are two channels apart where the palette has them
# 1.1 channels apart, and a model unsure between them draws an off-code blend that shows.
BIT_COLOURS = np.array(
    [[(v >> 2 & 1) * 255, (v >> 1 & 1) * 255, (v & 1) * 255] for v in range(MAX_VALUE + 1)],
    dtype=np.uint8,
)
BIT_COLOURS.setflags(write=False)
# ``balanced-bits`` puts the classes on other corners so that each channel is on for about
# half of Train's pixels: within 0.12 of half on the synthetic Train split and 0.14 on the
# genuine tiles' (the best one order does for both; 0.085 and 0.13 each alone), where
# ``bits`` leaves blue on for 0.69 and 0.75. Tried because the label model drifts toward the
# colour of the largest class (with ``bits`` blue is on for 0.82 of drawn synthetic pixels,
# and forest and water, blue off, come out at half their share). Measured: on the synthetic
# split the drift stays but the segmenter trained on what it draws scores higher; on the
# genuine tiles the drawn class mix comes within TV 0.068 of Train's (0.349 with ``bits``).
# Raw value v takes the colour that ``bits`` gives value _BALANCED_CORNERS[v].
_BALANCED_CORNERS = (0, 3, 5, 6, 1, 7, 2, 4)
BALANCED_BIT_COLOURS = BIT_COLOURS[list(_BALANCED_CORNERS)]
BALANCED_BIT_COLOURS.setflags(write=False)
LABEL_COLOURS: dict[str, np.ndarray] = {
    "palette": PALETTE,
    "bits": BIT_COLOURS,
    "balanced-bits": BALANCED_BIT_COLOURS,
}


def fractions_from_counts(counts: np.ndarray) -> dict[str, float]:
    """Share of each class among labelled pixels, from a bincount of raw values."""
    counts = np.asarray(counts)
    labelled = counts[1 : MAX_VALUE + 1].sum()
    return {c.name: float(counts[c.value] / labelled) if labelled else 0.0 for c in CLASSES}


def class_fractions(mask: np.ndarray) -> dict[str, float]:
    """Share of each class among the labelled (non-no-data) pixels of a raw mask."""
    return fractions_from_counts(np.bincount(np.asarray(mask).ravel(), minlength=MAX_VALUE + 1))
