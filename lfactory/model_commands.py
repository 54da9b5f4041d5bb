"""``lfactory models ...`` and ``lfactory train ...``: build base models, train the generators."""

from __future__ import annotations

import logging
from pathlib import Path

import typer

from pipeline_lib.config import load_config
from pipeline_lib.models.presets import PRESETS

models_app = typer.Typer(
    help="Build local Stable Diffusion model directories.", no_args_is_help=True
)
train_app = typer.Typer(
    help="Train the VAE, the label LoRA and the ControlNet.", no_args_is_help=True
)


_OUT = typer.Argument(..., help="new SD directory (diffusers layout; ControlNet in OUT/controlnet)")


@models_app.command("init")
def init(
    out: Path = _OUT,
    preset: str = typer.Option("tiny", help=f"one of: {', '.join(PRESETS)}"),
    seed: int = typer.Option(0, help="seed of the random initialisation"),
    force: bool = typer.Option(False, "--force", help="replace OUT if it exists"),
) -> None:
    """Build SD components (UNet, VAE, CLIP, tokenizer, scheduler, ControlNet) from a preset."""
    from pipeline_lib.models.build import init_models
    from pipeline_lib.models.model_hash import model_hash

    path = init_models(out, preset, seed=seed, overwrite=force)
    typer.echo(f"wrote {path} ({preset}, seed {seed}), hash {model_hash(path)}")


def _train(kind: str, config: Path, max_steps: int | None, no_resume: bool) -> None:
    # Imported here so that `lfactory --help` stays fast.
    from pipeline_lib.data.prepare import prepare_dataset
    from pipeline_lib.train import train_base, train_controlnet, train_label_lora, train_vae

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = load_config(config)
    # As the flow does first: synthesise the configured data set if absent, check it.
    prepare_dataset(cfg.data, progress=True)
    trainers = {
        "vae": train_vae,
        "base": train_base,
        "label-lora": train_label_lora,
        "controlnet": train_controlnet,
    }
    summary = trainers[kind](cfg, resume=not no_resume, max_steps=max_steps, progress=True)
    if summary is None:
        typer.echo(f"{kind}: nothing to train (models.preset is unset or {kind}.steps is 0)")
        return
    state = "done" if summary.complete else "stopped"
    typer.echo(
        f"{kind}: {state} at step {summary.steps}/{summary.target_steps}, "
        f"final loss {summary.final_loss}, {summary.steps_per_s} steps/s -> {summary.output}"
    )


_MAX_STEPS = typer.Option(None, "--max-steps", help="stop (with a checkpoint) after this step")
_NO_RESUME = typer.Option(False, "--no-resume", help="ignore and delete earlier checkpoints")
_CONFIG = typer.Argument(..., help="factory YAML config")


@train_app.command("vae")
def vae(
    config: Path = _CONFIG, max_steps: int | None = _MAX_STEPS, no_resume: bool = _NO_RESUME
) -> None:
    """Train a preset base's VAE on images and labels, once, into models.base/vae."""
    _train("vae", config, max_steps, no_resume)


@train_app.command("base")
def base(
    config: Path = _CONFIG, max_steps: int | None = _MAX_STEPS, no_resume: bool = _NO_RESUME
) -> None:
    """Pre-train a preset base's UNet on the Train images (text-to-image), once."""
    _train("base", config, max_steps, no_resume)


@train_app.command("label-lora")
def label_lora(
    config: Path = _CONFIG, max_steps: int | None = _MAX_STEPS, no_resume: bool = _NO_RESUME
) -> None:
    """Train the label generator (UNet LoRA on colourised masks) into label_lora.output."""
    _train("label-lora", config, max_steps, no_resume)


@train_app.command("controlnet")
def controlnet(
    config: Path = _CONFIG, max_steps: int | None = _MAX_STEPS, no_resume: bool = _NO_RESUME
) -> None:
    """Train the image generator (ControlNet or concat UNet, label -> image) into
    controlnet.output."""
    _train("controlnet", config, max_steps, no_resume)


def register(app: typer.Typer) -> None:
    """Add ``models`` and ``train`` to the main app."""
    app.add_typer(models_app, name="models")
    app.add_typer(train_app, name="train")
