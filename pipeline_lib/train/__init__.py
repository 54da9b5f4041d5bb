"""Training of the VAE, the base UNet, the label LoRA and the image model, resumable."""

from pipeline_lib.train.base import train_base
from pipeline_lib.train.controlnet import train_controlnet
from pipeline_lib.train.label_lora import train_label_lora
from pipeline_lib.train.resumable import TrainSummary
from pipeline_lib.train.vae import train_vae

__all__ = ["TrainSummary", "train_base", "train_controlnet", "train_label_lora", "train_vae"]
