"""Tasks: train a preset base's VAE, fine-tune the label LoRA, train the ControlNet
(GPU, cached, OOM-safe)."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.context import TaskRunContext

from pipeline_lib.config import FactoryConfig, TrainConfig
from pipeline_lib.data.loveda import fingerprint
from pipeline_lib.micro_batches import exact_splits, split_batch
from pipeline_lib.models.model_hash import model_hash
from pipeline_lib.train import (
    TrainSummary,
    train_base,
    train_controlnet,
    train_label_lora,
    train_vae,
)
from tasks.options import GPU_TAG, back_off_on_oom, digest


def _base_identity(config: FactoryConfig) -> str:
    # A base built from a preset is a function of the preset and its seed (it may not exist
    # yet when the key is computed); a real checkpoint is known by its files.
    if config.models.preset is not None:
        return digest("preset", config.models.preset, config.models.seed, config.vae, config.base)
    return model_hash(Path(config.models.base))


def _start_identity(train: TrainConfig) -> tuple[str, ...]:
    # A stage that goes on from another config's model is a function of that model's weights
    # (nothing where it starts from the base, so earlier keys stay what they were).
    start = getattr(train, "init_from", None)
    return (model_hash(start),) if start is not None and Path(start).exists() else ()


def _training_key(section: str):
    def key(_: TaskRunContext, params: dict) -> str:
        config: FactoryConfig = params["config"]
        train = getattr(config, section)
        return digest(
            f"train-{section}",
            train,
            *_start_identity(train),
            config.models,
            config.generation.prompt,
            config.generation.styles,
            _base_identity(config),
            fingerprint(config.data.root),
        )

    return key


def _with_batch(config: FactoryConfig, section: str, batch_size: int) -> FactoryConfig:
    """Smaller micro-batches, more accumulation: exactly the effective batch asked for."""
    return config.model_copy(update={section: split_batch(getattr(config, section), batch_size)})


def _train_with_oom_back_off(train, config: FactoryConfig, section: str, what: str):
    return back_off_on_oom(
        lambda b: train(_with_batch(config, section, b), progress=True),
        exact_splits(getattr(config, section).batch_size),
        what,
    )


@task(name="train-vae", tags=[GPU_TAG], cache_key_fn=_training_key("vae"))
def train_vae_task(config: FactoryConfig) -> TrainSummary | None:
    """The VAE of a from-scratch preset base, trained once and installed into the base."""
    return _train_with_oom_back_off(train_vae, config, "vae", "VAE training")


@task(name="train-base", tags=[GPU_TAG], cache_key_fn=_training_key("base"))
def train_base_task(config: FactoryConfig) -> TrainSummary | None:
    """A from-scratch preset's UNet pre-trained on the Train images, installed into the base."""
    return _train_with_oom_back_off(train_base, config, "base", "base pre-training")


@task(name="train-label-lora", tags=[GPU_TAG], cache_key_fn=_training_key("label_lora"))
def train_label_lora_task(config: FactoryConfig) -> TrainSummary:
    return _train_with_oom_back_off(train_label_lora, config, "label_lora", "label LoRA training")


@task(name="train-controlnet", tags=[GPU_TAG], cache_key_fn=_training_key("controlnet"))
def train_controlnet_task(config: FactoryConfig) -> TrainSummary:
    return _train_with_oom_back_off(train_controlnet, config, "controlnet", "ControlNet training")
