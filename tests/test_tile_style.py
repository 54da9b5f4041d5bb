"""An image model told each sample's colours: the style it reads, the bank of Train tile
styles saved beside it, the pick by class mix, and the generator that samples with them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pipeline_lib.config import config_from_dict
from pipeline_lib.data.loveda import write_tile
from pipeline_lib.errors import CheckpointError, ConfigError
from pipeline_lib.models.tile_style import STYLE_BANK, STYLE_DIM, StyleBank, tile_style
from pipeline_lib.train.pair_sampler import PairSampler


def _styles(rgb_by_class: dict[int, tuple[int, int, int]], overall: tuple[int, int, int]):
    """The style a tile with these class colours has, in [-1, 1]."""
    rows = [rgb_by_class.get(value, overall) for value in range(1, 8)]
    return np.asarray(rows, np.float32).reshape(-1) / 127.5 - 1


def test_the_style_is_each_class_mean_colour_and_the_tile_colour_where_a_class_is_absent():
    mask = np.array([[0, 2, 2, 7]], np.uint8)
    image = np.array([[[0, 0, 0], [200, 0, 0], [100, 0, 0], [0, 90, 30]]], np.uint8)
    style = tile_style(mask, image).numpy()
    assert style.shape == (STYLE_DIM,)
    # No-data is no colour of the tile: the absent classes take the three labelled pixels'.
    expected = _styles({2: (150, 0, 0), 7: (0, 90, 30)}, overall=(100, 30, 10))
    np.testing.assert_allclose(style, expected, atol=1e-5)


def _bank():
    """Three all-water tiles and two all-building ones, each of its own colour."""
    water, building = np.zeros(7, np.float32), np.zeros(7, np.float32)
    water[3], building[1] = 1.0, 1.0
    mixes = np.stack([water, water, water, building, building])
    styles = np.arange(5, dtype=np.float32)[:, None].repeat(STYLE_DIM, 1) / 10
    return StyleBank(mixes, styles)


def test_a_sample_takes_the_style_of_a_tile_of_a_like_mix_and_keeps_it_when_replayed():
    bank = _bank()
    mostly_water = np.full((8, 8), 4, np.uint8)
    mostly_water[0, :3] = 2
    seeds = list(range(40))
    picked = bank.pick(np.stack([mostly_water] * len(seeds)), seeds)[:, 0].numpy()
    # Among the three water tiles, never a building tile's colours, and not always one.
    assert set(np.round(picked * 10).astype(int)) == {0, 1, 2}
    again = bank.pick(np.stack([mostly_water] * len(seeds)), seeds)[:, 0].numpy()
    np.testing.assert_array_equal(picked, again)
    roofs = np.full((1, 8, 8), 2, np.uint8)
    assert bank.pick(roofs, [0])[0, 0] in (np.float32(0.3), np.float32(0.4))


def test_a_missing_or_broken_bank_is_refused_by_name(tmp_path):
    with pytest.raises(CheckpointError, match=f"{STYLE_BANK}.*train it again"):
        StyleBank.load(tmp_path)
    (tmp_path / STYLE_BANK).write_text(json.dumps([{"mix": [0.5, 0.5], "style": [0.0] * 21}]))
    with pytest.raises(CheckpointError, match="rows of 7 class shares and 21 colours"):
        StyleBank.load(tmp_path)
    (tmp_path / STYLE_BANK).write_text("[{")
    with pytest.raises(CheckpointError, match="unreadable style bank"):
        StyleBank.load(tmp_path)


def test_the_style_needs_a_concat_image_model():
    with pytest.raises(ConfigError, match="tile_style needs conditioning: concat"):
        config_from_dict({"controlnet": {"tile_style": True}})


def _two_tiles(root):
    """An all-water Train tile drawn blue and one of roofs (left) and road (right)."""
    water = np.full((64, 64), 4, np.uint8)
    town = np.repeat(np.array([[2] * 32 + [3] * 32], np.uint8), 64, axis=0)
    blue = np.zeros((64, 64, 3), np.uint8)
    blue[..., 2] = 200
    grey = np.where(town[..., None] == 2, 180, 90).astype(np.uint8).repeat(3, 2)
    write_tile(root, "Train", "Urban", "0", blue, water)
    write_tile(root, "Train", "Urban", "1", grey, town)


def test_each_crop_comes_with_its_whole_tiles_style(tmp_path):
    _two_tiles(tmp_path)
    sampler = PairSampler(tmp_path, 32, seed=0, crop_scale=(1.0, 1.0))
    batch = sampler.batch(0, 0, 8)
    blue = _styles({4: (0, 0, 200)}, overall=(0, 0, 200))
    town = _styles({2: (180, 180, 180), 3: (90, 90, 90)}, overall=(135, 135, 135))
    for tile, image in zip(batch.tile, batch.image, strict=True):
        style = sampler.tile_style(int(tile)).numpy()
        np.testing.assert_allclose(style, blue if image[0].max() < -0.99 else town, atol=1e-5)


def _config(tmp_path, root, **controlnet):
    return config_from_dict(
        {
            "name": "styles",
            "work_dir": str(tmp_path / "work"),
            "device": "cpu",
            "data": {"root": str(root)},
            "models": {"preset": "tiny-pixel", "base": str(tmp_path.parent / "base")},
            "controlnet": {
                "conditioning": "concat",
                "batch_size": 2,
                "resolution": 32,
                "lr": 1e-3,
                "crop_scale": [1.0, 1.0],
                "steps": 2,
                "checkpoint_every": 2,
                "tile_style": True,
                **controlnet,
            },
            "generation": {"resolution": 32, "batch_size": 2, "image_steps": 2},
        }
    )


@pytest.mark.slow
def test_a_plain_image_model_goes_on_told_its_tiles_styles_and_draws_by_them(
    tmp_path, one_torch_thread
):
    from diffusers import UNet2DConditionModel

    from pipeline_lib.generate.sampler import Generator
    from pipeline_lib.train import train_controlnet

    root = tmp_path / "data"
    _two_tiles(root)
    plain = _config(tmp_path / "a", root, tile_style=False)
    train_controlnet(plain, progress=False)
    told = _config(tmp_path / "b", root, init_from=str(plain.controlnet.output))
    train_controlnet(told, progress=False)
    before = UNet2DConditionModel.from_pretrained(plain.controlnet.output).state_dict()
    output = told.controlnet.output
    after = UNet2DConditionModel.from_pretrained(output)
    # Only the style's embedding is new, and training moved it from silence.
    new = {k for k in after.state_dict() if k not in before}
    assert new == {k for k in after.state_dict() if k.startswith("class_embedding.")}
    assert after.class_embedding.linear_2.weight.abs().sum() > 0
    bank = StyleBank.load(output)
    assert bank.styles.shape == (2, STYLE_DIM)

    generator = Generator(told)
    draws = [generator.draw(0, a) for a in range(2)]
    masks = [np.full((32, 32), 4, np.uint8), np.full((32, 32), 2, np.uint8)]
    first = generator.sample_images(draws, masks)
    np.testing.assert_array_equal(first, generator.sample_images(draws, masks))
    # The style reaches the model: another tile's colours, the same noise, another image.
    pipe, call = generator.image_pipe, {"prompt": ["p"], "masks": masks[:1]}
    drawn = [
        pipe(
            **call,
            num_inference_steps=2,
            style=torch.from_numpy(bank.styles[[k]]),
            generator=[torch.Generator().manual_seed(0)],
        )
        for k in (0, 1)
    ]
    assert np.abs(drawn[0] - drawn[1]).max() > 1e-3
    with pytest.raises(ValueError, match="needs style"):
        pipe(**call, num_inference_steps=1)

    # A model folder that lost its bank cannot be sampled as trained.
    (output / STYLE_BANK).unlink()
    with pytest.raises(CheckpointError, match=STYLE_BANK):
        Generator(told)


def test_the_style_is_another_training_run_and_off_leaves_earlier_runs_as_they_were():
    from pipeline_lib.config import ControlNetConfig
    from pipeline_lib.train.resumable import train_section_hash

    plain = ControlNetConfig(conditioning="concat")
    assert "tile_style" not in plain.model_dump()  # cached models keep their keys
    told = plain.model_copy(update={"tile_style": True})
    assert train_section_hash(told, "p") != train_section_hash(plain, "p")
