"""Palette: colourise/decolourise are exact inverses; snapping scores off-palette pixels."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline_lib.data.classes import PALETTE
from pipeline_lib.data.palette import colourise, decolourise, snap_to_palette
from pipeline_lib.errors import DataError


def _random_mask(seed: int = 0, shape: tuple[int, int] = (48, 40)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 8, shape, dtype=np.uint8)


def test_colourise_then_decolourise_gives_back_the_exact_mask() -> None:
    mask = _random_mask()
    rgb = colourise(mask)
    assert rgb.shape == (*mask.shape, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(decolourise(rgb), mask)


def test_colourise_uses_the_loveda_palette() -> None:
    mask = np.arange(8, dtype=np.uint8).reshape(1, 8)
    np.testing.assert_array_equal(colourise(mask)[0], PALETTE)
    assert tuple(colourise(np.array([[2]], np.uint8))[0, 0]) == (255, 0, 0)  # building is red


def test_colourise_rejects_values_above_7() -> None:
    with pytest.raises(DataError, match="value 9"):
        colourise(np.full((2, 2), 9, np.uint8))


def test_decolourise_rejects_an_off_palette_colour() -> None:
    rgb = colourise(_random_mask())
    rgb[0, 0] = (1, 2, 3)
    with pytest.raises(DataError, match=r"\(1, 2, 3\)"):
        decolourise(rgb)


def test_snap_reports_the_share_of_pixels_perturbed_beyond_tolerance() -> None:
    mask = _random_mask(1, (40, 40))
    rgb = colourise(mask).astype(np.int16)
    rng = np.random.default_rng(2)
    chosen = rng.permutation(mask.size)[: mask.size // 4]  # exactly 25 % of the pixels
    flat = rgb.reshape(-1, 3)
    # Move one channel by 30 (beyond a tolerance of 24), towards the middle of the range,
    # which keeps every perturbed pixel nearest to its own class.
    flat[chosen, 1] += np.where(flat[chosen, 1] > 127, -30, 30)
    snapped, share = snap_to_palette(rgb.astype(np.uint8), tolerance=24)
    assert share == pytest.approx(0.25)
    np.testing.assert_array_equal(snapped, mask)
    _, share_loose = snap_to_palette(rgb.astype(np.uint8), tolerance=30)
    assert share_loose == 0.0


def test_snap_picks_the_nearest_class_colour() -> None:
    rgb = np.array(
        [[[250, 10, 5], [10, 240, 20], [20, 20, 200], [255, 190, 120], [150, 130, 180]]],
        np.uint8,
    )
    snapped, share = snap_to_palette(rgb, tolerance=0)
    # building, forest, water, agriculture, barren
    assert snapped.tolist() == [[2, 6, 4, 7, 5]]
    assert share == 1.0


def test_snap_of_a_clean_label_is_exact_and_scores_zero() -> None:
    mask = _random_mask(3)
    snapped, share = snap_to_palette(colourise(mask))
    np.testing.assert_array_equal(snapped, mask)
    assert share == 0.0


@pytest.mark.parametrize("name", ["bits", "balanced-bits"])
def test_bit_colours_put_every_value_on_its_own_cube_corner_and_snap_back(name: str) -> None:
    from pipeline_lib.data.classes import LABEL_COLOURS

    colours = LABEL_COLOURS[name]
    mask = np.arange(8, dtype=np.uint8).reshape(2, 4)
    rgb = colourise(mask, colours)
    assert set(np.unique(rgb)) == {0, 255} and len({tuple(c) for c in colours}) == 8
    assert tuple(colours[0]) == (0, 0, 0)  # no-data stays black, as in LoveDA's masks
    # A drawn colour near a corner snaps to that value; one halfway between two is off-code.
    noisy = np.clip(rgb.astype(int) + 20, 0, 255).astype(np.uint8)
    snapped, off = snap_to_palette(noisy, tolerance=24, colours=colours)
    assert np.array_equal(snapped, mask) and off == 0.0
    blend = np.full((1, 1, 3), 128, np.uint8)
    assert snap_to_palette(blend, tolerance=24, colours=colours)[1] == 1.0


def test_balanced_bits_turn_each_channel_on_for_about_half_of_a_landscapes_pixels():
    from pipeline_lib.data.classes import LABEL_COLOURS
    from pipeline_lib.data.synth import synth_tile

    masks = [
        synth_tile(np.random.default_rng(seed), 128, scene)[1]
        for seed in range(4)
        for scene in ("Urban", "Rural")
    ]
    values = np.concatenate([m.ravel() for m in masks])

    def channel_shares(name: str) -> np.ndarray:
        return (LABEL_COLOURS[name][values] > 0).mean(0)

    # bits leave the blue channel on for most pixels (background, agriculture, roads);
    # the balanced order keeps every channel nearer half.
    assert np.abs(channel_shares("bits") - 0.5).max() > 0.15
    assert np.abs(channel_shares("balanced-bits") - 0.5).max() < 0.15


def test_fill_off_splits_a_blurred_border_between_its_two_classes():
    from pipeline_lib.data.classes import BIT_COLOURS

    # Background (001) fading into building (010), as a diffusion model draws a border it
    # is unsure of: each bit on its own ramp, the building bit two pixels behind.
    fade = np.clip((np.arange(18) - 4) / 8, 0, 1)
    rise = np.clip((np.arange(18) - 6) / 8, 0, 1)
    row = (1 - fade)[:, None] * BIT_COLOURS[1] + rise[:, None] * BIT_COLOURS[2]
    rgb = np.repeat(row[None].round().astype(np.uint8), 2, axis=0)

    snapped, off = snap_to_palette(rgb, tolerance=24, colours=BIT_COLOURS)
    filled, off_filled = snap_to_palette(rgb, tolerance=24, colours=BIT_COLOURS, fill_off=True)

    assert off == off_filled == 0.5
    # Nearest-colour snapping puts a third value (no-data, 000) between the two ...
    assert (snapped == 0).any()
    # ... filling gives each blurred pixel the class of the nearer clean side.
    assert set(np.unique(filled)) == {1, 2}
    assert (filled[:, :10] == 1).all() and (filled[:, 10:] == 2).all()


def test_fill_off_leaves_a_label_with_no_clean_pixel_at_its_nearest_colours():
    blend = np.full((3, 3, 3), 128, np.uint8)
    snapped, _ = snap_to_palette(blend, tolerance=24)
    filled, share = snap_to_palette(blend, tolerance=24, fill_off=True)
    assert share == 1.0 and np.array_equal(filled, snapped)
