"""Flow: prepare the data, train a preset base's VAE and pre-train its UNet, fine-tune the
label LoRA, train the image model (ControlNet or concat)."""

from __future__ import annotations

from pathlib import Path

from prefect import flow

from pipeline_lib.config import FactoryConfig
from pipeline_lib.train import TrainSummary
from pipeline_lib.train.base import RECORD as BASE_RECORD
from pipeline_lib.train.base import base_training_applies
from pipeline_lib.train.resumable import SUMMARY
from pipeline_lib.train.vae import RECORD, vae_training_applies
from tasks.data import prepare_data
from tasks.options import configured, refreshed_if_missing
from tasks.training import (
    train_base_task,
    train_controlnet_task,
    train_label_lora_task,
    train_vae_task,
)


@flow(name="train-models")
def train_models(config: FactoryConfig) -> dict[str, TrainSummary]:
    configured(refreshed_if_missing(prepare_data, config.data.root), config)(config)
    summaries = {}
    if vae_training_applies(config):  # a from-scratch base needs its VAE before the generators
        vae = refreshed_if_missing(train_vae_task, Path(config.models.base) / RECORD)
        summaries["vae"] = configured(vae, config)(config)
    if base_training_applies(config):  # as SD learnt images before it was fine-tuned
        base = refreshed_if_missing(train_base_task, Path(config.models.base) / BASE_RECORD)
        summaries["base"] = configured(base, config)(config)
    for name, train in (
        ("label_lora", train_label_lora_task),
        ("controlnet", train_controlnet_task),
    ):
        output = Path(getattr(config, name).output)
        summaries[name] = configured(refreshed_if_missing(train, output / SUMMARY), config)(config)
    return summaries
