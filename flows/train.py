"""Flow: prepare the data, fine-tune the label LoRA, train the ControlNet."""

from __future__ import annotations

from pathlib import Path

from prefect import flow

from pipeline_lib.config import FactoryConfig
from pipeline_lib.train import TrainSummary
from pipeline_lib.train.resumable import SUMMARY
from tasks.data import prepare_data
from tasks.options import configured, refreshed_if_missing
from tasks.training import train_controlnet_task, train_label_lora_task


@flow(name="train-models")
def train_models(config: FactoryConfig) -> dict[str, TrainSummary]:
    data_ready = configured(refreshed_if_missing(prepare_data, config.data.root), config)
    data_ready(config)
    summaries = {}
    for name, train in (
        ("label_lora", train_label_lora_task),
        ("controlnet", train_controlnet_task),
    ):
        output = Path(getattr(config, name).output)
        summaries[name] = configured(refreshed_if_missing(train, output / SUMMARY), config)(config)
    return summaries
