"""Label LoRA and ControlNet training: learning, saving, loading, exact resume, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import typer
import yaml
from diffusers import ControlNetModel, StableDiffusionControlNetPipeline, StableDiffusionPipeline
from factory_configs import minimal_config
from safetensors.torch import load_file
from typer.testing import CliRunner

from lfactory.model_commands import register
from pipeline_lib.config import config_from_dict
from pipeline_lib.data.loveda import write_tile
from pipeline_lib.errors import CheckpointError, ConfigError, DataError
from pipeline_lib.models.build import init_models
from pipeline_lib.models.model_hash import model_hash
from pipeline_lib.models.presets import FROM_SCRATCH_LORA_TARGETS
from pipeline_lib.precision import cpu_has_bf16
from pipeline_lib.train import train_controlnet, train_label_lora
from pipeline_lib.train.resumable import latest_checkpoint

LORA_FILE = "pytorch_lora_weights.safetensors"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return init_models(tmp_path_factory.mktemp("models") / "sd", "tiny", seed=0)


@pytest.fixture(scope="module")
def blocky(tmp_path_factory):
    """Three 64 px Train tiles: 16 px class blocks, random images."""
    root = tmp_path_factory.mktemp("loveda")
    rng = np.random.default_rng(0)
    for i, scene in enumerate(("Urban", "Urban", "Rural")):
        mask = np.kron(rng.integers(0, 8, (4, 4)), np.ones((16, 16), int)).astype(np.uint8)
        image = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
        write_tile(root, "Train", scene, str(i), image, mask)
    return root


def make_config(tmp_path, base, data, **sections):
    raw = {
        "work_dir": str(tmp_path / "work"),
        "data": {"root": str(data)},
        "models": {"base": str(base)},
    }
    for name, values in sections.items():
        raw[name] = values
    return config_from_dict(raw)


def small(**extra):
    values = {"batch_size": 2, "resolution": 32, "checkpoint_every": 2, "lr": 1e-3}
    return values | extra


def one_water_tile(tmp_path, base, steps, **extra):
    """A config whose label LoRA learns one all-water 32 px tile for ``steps`` steps."""
    water = np.full((32, 32), 4, np.uint8)
    write_tile(tmp_path / "one", "Train", "Urban", "0", np.zeros((32, 32, 3), np.uint8), water)
    lora = small(
        steps=steps,
        batch_size=4,
        lr=1e-2,
        checkpoint_every=steps,
        empty_prompt_prob=0.0,
        target_modules=list(FROM_SCRATCH_LORA_TARGETS),
        **extra,
    )
    return make_config(tmp_path, base, tmp_path / "one", label_lora=lora)


def test_label_lora_overfits_one_fixed_tile(tmp_path, base):
    summary = train_label_lora(one_water_tile(tmp_path, base, 80), progress=False)
    losses = [loss for _, loss in summary.loss_curve]
    assert len(losses) == 80
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:10]), losses


def test_cpu_mixed_precision_is_bf16_only_where_the_cpu_computes_it(tmp_path, base, monkeypatch):
    from pipeline_lib.train import resumable

    cfg = make_config(tmp_path, base, tmp_path)

    def precision(asked):
        # Read at once: accelerate keeps one process-wide state for every Accelerator.
        train = cfg.base.model_copy(update={"mixed_precision": asked})
        accelerator = resumable.make_accelerator(cfg, train)
        return accelerator.mixed_precision, resumable.weight_dtype(accelerator)

    native = "bf16" if resumable.cpu_has_bf16() else "no"
    # Frozen modules keep fp32 weights on a CPU: autocast casts per operation.
    assert precision("bf16") == (native, torch.float32)
    assert precision("fp16") == precision("no") == ("no", torch.float32)
    monkeypatch.setattr(resumable, "cpu_has_bf16", lambda: False)
    assert precision("bf16") == ("no", torch.float32)


@pytest.mark.skipif(not cpu_has_bf16(), reason="this CPU computes no bfloat16 natively")
def test_label_model_learns_under_cpu_bf16_and_saves_fp32_weights(tmp_path, base):
    cfg = one_water_tile(tmp_path, base, 60, mixed_precision="bf16")
    losses = [loss for _, loss in train_label_lora(cfg, progress=False).loss_curve]
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:10]), losses
    weights = load_file(cfg.label_lora.output / LORA_FILE)
    assert {w.dtype for w in weights.values()} == {torch.float32}


def test_saved_lora_loads_in_plain_pipeline_and_changes_its_output(tmp_path, base, blocky):
    # alpha != rank: loading must read the saved metadata, not assume alpha = rank.
    lora = small(steps=4, rank=4, alpha=8.0, lr=1e-2)
    cfg = make_config(tmp_path, base, blocky, label_lora=lora)
    train_label_lora(cfg, progress=False)
    pipe = StableDiffusionPipeline.from_pretrained(base, local_files_only=True)

    def render():
        generator = torch.Generator().manual_seed(0)
        return pipe(
            "x", num_inference_steps=2, height=32, width=32, output_type="np", generator=generator
        ).images

    before = render()
    pipe.load_lora_weights(cfg.label_lora.output)
    assert pipe.unet.peft_config["default_0"].lora_alpha == 8.0
    assert pipe.unet.peft_config["default_0"].r == 4
    assert np.abs(render() - before).max() > 1e-4


def test_interrupted_and_resumed_lora_equals_uninterrupted_run(tmp_path, base, blocky):
    lora = small(steps=6, grad_accum=2, lr_warmup_steps=2, lr=1e-2)
    straight = make_config(tmp_path / "a", base, blocky, label_lora=lora)
    train_label_lora(straight, progress=False)

    broken = make_config(tmp_path / "b", base, blocky, label_lora=lora)
    stopped = train_label_lora(broken, max_steps=3, progress=False)
    assert not stopped.complete and stopped.steps == 3
    assert latest_checkpoint(broken.label_lora.output).name == "step-00003"
    assert not (broken.label_lora.output / LORA_FILE).exists()
    changed = make_config(tmp_path / "b", base, blocky, label_lora=lora | {"lr": 5e-3})
    with pytest.raises(CheckpointError, match="different config hash"):
        train_label_lora(changed, progress=False)
    # Batches are a pure function of the step, so prefetching workers change nothing.
    broken.label_lora.data_workers = 1
    resumed = train_label_lora(broken, progress=False)

    assert resumed.complete and resumed.resumed_from == 3 and resumed.steps == 6
    a = load_file(straight.label_lora.output / LORA_FILE)
    b = load_file(broken.label_lora.output / LORA_FILE)
    assert a.keys() == b.keys() and len(a) > 0
    assert all(torch.equal(a[k], b[k]) for k in a)
    summary = json.loads((broken.label_lora.output / "training_summary.json").read_text())
    assert summary["steps"] == 6 and summary["base_model_hash"] == model_hash(base)
    assert summary["final_loss"] == resumed.final_loss and summary["samples_per_s"] > 0
    # What generation records as the LoRA hash ignores checkpoints and the summary.
    assert summary["output_hash"] == model_hash(straight.label_lora.output)


def test_a_decaying_rate_resumes_exactly_and_its_checkpoints_refuse_other_steps(
    tmp_path, base, blocky
):
    lora = small(steps=4, lr=1e-2, lr_schedule="cosine")
    straight = make_config(tmp_path / "a", base, blocky, label_lora=lora)
    train_label_lora(straight, progress=False)
    constant = make_config(
        tmp_path / "c", base, blocky, label_lora=lora | {"lr_schedule": "constant"}
    )
    train_label_lora(constant, progress=False)

    broken = make_config(tmp_path / "b", base, blocky, label_lora=lora)
    train_label_lora(broken, max_steps=2, progress=False)
    # Where the rate ends shapes every step, so a longer run is not this one continued.
    longer = make_config(tmp_path / "b", base, blocky, label_lora=lora | {"steps": 6})
    with pytest.raises(CheckpointError, match="different config hash"):
        train_label_lora(longer, progress=False)
    assert train_label_lora(broken, progress=False).resumed_from == 2

    a, b, c = (load_file(cfg.label_lora.output / LORA_FILE) for cfg in (straight, broken, constant))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a), "lr_schedule changed nothing"


@pytest.mark.parametrize("spike", [10.0, float("nan")])
def test_a_diverging_loss_stops_training_and_keeps_the_checkpoint_before_it(
    tmp_path, base, blocky, monkeypatch, spike
):
    from pipeline_lib.errors import TrainingDivergedError
    from pipeline_lib.train.objective import DiffusionLoss

    calls = []
    mse = DiffusionLoss.mse

    def spiking(prediction, target, weights=None):  # from step 13 on, as a bf16 blow-up looks
        calls.append(1)
        return mse(prediction, target, weights) * (spike if len(calls) > 12 else 1.0)

    monkeypatch.setattr(DiffusionLoss, "mse", staticmethod(spiking))
    cfg = make_config(tmp_path, base, blocky, label_lora=small(steps=30, checkpoint_every=6))
    with pytest.raises(TrainingDivergedError, match="label-lora"):
        train_label_lora(cfg, progress=False)
    assert latest_checkpoint(cfg.label_lora.output).name == "step-00012"
    assert not (cfg.label_lora.output / LORA_FILE).exists()


def test_a_step_split_into_micro_batches_sees_the_same_samples(tmp_path, base, blocky):
    # The OOM fallback halves the batch and doubles accumulation, even mid-run.
    whole = make_config(tmp_path / "a", base, blocky, label_lora=small(steps=2, batch_size=4))
    train_label_lora(whole, progress=False)
    split = make_config(tmp_path / "b", base, blocky, label_lora=small(steps=2, batch_size=4))
    train_label_lora(split, max_steps=1, progress=False)
    split.label_lora.batch_size, split.label_lora.grad_accum = 2, 2
    assert train_label_lora(split, progress=False).resumed_from == 1
    a = load_file(whole.label_lora.output / LORA_FILE)
    b = load_file(split.label_lora.output / LORA_FILE)
    # Equal up to float summation order only.
    assert all(torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-6) for k in a)


def test_finished_run_resumes_to_the_same_weights_without_training(tmp_path, base, blocky):
    cfg = make_config(tmp_path, base, blocky, label_lora=small(steps=2))
    first = train_label_lora(cfg, progress=False)
    weights = load_file(cfg.label_lora.output / LORA_FILE)
    again = train_label_lora(cfg, progress=False)
    assert again.resumed_from == 2 and again.final_loss == first.final_loss
    rewritten = load_file(cfg.label_lora.output / LORA_FILE)
    assert all(torch.equal(weights[k], rewritten[k]) for k in weights)
    # safetensors writes its metadata in random order; the hash must not follow it.
    assert again.output_hash == first.output_hash


def test_controlnet_trains_resumes_exactly_and_loads_in_plain_pipeline(tmp_path, base, blocky):
    net = small(steps=4, batch_size=1)
    straight = make_config(tmp_path / "a", base, blocky, controlnet=net)
    summary = train_controlnet(straight, progress=False)
    assert summary.complete and summary.kind == "controlnet"

    broken = make_config(tmp_path / "b", base, blocky, controlnet=net)
    train_controlnet(broken, max_steps=1, progress=False)
    train_controlnet(broken, progress=False)
    a = ControlNetModel.from_pretrained(straight.controlnet.output, local_files_only=True)
    b = ControlNetModel.from_pretrained(broken.controlnet.output, local_files_only=True)
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    initial = ControlNetModel.from_pretrained(base / "controlnet", local_files_only=True)
    assert any(not torch.equal(sa[k], v) for k, v in initial.state_dict().items())

    pipe = StableDiffusionControlNetPipeline.from_pretrained(
        base, controlnet=a, local_files_only=True
    )
    images = pipe(
        "x",
        image=torch.rand(1, 3, 32, 32),
        num_inference_steps=2,
        height=32,
        width=32,
        output_type="np",
    ).images
    assert images.shape == (1, 32, 32, 3)


def test_training_initialises_a_missing_base_from_its_preset(tmp_path, blocky):
    cfg = make_config(tmp_path, tmp_path / "fresh-sd", blocky, label_lora=small(steps=1))
    cfg.models.preset = "tiny"
    summary = train_label_lora(cfg, progress=False)
    assert summary.base_model_hash == model_hash(tmp_path / "fresh-sd")
    assert (tmp_path / "fresh-sd" / "controlnet" / "config.json").is_file()


def test_missing_base_without_preset_is_a_checkpoint_error(tmp_path, blocky):
    cfg = make_config(tmp_path, tmp_path / "nowhere", blocky, label_lora=small(steps=1))
    with pytest.raises(CheckpointError, match="nowhere"):
        train_label_lora(cfg, progress=False)


def test_data_without_train_masks_is_a_data_error(tmp_path, base):
    write_tile(tmp_path / "d", "Val", "Urban", "0", np.zeros((32, 32, 3), np.uint8), None)
    cfg = make_config(tmp_path, base, tmp_path / "d", label_lora=small(steps=1))
    with pytest.raises(DataError, match="no Train tiles with masks"):
        train_label_lora(cfg, progress=False)


def test_cli_trains_label_lora_from_yaml_and_stops_at_max_steps(tmp_path, base, blocky):
    config = tmp_path / "factory.yaml"
    raw = {
        "work_dir": str(tmp_path / "work"),
        "data": {"root": str(blocky)},
        "models": {"base": str(base)},
        "label_lora": small(steps=3),
    }
    config.write_text(yaml.safe_dump(raw))
    app = typer.Typer()
    register(app)
    result = CliRunner().invoke(app, ["train", "label-lora", str(config), "--max-steps", "1"])
    assert result.exit_code == 0, result.output
    assert "stopped at step 1/3" in result.output
    result = CliRunner().invoke(app, ["train", "label-lora", str(config), "--no-resume"])
    assert result.exit_code == 0, result.output
    assert "done at step 3/3" in result.output


def test_cli_training_synthesises_the_configured_data_set_first(tmp_path):
    train = {"steps": 1, "batch_size": 2, "resolution": 32, "checkpoint_every": 1}
    raw = minimal_config(tmp_path / "work", models={"preset": "tiny-pixel"}, base=train)
    config = tmp_path / "factory.yaml"
    config.write_text(yaml.safe_dump(raw))
    app = typer.Typer()
    register(app)
    result = CliRunner().invoke(app, ["train", "base", str(config)])
    assert result.exit_code == 0, result.output
    assert "done at step 1/1" in result.output
    root = config_from_dict(raw).data.root
    assert len(list((root / "Train").glob("*/masks_png/*.png"))) == 4


def test_self_conditioning_off_keeps_the_checkpoint_hash_it_had_before_the_field():
    from pipeline_lib.config import LabelLoraConfig
    from pipeline_lib.train.resumable import train_section_hash

    full = LabelLoraConfig(method="full", colours="bits", steps=6000)
    # Computed by 64468b7, before self_condition existed: its checkpoints must still resume.
    assert train_section_hash(full, "a prompt") == "0bb30fda36a9cdc8"
    widened = full.model_copy(update={"self_condition": True})
    assert train_section_hash(widened, "a prompt") != train_section_hash(full, "a prompt")


def test_noise_offset_shifts_each_colour_of_a_sample_by_one_seeded_draw():
    from pipeline_lib.config import ControlNetConfig
    from pipeline_lib.train.objective import DiffusionLoss
    from pipeline_lib.train.resumable import train_section_hash

    loss = DiffusionLoss.__new__(DiffusionLoss)
    loss.channels_per_offset = 4  # the pixel codec: 3 colours x a 2x2 fold = 12 channels
    offsets = loss._offsets([7, 8], torch.Size((12, 5, 5)))
    assert offsets.shape == (2, 12, 5, 5)
    # One value per colour, the same over its four folded channels and every pixel...
    per_colour = offsets.reshape(2, 3, -1)
    assert torch.equal(per_colour, per_colour[..., :1].expand_as(per_colour))
    # ...drawn apart for each colour and sample, and the same draw for the same seed.
    assert len(set(per_colour[..., 0].flatten().tolist())) == 6
    assert torch.equal(loss._offsets([8], torch.Size((12, 5, 5)))[0], offsets[1])
    # Off, the section hashes as before the field existed; on, it is another run.
    plain = ControlNetConfig(steps=10)
    assert train_section_hash(plain, "p") == train_section_hash(
        plain.model_copy(update={"noise_offset": 0.0}), "p"
    )
    assert train_section_hash(plain.model_copy(update={"noise_offset": 0.1}), "p") != (
        train_section_hash(plain, "p")
    )


def _weights(folder):
    return load_file(next(folder.glob("*.safetensors")))


@pytest.mark.parametrize(
    ("section", "train", "extra"),
    [
        ("label_lora", train_label_lora, {"method": "full", "colours": "bits"}),
        ("controlnet", train_controlnet, {"conditioning": "concat"}),
    ],
    ids=["label model", "concat image model"],
)
def test_a_generator_goes_on_from_the_model_another_config_trained(
    tmp_path, base, blocky, section, train, extra
):
    # Progressive training: a second config (here at another resolution) starts from the
    # first one's model. At a vanishing rate its one step leaves those weights as they were.
    first = make_config(tmp_path / "a", base, blocky, **{section: small(steps=3, **extra)})
    train(first, progress=False)
    trained = getattr(first, section).output
    go_on = small(steps=1, resolution=16, lr=1e-30, init_from=str(trained), **extra)
    second = make_config(tmp_path / "b", base, blocky, **{section: go_on})
    summary = train(second, progress=False)
    before, after = _weights(trained), _weights(getattr(second, section).output)
    assert all(torch.allclose(before[k], after[k], atol=1e-6) for k in before)
    fresh = make_config(tmp_path / "c", base, blocky, **{section: small(steps=1, **extra)})
    assert summary.config_hash != train(fresh, progress=False).config_hash

    missing = go_on | {"init_from": str(tmp_path / "nowhere")}
    with pytest.raises(CheckpointError, match=f"{section}.init_from: .*nowhere"):
        train(make_config(tmp_path / "d", base, blocky, **{section: missing}), progress=False)


def test_a_label_model_read_in_other_colours_is_refused_by_name(tmp_path, base, blocky):
    from pipeline_lib.generate.sampler import Generator

    full = {"method": "full", "colours": "bits"}
    first = make_config(tmp_path / "a", base, blocky, label_lora=small(steps=1, **full))
    train_label_lora(first, progress=False)
    trained = str(first.label_lora.output)
    Generator(first, with_images=False)  # read in the colours it learnt: fine

    balanced = full | {"colours": "balanced-bits"}
    go_on = small(steps=1, init_from=trained, **balanced)
    second = make_config(tmp_path / "b", base, blocky, label_lora=go_on)
    with pytest.raises(ConfigError, match=r"label_lora.init_from: .*'bits' colours"):
        train_label_lora(second, progress=False)
    assert not second.label_lora.output.exists()
    read = make_config(tmp_path / "c", base, blocky, label_lora=small(output=trained, **balanced))
    with pytest.raises(ConfigError, match=r"label_lora.output: .*'balanced-bits'"):
        Generator(read, with_images=False)


def test_init_from_a_label_lora_is_refused_by_name():
    from pipeline_lib.config import LabelLoraConfig

    with pytest.raises(ValueError, match="init_from needs method: full"):
        LabelLoraConfig(init_from="somewhere")


def test_soft_edge_crops_are_noised_blurred_and_aimed_at_the_sharp_label(tmp_path, blocky):
    from pipeline_lib.config import LabelLoraConfig
    from pipeline_lib.models.sd_folder import load_sd_components
    from pipeline_lib.train.objective import DiffusionLoss, soft_edges
    from pipeline_lib.train.resumable import train_section_hash

    pixel_base = init_models(tmp_path / "sd", "tiny-pixel", seed=0)
    sd = load_sd_components(pixel_base)

    def loss_with(share):
        lora = small(method="full", colours="bits", soft_edges=share)
        cfg = make_config(tmp_path, pixel_base, blocky, label_lora=lora)
        return DiffusionLoss.for_training(
            cfg, cfg.label_lora, sd, torch.device("cpu"), torch.float32, use_label=True
        )

    plain, soft = loss_with(0.0), loss_with(1.0)
    batch = plain.batch(0, 0)
    noisy, t, _, target = plain.inputs(batch)
    soft_noisy, soft_t, _, soft_target = soft.inputs(batch)
    assert torch.equal(t, soft_t)
    scale = sd.vae.config.scaling_factor
    sharp = sd.vae.encode(batch.label * 2 - 1).latent_dist.mean * scale
    blurred = sd.vae.encode(soft_edges(batch.label * 2 - 1)).latent_dist.mean * scale
    alpha = plain._alphas(t, noisy)
    # The soft crop is the same noise on the blurred label (16 px blocks: edges to soften)...
    assert torch.allclose(soft_noisy - noisy, alpha.sqrt() * (blurred - sharp), atol=1e-5)
    assert not torch.allclose(soft_noisy, noisy)
    # ...and both targets lead the model's clean estimate to the sharp label.
    assert torch.allclose(plain.predicted_sample(noisy, t, target), sharp, atol=1e-3)
    assert torch.allclose(soft.predicted_sample(soft_noisy, t, soft_target), sharp, atol=1e-3)
    # A soft crop's loss is damped below sigma 0.3 only; plain crops keep weight 1.
    low, high = torch.tensor([10, 10]), torch.tensor([900, 900])
    assert torch.equal(plain.sample_weights(batch, low), torch.ones(2))
    assert (soft.sample_weights(batch, low) < 0.1).all()
    assert torch.equal(soft.sample_weights(batch, high), torch.ones(2))
    # Off, the section hashes as before the field existed; on, it is another run.
    full = LabelLoraConfig(method="full", colours="bits", steps=6000)
    assert train_section_hash(full, "a prompt") == "0bb30fda36a9cdc8"
    assert train_section_hash(full.model_copy(update={"soft_edges": 0.25}), "a prompt") != (
        "0bb30fda36a9cdc8"
    )
    # Training takes the weighted loss and saves a model.
    lora = small(method="full", colours="bits", soft_edges=0.5, steps=2)
    summary = train_label_lora(make_config(tmp_path, pixel_base, blocky, label_lora=lora))
    assert summary.complete and np.isfinite(summary.final_loss)
