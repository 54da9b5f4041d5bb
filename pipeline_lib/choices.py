"""The one source of the factory's choice lists: the config's Literals and the registries
that implement them are both built from these names (a light module: no heavy imports)."""

from __future__ import annotations

# validation.data: which folders a segmenter trains on, and the report's row names.
DATA_LABELS: dict[str, str] = {"gen": "Gen.", "ori": "Ori.", "both": "Gen.+Ori."}
# generation.scheduler: diffusers scheduler class of each name.
SCHEDULER_CLASSES: dict[str, str] = {
    "ddim": "DDIMScheduler",
    "ddpm": "DDPMScheduler",
    "dpmsolver": "DPMSolverMultistepScheduler",
    "euler": "EulerDiscreteScheduler",
    "pndm": "PNDMScheduler",
}
# validation.model: Mask2Former presets (pipeline_lib.validate.mask2former_configs).
SEGMENTERS: tuple[str, ...] = ("mask2former-cpu", "mask2former-r50", "mask2former-swin-t")
# store.image_codec: lossless image serializers (pipeline_lib.store.codecs), the default first.
IMAGE_CODECS: tuple[str, ...] = ("webp", "jpegxl", "htj2k", "png", "qoi", "zstd")
# label_lora.colours: the colours a label generator draws (pipeline_lib.data.classes).
LABEL_COLOUR_SETS: tuple[str, ...] = ("palette", "bits", "balanced-bits")
# validation.mix_by: how a training set of several sources draws its crops from them.
MIX_BY: tuple[str, ...] = ("pixels", "samples")
# train sections' lr_schedule: diffusers.optimization.get_scheduler name of each.
LR_SCHEDULES: dict[str, str] = {
    "constant": "constant_with_warmup",
    "cosine": "cosine",
    "linear": "linear",
}
