"""Model presets, init, checks, loading in plain diffusers, and hashes."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import typer
from accelerate import init_empty_weights
from diffusers import (
    AutoencoderKL,
    ControlNetModel,
    StableDiffusionControlNetPipeline,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer
from typer.testing import CliRunner

from lfactory.model_commands import register
from pipeline_lib.config import DEFAULT_PROMPT
from pipeline_lib.errors import CheckpointError, ConfigError
from pipeline_lib.models.build import init_models
from pipeline_lib.models.model_hash import model_hash
from pipeline_lib.models.presets import SD15_SHAPE, TINY, get_preset
from pipeline_lib.models.sd_folder import check_controlnet_dir, check_sd_dir, load_sd_components

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return init_models(tmp_path_factory.mktemp("models") / "sd", "tiny", seed=0)


def test_tiny_init_loads_in_plain_sd_pipeline_and_generates(tiny):
    pipe = StableDiffusionPipeline.from_pretrained(tiny, local_files_only=True)
    images = pipe(
        "satellite",
        num_inference_steps=2,
        height=64,
        width=64,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
    ).images
    assert images.shape == (1, 64, 64, 3)
    assert pipe.vae_scale_factor == TINY.vae_scale_factor == 2


def test_tiny_init_loads_in_plain_controlnet_pipeline_and_generates(tiny):
    controlnet = ControlNetModel.from_pretrained(tiny / "controlnet", local_files_only=True)
    pipe = StableDiffusionControlNetPipeline.from_pretrained(
        tiny, controlnet=controlnet, local_files_only=True
    )
    images = pipe(
        "satellite",
        image=torch.rand(1, 3, 32, 32),
        num_inference_steps=2,
        height=32,
        width=32,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
    ).images
    assert images.shape == (1, 32, 32, 3)
    levels = len(controlnet.config.conditioning_embedding_out_channels)
    assert 2 ** (levels - 1) == pipe.vae_scale_factor


def test_tokenizer_tells_words_apart_after_save_and_load(tiny):
    tokenizer = CLIPTokenizer.from_pretrained(tiny / "tokenizer", local_files_only=True)
    forest, water = tokenizer(["forest", "water"]).input_ids
    assert forest != water
    assert forest[0] == tokenizer.bos_token_id and forest[-1] == tokenizer.eos_token_id
    # Byte-level tokens: the default prompt plus a style must fit, or the style is cut off.
    prompt = f"{DEFAULT_PROMPT}, winter, snow-covered fields"
    ids = tokenizer(prompt, truncation=True, max_length=tokenizer.model_max_length).input_ids
    assert ids[-1] == tokenizer.eos_token_id and len(ids) == len(prompt.replace(" ", "")) + 2


def test_sd15_shape_preset_has_sd15_parameter_counts():
    with init_empty_weights():
        unet = UNet2DConditionModel(**SD15_SHAPE.unet)
        vae = AutoencoderKL(**SD15_SHAPE.vae)
        text = CLIPTextModel(CLIPTextConfig(**SD15_SHAPE.text_encoder))
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert round(count(unet) / 1e6, 1) == 859.5
    assert round(count(vae) / 1e6, 1) == 83.7
    assert round(count(text) / 1e6, 1) == 123.1
    assert SD15_SHAPE.vae_scale_factor == 8


def test_unknown_preset_is_a_config_error_naming_the_choices():
    with pytest.raises(ConfigError, match="tiny"):
        get_preset("sdxl")


def test_load_sd_components_gives_all_five_parts(tiny):
    sd = load_sd_components(tiny)
    assert sd.unet.config.cross_attention_dim == sd.text_encoder.config.hidden_size
    assert sd.scheduler.config.prediction_type == "epsilon"
    assert len(sd.tokenizer) == sd.text_encoder.config.vocab_size


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: shutil.rmtree(d / "unet"), "unet/config.json missing"),
        (lambda d: (d / "model_index.json").unlink(), "model_index.json missing"),
        (
            lambda d: (d / "vae" / "diffusion_pytorch_model.safetensors").unlink(),
            "vae/diffusion_pytorch_model.safetensors missing",
        ),
        (
            lambda d: (d / "model_index.json").write_text(
                json.dumps({"_class_name": "FluxPipeline"})
            ),
            "not a Stable Diffusion pipeline: _class_name='FluxPipeline'",
        ),
    ],
    ids=["no-unet", "no-model-index", "no-vae-weights", "wrong-class"],
)
def test_incomplete_sd_dir_is_a_checkpoint_error_naming_the_missing_part(
    tiny, tmp_path, damage, message
):
    broken = tmp_path / "sd"
    shutil.copytree(tiny, broken)
    damage(broken)
    with pytest.raises(CheckpointError, match=message.replace("(", r"\(")) as error:
        load_sd_components(broken)
    assert isinstance(error.value, FileNotFoundError)


def test_missing_dir_and_controlnet_without_weights_are_checkpoint_errors(tiny, tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        check_sd_dir(tmp_path / "nowhere")
    shutil.copytree(tiny / "controlnet", tmp_path / "cn")
    check_controlnet_dir(tmp_path / "cn")
    (tmp_path / "cn" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="diffusion_pytorch_model"):
        check_controlnet_dir(tmp_path / "cn")


def test_model_hash_is_stable_per_seed_and_follows_the_weights(tiny, tmp_path):
    again = init_models(tmp_path / "again", "tiny", seed=0)
    other = init_models(tmp_path / "other", "tiny", seed=1)
    assert model_hash(again) == model_hash(tiny)
    assert model_hash(other) != model_hash(tiny)
    # Summaries, resume checkpoints and the ControlNet beside the base are not the model.
    (again / "training_summary.json").write_text("{}")
    (again / "checkpoints").mkdir()
    (again / "checkpoints" / "x.safetensors").write_bytes(b"x")
    shutil.rmtree(again / "controlnet")
    assert model_hash(again) == model_hash(tiny)
    config = again / "scheduler" / "scheduler_config.json"
    config.write_text(config.read_text().replace('"epsilon"', '"v_prediction"'))
    assert model_hash(again) != model_hash(tiny)


def test_init_refuses_to_overwrite_an_existing_dir(tiny):
    with pytest.raises(CheckpointError, match="already exists"):
        init_models(tiny, "tiny")


def test_cli_models_init_writes_a_loadable_dir(tmp_path):
    app = typer.Typer()
    register(app)
    result = CliRunner().invoke(app, ["models", "init", str(tmp_path / "sd"), "--seed", "3"])
    assert result.exit_code == 0, result.output
    assert "hash" in result.output
    check_sd_dir(tmp_path / "sd")
    check_controlnet_dir(tmp_path / "sd" / "controlnet")


def test_a_base_built_from_another_preset_is_refused(tmp_path):
    from pipeline_lib.config import config_from_dict
    from pipeline_lib.errors import CheckpointError
    from pipeline_lib.models.build import ensure_base_models

    init_models(tmp_path / "sd", "tiny")
    cfg = config_from_dict(
        {
            "work_dir": str(tmp_path),
            "models": {"base": str(tmp_path / "sd"), "preset": "tiny-pixel"},
        }
    )
    with pytest.raises(CheckpointError, match="built from preset 'tiny'"):
        ensure_base_models(cfg)
