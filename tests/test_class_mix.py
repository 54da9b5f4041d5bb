"""A label model told which classes to draw: the shares it reads, the embedding training
moves, the bank of Train mixes saved beside it, and the generator that samples with them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pipeline_lib.config import config_from_dict
from pipeline_lib.data.loveda import write_tile
from pipeline_lib.data.synth import make_synthetic_loveda
from pipeline_lib.errors import CheckpointError, ConfigError
from pipeline_lib.models.class_mix import MIX_BANK, class_mix, draw_mixes, load_mix_bank
from pipeline_lib.train.pair_sampler import PairSampler


def _config(tmp_path, root, **label_lora):
    return config_from_dict(
        {
            "name": "mix",
            "work_dir": str(tmp_path / "work"),
            "device": "cpu",
            "data": {"root": str(root)},
            "models": {"preset": "tiny-pixel"},
            "label_lora": {
                "batch_size": 4,
                "resolution": 32,
                "lr": 1e-3,
                "crop_scale": [1.0, 1.0],
                "steps": 3,
                "checkpoint_every": 3,
                "method": "full",
                "colours": "bits",
                "class_mix": True,
                **label_lora,
            },
            "generation": {"resolution": 32, "batch_size": 2, "label_steps": 3},
        }
    )


def test_the_mix_is_each_class_share_of_the_labelled_pixels():
    masks = torch.tensor([[[0, 0, 2, 2], [7, 7, 7, 7]], [[0, 0, 0, 0], [0, 0, 0, 0]]])
    mixes = class_mix(masks)
    # No-data is not a class: a crop of two building and four agriculture pixels.
    np.testing.assert_allclose(mixes[0], [0, 2 / 6, 0, 0, 0, 0, 4 / 6], atol=1e-6)
    assert mixes[1].sum() == 0


def test_a_draw_keeps_its_mix_when_replayed():
    bank = np.eye(7, dtype=np.float32)
    first, again = draw_mixes(bank, [11, 12, 13]), draw_mixes(bank, [11, 12, 13])
    assert torch.equal(first, again)
    assert len({tuple(row.tolist()) for row in draw_mixes(bank, list(range(40)))}) > 1


def test_the_mix_needs_a_fully_fine_tuned_label_model(tmp_path):
    with pytest.raises(ConfigError, match="class_mix needs method: full"):
        _config(tmp_path, tmp_path, method="lora")


@pytest.mark.slow
def test_a_mix_conditioned_label_model_learns_the_mix_and_draws_by_it(tmp_path, one_torch_thread):
    from diffusers import UNet2DConditionModel

    from pipeline_lib.generate.sampler import Generator
    from pipeline_lib.train import train_label_lora

    root = tmp_path / "synth"
    make_synthetic_loveda(root, tiles=2, size=64, seed=2)
    cfg = _config(tmp_path, root)
    train_label_lora(cfg, progress=False)
    output = cfg.label_lora.output
    unet = UNet2DConditionModel.from_pretrained(output)
    # The embedding's output layer starts at zero; it moves only if training fed the mix.
    assert unet.config.class_embed_type == "projection"
    assert unet.class_embedding.linear_2.weight.abs().sum() > 0
    bank = load_mix_bank(output)
    assert bank.shape == (2048, 7)
    np.testing.assert_allclose(bank.sum(1), 1, atol=1e-3)  # synthetic tiles have no no-data

    generator = Generator(cfg, with_images=False)
    draws = [generator.draw(0, a) for a in range(2)]
    first, again = generator.sample_labels(draws), generator.sample_labels(draws)
    for (rgb, _, _), (same, _, _) in zip(first, again, strict=True):
        np.testing.assert_array_equal(rgb, same)
    # The mix reaches the model: other shares, the same noise, another label.
    pipe, call = generator.label_pipe, {"prompt": ["p"], "height": 32, "width": 32}
    drawn = [
        pipe(
            **call,
            num_inference_steps=3,
            class_mix=torch.eye(7)[[k]],
            generator=[torch.Generator().manual_seed(0)],
        )
        for k in (1, 6)
    ]
    assert np.abs(drawn[0] - drawn[1]).max() > 1e-3

    # A model folder that lost its bank cannot be sampled as trained.
    (output / MIX_BANK).unlink()
    with pytest.raises(CheckpointError, match=MIX_BANK):
        Generator(cfg, with_images=False)


def test_a_broken_bank_is_refused_by_name(tmp_path):
    (tmp_path / MIX_BANK).write_text(json.dumps([[0.5, 0.5]]))
    with pytest.raises(CheckpointError, match="rows of 7 class shares"):
        load_mix_bank(tmp_path)


def _two_tiles(root):
    """An all-water Train tile and one half building, half road (left and right)."""
    water = np.full((64, 64), 4, np.uint8)
    halves = np.repeat(np.array([[2] * 32 + [3] * 32], np.uint8), 64, axis=0)
    for name, mask in (("0", water), ("1", halves)):
        write_tile(root, "Train", "Urban", name, np.zeros((64, 64, 3), np.uint8), mask)
    water_mix, halves_mix = np.zeros(7), np.zeros(7)
    water_mix[3], halves_mix[[1, 2]] = 1.0, 0.5
    return [water_mix, halves_mix]


def test_each_crop_comes_with_its_whole_tiles_mix(tmp_path):
    tile_mixes = _two_tiles(tmp_path)
    sampler = PairSampler(tmp_path, 32, seed=0, with_images=False, crop_scale=(1.0, 1.0))
    batch = sampler.batch(0, 0, 16)
    rows = batch.tile_mix.numpy()
    # Every row is one of the two tiles' shares, never the crop's own.
    assert all(any(np.allclose(row, mix) for mix in tile_mixes) for row in rows)
    assert not torch.allclose(class_mix(batch.mask), batch.tile_mix)


def test_the_tile_mix_needs_the_mix():
    with pytest.raises(ConfigError, match="mix_of needs class_mix: true"):
        config_from_dict({"label_lora": {"method": "full", "mix_of": "tile"}})


def test_a_plain_label_model_goes_on_told_the_mix_of_its_tiles(tmp_path, one_torch_thread):
    from diffusers import UNet2DConditionModel

    from pipeline_lib.train import train_label_lora

    root = tmp_path / "data"
    tile_mixes = _two_tiles(root)
    plain = _config(tmp_path / "a", root, class_mix=False, steps=2, checkpoint_every=2)
    train_label_lora(plain, progress=False)
    # At a vanishing rate the one step leaves the plain model's weights as they were, and
    # the mix's embedding silent: the model goes on from what it drew.
    told = _config(
        tmp_path / "b",
        root,
        steps=1,
        checkpoint_every=1,
        lr=1e-30,
        mix_of="tile",
        init_from=str(plain.label_lora.output),
    )
    train_label_lora(told, progress=False)
    before = UNet2DConditionModel.from_pretrained(plain.label_lora.output).state_dict()
    after = UNet2DConditionModel.from_pretrained(told.label_lora.output).state_dict()
    assert {k for k in after if k not in before} == {
        k for k in after if k.startswith("class_embedding.")
    }
    assert all(torch.allclose(before[k], after[k], atol=1e-6) for k in before)
    assert after["class_embedding.linear_2.weight"].abs().max() < 1e-12
    # Sampled with the Train tiles' mixes, one row per tile.
    bank = load_mix_bank(told.label_lora.output)
    assert sorted(map(tuple, bank.round(3))) == sorted(map(tuple, np.round(tile_mixes, 3)))

    # The other way round, a config without the mix cannot drop a trained embedding.
    unmixed = _config(tmp_path / "c", root, class_mix=False, init_from=str(told.label_lora.output))
    with pytest.raises(ConfigError, match="class embedding 'projection' where .* None"):
        train_label_lora(unmixed, progress=False)


def test_the_mix_embedding_starts_silent_so_training_starts_from_the_base():
    from pipeline_lib.models.build import build_components
    from pipeline_lib.models.class_mix import mix_conditioned_unet

    plain = build_components("tiny-pixel")["unet"].eval()
    conditioned = mix_conditioned_unet(plain).eval()
    noisy = torch.randn(
        1, plain.config.in_channels, 8, 8, generator=torch.Generator().manual_seed(0)
    )
    text = torch.randn(1, 77, plain.config.cross_attention_dim)
    with torch.no_grad():
        before = plain(noisy, 10, encoder_hidden_states=text).sample
        after = conditioned(noisy, 10, encoder_hidden_states=text, class_labels=torch.eye(7)[[3]])
    torch.testing.assert_close(after.sample, before)
