"""The quality path: an exact label codec, a base that learns, an image model that follows
its label (and one that ignores it failing), and the report of ``lfactory quality``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from fake_loveda import TWO_CLASS_COLOURS, WATER, two_class_mask, write_two_class_loveda

from pipeline_lib.config import config_from_dict
from pipeline_lib.data.loveda import list_tiles, read_mask
from pipeline_lib.data.palette import colourise, snap_to_palette
from pipeline_lib.data.synth import make_synthetic_loveda

TRAIN = {"batch_size": 4, "resolution": 32, "lr": 1e-3, "crop_scale": [1.0, 1.0]}


def _config(tmp_path, root, **sections):
    data = {
        "name": "q",
        "work_dir": str(tmp_path / "work"),
        "device": "cpu",
        "data": {"root": str(root)},
        "models": {"preset": "tiny-pixel"},
        "generation": {"resolution": 32, "batch_size": 4, "label_guidance": 1.0},
    }
    data.update(sections)
    return config_from_dict(data)


def test_pixel_codec_returns_every_label_pixel(tmp_path):
    from pipeline_lib.models.build import build_components

    root = tmp_path / "synth"
    make_synthetic_loveda(root, tiles=2, size=64, seed=3)
    masks = np.stack([read_mask(t.mask_path) for t in list_tiles(root, ["Train"])])
    colours = np.stack([colourise(m) for m in masks])
    pixels = torch.from_numpy(colours).permute(0, 3, 1, 2).float() / 127.5 - 1
    vae = build_components("tiny-pixel")["vae"]
    latents = vae.encode(pixels).latent_dist.sample()
    back = vae.decode(latents).sample
    rgb = ((back + 1) * 127.5).round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()
    assert latents.shape[1:] == (12, 32, 32)
    for image, mask in zip(rgb, masks, strict=True):
        snapped, off_palette = snap_to_palette(image, tolerance=0)
        assert off_palette == 0.0
        assert np.array_equal(snapped, mask)  # a VAE trained from scratch keeps ~95%


@pytest.mark.slow
def test_base_stage_learns_and_installs_into_the_base(tmp_path, one_torch_thread):
    from pipeline_lib.models.model_hash import model_hash
    from pipeline_lib.train import train_base
    from pipeline_lib.train.base import RECORD

    root = tmp_path / "synth"
    make_synthetic_loveda(root, tiles=2, size=64, seed=1)
    cfg = _config(tmp_path, root, base={**TRAIN, "steps": 60, "checkpoint_every": 30})
    summary = train_base(cfg, progress=False)
    losses = [loss for _, loss in summary.loss_curve]
    assert np.mean(losses[-10:]) < 0.7 * np.mean(losses[:10])
    record = json.loads((cfg.models.base / RECORD).read_text())
    assert record["output_hash"] == model_hash(cfg.base.output)
    assert train_base(cfg, progress=False).steps == 60  # installed once, not trained again


def _agreement(images: np.ndarray, masks: np.ndarray) -> float:
    """Share of pixels whose colour is nearer their own class's colour than the other's."""
    colours = np.array(list(TWO_CLASS_COLOURS.values()), np.float64)
    distance = ((images[..., None, :].astype(np.float64) - colours) ** 2).sum(-1)
    nearest = np.array(list(TWO_CLASS_COLOURS))[distance.argmin(-1)]
    return float((nearest == masks).mean())


@pytest.mark.slow
def test_concat_image_model_follows_its_label(tmp_path, one_torch_thread):
    """On a toy set where each class has its own colour, the images must show the label
    they were drawn for; the same model drawn without its label sits at chance."""
    from pipeline_lib.generate.sampler import Generator
    from pipeline_lib.train import train_controlnet

    root = write_two_class_loveda(tmp_path / "toy", tiles=8, size=32)
    image_model = {**TRAIN, "steps": 150, "checkpoint_every": 150, "conditioning": "concat"}
    cfg = _config(
        tmp_path,
        root,
        controlnet={**image_model, "ema_decay": 0.9, "empty_prompt_prob": 0.15},
        generation={"resolution": 32, "batch_size": 8, "image_steps": 10, "image_guidance": 3.0},
    )
    train_controlnet(cfg, progress=False)
    generator = Generator(cfg)
    rng = np.random.default_rng(7)
    masks = [two_class_mask(rng, 32) for _ in range(8)]
    draws = [generator.draw(0, a) for a in range(8)]
    images = generator.sample_images(draws, masks)
    followed = _agreement(images, np.stack(masks))
    # The label flipped: an image model that ignored it would still "agree" as before.
    flipped = [np.where(m == WATER, 6, WATER).astype(np.uint8) for m in masks]
    against_flipped = _agreement(generator.sample_images(draws, flipped), np.stack(masks))
    assert followed > 0.8
    assert against_flipped < 0.2


@pytest.mark.slow
def test_a_fully_fine_tuned_label_model_is_what_the_generator_draws_with(
    tmp_path, one_torch_thread
):
    from pipeline_lib.generate.sampler import NO_LORA, Generator
    from pipeline_lib.models.model_hash import model_hash
    from pipeline_lib.train import train_label_lora

    root = tmp_path / "synth"
    make_synthetic_loveda(root, tiles=2, size=64, seed=2)
    cfg = _config(
        tmp_path,
        root,
        label_lora={**TRAIN, "steps": 3, "checkpoint_every": 3, "method": "full"},
        generation={"resolution": 32, "batch_size": 2, "label_steps": 2},
    )
    train_label_lora(cfg, progress=False)
    generator = Generator(cfg)
    assert generator.lora_hash == model_hash(cfg.label_lora.output) != NO_LORA
    # The label UNet is the fine-tuned one; the base UNet stays the image pass's.
    assert generator.label_pipe.unet is not generator.image_pipe.unet
    drawn = generator.sample_labels([generator.draw(0, a) for a in range(2)])
    assert len(drawn) == 2 and drawn[0][1].shape == (32, 32)


@pytest.mark.slow
def test_a_self_conditioned_label_model_learns_from_its_estimate_and_draws_reproducibly(
    tmp_path, one_torch_thread
):
    from diffusers import UNet2DConditionModel

    from pipeline_lib.generate.concat_pipeline import LabelPipeline
    from pipeline_lib.generate.sampler import Generator
    from pipeline_lib.train import train_label_lora

    root = tmp_path / "synth"
    make_synthetic_loveda(root, tiles=2, size=64, seed=2)
    label_lora = {**TRAIN, "steps": 3, "checkpoint_every": 3, "method": "full"}
    cfg = _config(
        tmp_path,
        root,
        label_lora={**label_lora, "self_condition": True, "colours": "bits"},
        generation={"resolution": 32, "batch_size": 2, "label_steps": 3, "label_scheduler": "ddpm"},
    )
    train_label_lora(cfg, progress=False)
    unet = UNet2DConditionModel.from_pretrained(cfg.label_lora.output)
    latent = unet.config.out_channels
    assert unet.config.in_channels == 2 * latent
    # The estimate's input weights start at zero; they move only if training fed estimates.
    assert unet.conv_in.weight[:, latent:].abs().sum() > 0
    generator = Generator(cfg)
    assert isinstance(generator.label_pipe, LabelPipeline)
    draws = [generator.draw(0, a) for a in range(2)]
    first, again = generator.sample_labels(draws), generator.sample_labels(draws)
    assert first[0][1].shape == (32, 32)
    for (rgb, _, _), (same, _, _) in zip(first, again, strict=True):
        np.testing.assert_array_equal(rgb, same)
    assert not np.array_equal(first[0][0], first[1][0]), "two seeds drew the same label"


def test_self_conditioning_needs_a_fully_fine_tuned_label_model(tmp_path):
    from pipeline_lib.errors import ConfigError

    with pytest.raises(ConfigError, match="self_condition needs method: full"):
        _config(tmp_path, tmp_path, label_lora={"self_condition": True})


def test_a_retrained_label_model_or_new_sampling_gets_its_own_store(tmp_path):
    from pipeline_lib.models.build import init_models
    from pipeline_lib.quality import for_current_models

    base = init_models(tmp_path / "sd", "tiny")
    labels = tmp_path / "label-lora"
    labels.mkdir()
    (labels / "config.json").write_text('{"trained": 1}')

    def named(**generation):
        cfg = _config(
            tmp_path,
            tmp_path / "data",
            models={"base": str(base)},
            label_lora={"output": str(labels)},
            generation={"resolution": 32, **generation},
        )
        return for_current_models(cfg)

    first = named()
    assert named().store.path == first.store.path  # a re-run tops up its own store
    assert first.store.path.parent == first.work_dir and first.store.path.suffix == ".zarr"
    assert named(label_steps=7).store.path != first.store.path
    (labels / "config.json").write_text('{"trained": 2}')
    retrained = named()
    assert retrained.store.path != first.store.path
    assert retrained.validation.output != first.validation.output
