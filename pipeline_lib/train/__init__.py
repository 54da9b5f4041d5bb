"""Training of the label LoRA and the ControlNet, resumable and exact."""

from pipeline_lib.train.controlnet import train_controlnet
from pipeline_lib.train.label_lora import train_label_lora
from pipeline_lib.train.resumable import TrainSummary

__all__ = ["TrainSummary", "train_controlnet", "train_label_lora"]
