"""VAE training of a preset base: learning, install into the base, train-once, exact resume."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import typer
import yaml
from diffusers import AutoencoderKL, StableDiffusionPipeline
from safetensors.torch import load_file
from typer.testing import CliRunner

from lfactory.model_commands import register
from pipeline_lib.config import config_from_dict
from pipeline_lib.data.loveda import write_tile
from pipeline_lib.errors import CheckpointError
from pipeline_lib.models.build import init_models
from pipeline_lib.models.model_hash import model_hash
from pipeline_lib.train import train_vae
from pipeline_lib.train.resumable import latest_checkpoint
from pipeline_lib.train.vae import RECORD

WEIGHTS = "diffusion_pytorch_model.safetensors"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def blocky(tmp_path_factory):
    """Two 32 px Train tiles: 8 px class blocks, smooth images."""
    root = tmp_path_factory.mktemp("loveda")
    rng = np.random.default_rng(0)
    for i, scene in enumerate(("Urban", "Rural")):
        mask = np.kron(rng.integers(1, 8, (4, 4)), np.ones((8, 8), int)).astype(np.uint8)
        image = np.kron(rng.integers(0, 256, (4, 4, 3)), np.ones((8, 8, 1), int)).astype(np.uint8)
        write_tile(root, "Train", scene, str(i), image, mask)
    return root


def raw_config(tmp_path, data, preset="tiny", **vae):
    base = tmp_path / "sd"
    if preset is not None and not base.exists():
        init_models(base, preset, seed=0)
    return {
        "work_dir": str(tmp_path / "work"),
        "data": {"root": str(data)},
        "models": {"base": str(base), "preset": preset},
        "vae": {"batch_size": 2, "resolution": 32, "checkpoint_every": 2, "lr": 2e-3} | vae,
    }


def make_config(tmp_path, data, preset="tiny", **vae):
    return config_from_dict(raw_config(tmp_path, data, preset, **vae))


def test_vae_training_clearly_reduces_reconstruction_loss(tmp_path, blocky):
    cfg = make_config(tmp_path, blocky, steps=40, checkpoint_every=40)
    summary = train_vae(cfg, progress=False)
    first, last = summary.loss_curve[0][1], summary.loss_curve[-1][1]
    assert summary.complete and last < 0.5 * first


def test_trained_vae_is_installed_into_the_base_once(tmp_path, blocky):
    cfg = make_config(tmp_path, blocky, steps=2)
    base = cfg.models.base
    untrained_hash = model_hash(base)
    summary = train_vae(cfg, progress=False)

    trained = load_file(cfg.vae.output / WEIGHTS)
    installed = AutoencoderKL.from_pretrained(base, subfolder="vae", local_files_only=True)
    assert all(torch.equal(installed.state_dict()[k], v) for k, v in trained.items())
    # Generation records the base hash: a new VAE must show in it.
    assert model_hash(base) != untrained_hash
    # The latent scale is measured, not SD 1.5's constant.
    assert installed.config.scaling_factor != 0.18215
    pipe = StableDiffusionPipeline.from_pretrained(base, local_files_only=True)
    assert pipe.vae.config.scaling_factor == installed.config.scaling_factor
    record = json.loads((base / RECORD).read_text())
    assert record["output_hash"] == summary.output_hash == model_hash(cfg.vae.output)

    hash_after = model_hash(base)
    again = train_vae(cfg, progress=False)
    assert again.complete and again.output_hash == summary.output_hash
    assert model_hash(base) == hash_after
    changed = make_config(tmp_path, blocky, steps=3)
    with pytest.raises(CheckpointError, match="models init"):
        train_vae(changed, progress=False)


def test_interrupted_and_resumed_vae_equals_uninterrupted_run(tmp_path, blocky):
    vae = {"steps": 4, "grad_accum": 2, "lr_warmup_steps": 1}
    straight = make_config(tmp_path / "a", blocky, **vae)
    train_vae(straight, progress=False)

    broken = make_config(tmp_path / "b", blocky, **vae)
    stopped = train_vae(broken, max_steps=2, progress=False)
    assert not stopped.complete and not (broken.models.base / RECORD).exists()
    assert latest_checkpoint(broken.vae.output).name == "step-00002"
    resumed = train_vae(broken, progress=False)

    assert resumed.complete and resumed.resumed_from == 2
    a = load_file(straight.models.base / "vae" / WEIGHTS)
    b = load_file(broken.models.base / "vae" / WEIGHTS)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert model_hash(straight.models.base) == model_hash(broken.models.base)


def test_vae_is_not_trained_without_a_preset_or_with_zero_steps(tmp_path, blocky):
    assert train_vae(make_config(tmp_path, blocky, preset=None), progress=False) is None
    cfg = make_config(tmp_path / "zero", blocky, steps=0)
    assert train_vae(cfg, progress=False) is None
    assert not (cfg.models.base / RECORD).exists()


def test_cli_trains_the_vae(tmp_path, blocky):
    raw = raw_config(tmp_path, blocky, steps=1)
    config = tmp_path / "factory.yaml"
    config.write_text(yaml.safe_dump(raw))
    app = typer.Typer()
    register(app)
    result = CliRunner().invoke(app, ["train", "vae", str(config), "--no-resume"])
    assert result.exit_code == 0, result.output
    assert "vae: done at step 1/1" in result.output
    assert (tmp_path / "sd" / RECORD).is_file()


def test_install_killed_before_its_record_is_redone_from_the_untrained_vae(tmp_path, blocky):
    cfg = make_config(tmp_path, blocky, steps=2)
    base = cfg.models.base
    shutil.copytree(base / "vae", tmp_path / "untrained")
    train_vae(cfg, progress=False)
    trained = load_file(base / "vae" / WEIGHTS)
    # What a kill between the swap and the record leaves behind.
    (base / RECORD).unlink()
    shutil.copytree(tmp_path / "untrained", base / ".vae.old")

    again = train_vae(cfg, progress=False)
    assert again.complete and again.resumed_from == 2
    assert (base / RECORD).is_file() and not (base / ".vae.old").exists()
    reinstalled = load_file(base / "vae" / WEIGHTS)
    assert all(torch.equal(trained[k], reinstalled[k]) for k in trained)
