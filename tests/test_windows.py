"""Samples larger than the models' training crop, denoised in overlapping windows."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from factory_configs import generator_config

from pipeline_lib.config import GenerationConfig, config_from_dict
from pipeline_lib.errors import ConfigError
from pipeline_lib.generate.windows import WindowedUNet, window_offsets


@pytest.mark.parametrize(("size", "window", "stride"), [(24, 8, 6), (32, 16, 12), (16, 8, 8)])
def test_windows_cover_every_pixel_with_gaps_no_wider_than_the_stride(size, window, stride):
    starts = window_offsets(size, window, stride)
    assert starts[0] == 0 and starts[-1] == size - window
    assert all(0 < b - a <= stride for a, b in zip(starts, starts[1:], strict=False))
    assert window_offsets(8, 8, 4) == [0]


class PointwiseUNet(torch.nn.Module):
    """A UNet stand-in whose output at a pixel depends on that pixel and the sample's own
    text, class vector and timestep: windows of it must give its whole output."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.mix = torch.nn.Conv2d(4, 3, 1)
        self.sizes: list[tuple[int, int]] = []
        self.config = {"in_channels": 4}

    def forward(self, sample, timestep, encoder_hidden_states, class_labels=None, return_dict=True):
        self.sizes.append(tuple(sample.shape[-2:]))
        per_sample = encoder_hidden_states.mean((1, 2)) + class_labels.sum(1) + timestep
        out = self.mix(sample) + per_sample[:, None, None, None]
        return {"sample": out} if return_dict else (out,)


def test_windows_of_a_pointwise_model_give_its_whole_output():
    inner = PointwiseUNet()
    sample = torch.randn(3, 4, 24, 20)
    text = torch.randn(3, 5, 6)
    mix = torch.randn(3, 7)
    timestep = torch.tensor([10.0, 500.0, 990.0])
    whole = inner(sample, timestep, text, class_labels=mix, return_dict=False)[0]
    windowed = WindowedUNet(inner, window=8, stride=6)
    out = windowed(sample, timestep, text, class_labels=mix).sample
    torch.testing.assert_close(out, whole)
    assert set(inner.sizes[1:]) == {(8, 8)}  # the wrapped model only ever saw windows
    assert windowed.config is inner.config
    # A latent no larger than a window goes through whole, in one call.
    inner.sizes.clear()
    windowed(sample[..., :8, :8], 3, text, class_labels=mix)
    assert inner.sizes == [(8, 8)]


def test_window_settings_are_checked_and_absent_ones_leave_the_dump_alone():
    assert "window" not in GenerationConfig().model_dump()
    assert GenerationConfig(window=64).stride == 48
    with pytest.raises(ValueError, match="window_stride 80 exceeds window 64"):
        GenerationConfig(window=64, window_stride=80)
    with pytest.raises(ValueError, match="window_stride needs window"):
        GenerationConfig(window_stride=8)


@pytest.fixture(scope="module")
def pixel_models(tmp_path_factory):
    """A tiny-pixel base, its UNet saved as a fully fine-tuned label model and, widened by
    the class channels, as a concat image model (untrained: the windows are under test)."""
    from pipeline_lib.models.build import init_models
    from pipeline_lib.models.sd_folder import load_sd_components
    from pipeline_lib.train.controlnet import concat_unet

    root = tmp_path_factory.mktemp("pixel")
    base = init_models(root / "sd", "tiny-pixel")
    unet = load_sd_components(base).unet
    unet.save_pretrained(root / "label")
    concat_unet(unet, 2).save_pretrained(root / "image")
    return root


def _config(tmp_path, root, **generation):
    raw = generator_config(tmp_path, root / "sd", resolution=32, **generation)
    raw["label_lora"] = {"output": str(root / "label"), "method": "full", "colours": "bits"}
    raw["controlnet"] = {"output": str(root / "image"), "conditioning": "concat"}
    return config_from_dict(raw)


def test_a_generator_draws_in_windows_and_its_samples_regenerate(tmp_path, pixel_models):
    from pipeline_lib.generate import Generator, generate_and_commit_shard, regenerate
    from pipeline_lib.store import read_manifests

    cfg = _config(tmp_path / "w", pixel_models, window=16, window_stride=8)
    generator = Generator(cfg)
    assert isinstance(generator.label_pipe.unet, WindowedUNet)
    assert isinstance(generator.image_pipe.unet, WindowedUNet)
    assert generator.label_pipe.unet.window == 8  # pixels over the 2x2 fold
    draw = generator.draw(0, 0)
    (rgb, _, _), *_ = generator.sample_labels([draw])
    assert rgb.shape == (32, 32, 3)
    (whole_rgb, _, _), *_ = Generator(_config(tmp_path / "p", pixel_models)).sample_labels([draw])
    assert not np.array_equal(rgb, whole_rgb)  # the windows changed what was drawn

    result = generate_and_commit_shard(cfg, generator, 0)
    assert result.kept == 3
    row = read_manifests(cfg.store.path).to_pylist()[1]
    rebuilt = regenerate(cfg.store.path, row["sample_id"])
    assert rebuilt.identical and rebuilt.models_match


def test_windows_refuse_a_stride_off_the_latent_grid_and_a_controlnet(tmp_path, pixel_models):
    from pipeline_lib.generate import Generator

    with pytest.raises(ConfigError, match="generation.window_stride 5 is not a multiple"):
        Generator(_config(tmp_path, pixel_models, window=16, window_stride=5))
    cfg = _config(tmp_path, pixel_models, window=16)
    cfg.controlnet.output = tmp_path / "none"
    cfg.controlnet.conditioning = "controlnet"
    with pytest.raises(ConfigError, match="needs a concat image model, not a ControlNet"):
        Generator(cfg)
