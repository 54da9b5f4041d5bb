"""Training of the VAE, the label LoRA and the ControlNet, resumable and exact."""

from pipeline_lib.train.controlnet import train_controlnet
from pipeline_lib.train.label_lora import train_label_lora
from pipeline_lib.train.resumable import TrainSummary
from pipeline_lib.train.vae import train_vae

__all__ = ["TrainSummary", "train_controlnet", "train_label_lora", "train_vae"]
