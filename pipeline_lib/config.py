"""Typed configuration of the whole factory, loaded from YAML.

One ``FactoryConfig`` travels from the CLI through flows and tasks into the library.
Relative paths are resolved against the working directory at load time, so the object
that reaches a Prefect worker holds absolute paths. Paths left out default to places
under ``work_dir``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_serializer,
    field_validator,
    model_serializer,
    model_validator,
)

from pipeline_lib.choices import (
    DATA_LABELS,
    IMAGE_CODECS,
    LABEL_COLOUR_SETS,
    LR_SCHEDULES,
    MIX_BY,
    SCHEDULER_CLASSES,
    SEGMENTERS,
)
from pipeline_lib.data.classes import CLASS_NAMES
from pipeline_lib.errors import ConfigError
from pipeline_lib.models.presets import LORA_TARGETS, PRESETS

DEFAULT_PROMPT = "professional photograph, Satellite imagery, remote sensing, worldview"


class Section(BaseModel):
    # Unknown keys are errors: a typo must never silently fall back to a default.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)
    # Fields added after cache keys were first computed: omitted from the dump while at
    # their default, so cache keys, store names and saved configs stay what they were.
    _later_fields: ClassVar[tuple[str, ...]] = ()

    @model_serializer(mode="wrap")
    def _omit_later_defaults(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data = handler(self)
        fields = type(self).model_fields
        for name in self._later_fields:
            if getattr(self, name) == fields[name].get_default(call_default_factory=True):
                data.pop(name, None)
        return data


class SynthConfig(Section):
    """The embedded synthetic LoveDA-layout data set, made when ``data.root`` is missing."""

    tiles: int = Field(
        24, ge=2, description="tiles per split (Train and Val), half Urban half Rural"
    )
    size: int = Field(128, ge=32, le=2048, description="tile side in pixels")
    seed: int = 0


class DataConfig(Section):
    root: Path | None = Field(None, description="LoveDA release-layout folder (Original data)")
    synth: SynthConfig | None = Field(None, description="make a synthetic data set at root")
    eval_root: Path | None = Field(None, description="LoveDA-layout folder whose Val is evaluated")


class ModelsConfig(Section):
    base: Path | None = Field(None, description="Stable Diffusion directory (diffusers layout)")
    preset: Literal[tuple(PRESETS)] | None = Field(  # type: ignore[valid-type]
        None, description="initialise base from this preset when it does not exist"
    )
    seed: int = Field(0, description="seed of the random initialisation from preset")


class TrainConfig(Section):
    steps: int = Field(200, ge=1)
    batch_size: int = Field(4, ge=1)
    grad_accum: int = Field(1, ge=1)
    lr: float = Field(1e-4, gt=0)
    lr_warmup_steps: int = Field(0, ge=0)
    lr_schedule: Literal[tuple(LR_SCHEDULES)] = Field(  # type: ignore[valid-type]
        "constant",
        description="after warm-up: constant, or decayed to 0 at the last step (cosine, linear)",
    )
    resolution: int = Field(64, ge=8, le=2048)
    checkpoint_every: int = Field(50, ge=1)
    mixed_precision: Literal["no", "fp16", "bf16"] = Field(
        "no",
        description="autocast on CUDA; on a CPU only bf16, and only where the CPU computes "
        "bfloat16 natively (AVX512-BF16 or AMX; elsewhere fp32)",
    )
    seed: int = 0
    output: Path | None = None
    empty_prompt_prob: float = Field(
        0.1, ge=0, le=1, description="share of samples trained with an empty prompt (for CFG)"
    )
    max_grad_norm: float = Field(1.0, gt=0)
    divergence_factor: float | None = Field(
        2.0,
        gt=1,
        description="stop, keeping the last checkpoint, when a checkpoint interval's mean loss "
        "exceeds this many times the lowest earlier interval's (None: only a NaN stops)",
    )
    keep_checkpoints: int = Field(2, ge=1, description="resume checkpoints kept on disk")
    data_workers: int = Field(0, ge=0, description="DataLoader processes preparing batches")
    crop_scale: tuple[float, float] | None = Field(
        None,
        description="crop side over resolution, drawn in this range (1, 1: the tile's own "
        "scale); None: half to all of the tile, resized",
    )
    ema_decay: float | None = Field(
        None, gt=0, lt=1, description="keep an exponential moving average of the weights"
    )
    noise_offset: float = Field(
        0.0,
        ge=0,
        description="add this much of one normal draw per colour to each sample's noise, so "
        "the model learns to move a sample's mean colour (0: off)",
    )

    @field_validator("mixed_precision", mode="before")
    @classmethod
    def _yaml_no(cls, value: Any) -> Any:
        return "no" if value is False else value  # YAML reads a bare `no` as false

    @model_validator(mode="after")
    def _ordered_scale(self) -> TrainConfig:
        if self.crop_scale is not None and not 0 < self.crop_scale[0] <= self.crop_scale[1]:
            raise ValueError(f"crop_scale must be 0 < low <= high, got {self.crop_scale}")
        return self


class GeneratorTrainConfig(TrainConfig):
    """A generator stage, which may go on from its own model trained by another config."""

    _later_fields: ClassVar[tuple[str, ...]] = ("init_from",)

    init_from: Path | None = Field(
        None,
        description="start from this stage's model as another config trained it (e.g. at a "
        "lower resolution: progressive training) instead of from the base; train that first",
    )


class LabelLoraConfig(GeneratorTrainConfig):
    _later_fields: ClassVar[tuple[str, ...]] = ("init_from", "class_mix", "mix_of", "soft_edges")

    method: Literal["lora", "full"] = Field(
        "lora",
        description="lora: a LoRA on the base UNet (the research's, for real SD); full: the "
        "whole base UNet fine-tuned (a from-scratch tiny base learns labels faster that way)",
    )
    colours: Literal[LABEL_COLOUR_SETS] = Field(  # type: ignore[valid-type]
        "palette",
        description="colours the label generator draws: palette (mmseg's, as the research) "
        "bits (each raw value's three bits on a corner of the RGB cube), or balanced-bits "
        "(the corners reordered so that each channel is on for about half of the pixels)",
    )
    self_condition: bool = Field(
        False,
        description="feed the model its own previous estimate of the label beside the noisy "
        "one (self-conditioning, as analog bits do); needs method full",
    )
    class_mix: bool = Field(
        False,
        description="tell the model each training crop's class shares, and sample it with "
        "shares of Train crops, so that it draws Train's class mix; needs method full",
    )
    mix_of: Literal["crop", "tile"] = Field(
        "crop",
        description="whose shares the mix is: the training crop's own, or its whole source "
        "tile's (the scene: every window of a sample drawn in windows shares it, and the "
        "generator samples with Train tiles' mixes)",
    )
    soft_edges: float = Field(
        0.0,
        ge=0,
        le=1,
        description="this share of training crops is noised from the label blurred by one "
        "pixel while the target stays the sharp label, so that the model learns to sharpen "
        "the soft edges a sampling trajectory carries (bench.label_sharpness)",
    )
    rank: int = Field(8, ge=1)
    alpha: float = Field(8.0, gt=0)
    target_modules: str | list[str] = Field(
        "attention",
        description=f"module names, or a named set: {', '.join(LORA_TARGETS)}",
    )

    @model_validator(mode="after")
    def _self_condition_widens_the_unet(self) -> LabelLoraConfig:
        # The estimate widens the UNet's input; a LoRA shares the base UNet with the image pass.
        if self.self_condition and self.method != "full":
            raise ValueError("self_condition needs method: full (a LoRA cannot widen the UNet)")
        if self.class_mix and self.method != "full":
            raise ValueError("class_mix needs method: full (a LoRA cannot add an embedding)")
        if self.mix_of != "crop" and not self.class_mix:
            raise ValueError("mix_of needs class_mix: true")
        if self.init_from is not None and self.method != "full":
            raise ValueError("init_from needs method: full (it loads a whole label UNet)")
        return self

    @field_validator("target_modules")
    @classmethod
    def _known_set(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, str) and value not in LORA_TARGETS:
            raise ValueError(f"unknown target set {value!r}; known: {', '.join(LORA_TARGETS)}")
        return value

    @property
    def modules(self) -> list[str]:
        """The module names the LoRA wraps."""
        named = self.target_modules
        return list(LORA_TARGETS[named]) if isinstance(named, str) else list(named)

    @field_serializer("target_modules")
    def _as_names(self, value: str | list[str]) -> list[str]:
        # A set's name and its members are the same training: hashes see the members.
        return self.modules


class ControlNetConfig(GeneratorTrainConfig):
    """The image model: a ControlNet beside the UNet (the research's path, for real SD), or
    the base UNet itself with the one-hot label concatenated to its input (``concat``,
    as SD's inpainting model widens its input), which learns from scratch in minutes."""

    _later_fields: ClassVar[tuple[str, ...]] = ("init_from", "tile_style")

    conditioning: Literal["controlnet", "concat"] = "controlnet"
    tile_style: bool = Field(
        False,
        description="tell the model the mean colour of each class on each training crop's "
        "whole source tile, and sample it with the colours of Train tiles of a like class "
        "mix, so that generated images vary between samples as Train's tiles do; needs "
        "conditioning concat",
    )

    @model_validator(mode="after")
    def _style_needs_concat(self) -> ControlNetConfig:
        if self.tile_style and self.conditioning != "concat":
            raise ValueError("tile_style needs conditioning: concat (a ControlNet reads no vector)")
        return self


class BaseTrainConfig(TrainConfig):
    """Text-to-image pre-training of a from-scratch preset's UNet on the Train images,
    before the two research stages fine-tune it. Real SD checkpoints skip it."""

    steps: int = Field(0, ge=0, description="0 skips the stage")


class VaeConfig(TrainConfig):
    """The VAE of a preset base, trained before the generators (pipeline_lib.train.vae).

    Each of ``batch_size`` samples contributes its colourised label and its image.
    ``output`` holds checkpoints and the summary; the VAE itself goes into the base.
    """

    steps: int = Field(800, ge=0, description="0 keeps the preset's random VAE")
    batch_size: int = Field(4, ge=1)
    lr: float = Field(5e-3, gt=0)
    lr_warmup_steps: int = Field(20, ge=0)
    checkpoint_every: int = Field(200, ge=1)
    label_weight: float = Field(2.0, gt=0, description="loss weight of labels over images")
    kl_weight: float = Field(1e-6, ge=0)


class StyleConfig(Section):
    prompt: str = Field("", description="appended to generation.prompt")
    negative_prompt: str = ""


class QAConfig(Section):
    _later_fields: ClassVar[tuple[str, ...]] = ("fill_off_code",)

    max_off_palette: float = Field(0.25, ge=0, le=1, description="reject above this share")
    palette_tolerance: int = Field(24, ge=0, le=255)
    fill_off_code: bool = Field(
        False,
        description="a pixel further than palette_tolerance from every colour takes the class "
        "of the nearest pixel within it, not of its nearest colour: a blurred border between "
        "two classes otherwise snaps to a third",
    )
    min_fragment_pixels: int = Field(4, ge=1)
    max_small_fragment_share: float = Field(0.05, ge=0, le=1)
    min_label_distance: float = Field(
        0.0,
        ge=0,
        le=1,
        description="reject a label (near_duplicate) whose layout differs from a committed or "
        "already kept one in fewer than this share of duplicate_grid cells; 0: off",
    )
    duplicate_grid: int = Field(
        8, ge=1, le=256, description="cells per side of the layout a near-duplicate is judged on"
    )
    min_agreement: float = Field(
        0.0,
        ge=0,
        le=1,
        description="reject a pair (disagreement) when agreement_model's prediction on its "
        "image scores an mIoU below this against its label, over the label's classes; 0: off",
    )
    agreement_model: Path | None = Field(
        None,
        description="the agreement filter's segmenter: a validation step folder (its Ori. "
        "row) or a checkpoint file; unset: the Ori. model of the newest finished validation "
        "under validation.output",
    )

    @field_validator("agreement_model")
    @classmethod
    def _absolute_model(cls, path: Path | None) -> Path | None:
        # Absolute at load: a flow may run the generation from another working directory.
        return None if path is None else path.expanduser().absolute()


class GenerationConfig(Section):
    _later_fields: ClassVar[tuple[str, ...]] = (
        "label_time_shift",
        "label_time_shift_below",
        "window",
        "window_stride",
    )

    prompt: str = DEFAULT_PROMPT
    negative_prompt: str = ""
    styles: dict[str, StyleConfig] = Field(default_factory=lambda: {"default": StyleConfig()})
    scheduler: Literal[tuple(SCHEDULER_CLASSES)] = "ddim"  # type: ignore[valid-type]
    label_scheduler: Literal[tuple(SCHEDULER_CLASSES)] | None = Field(  # type: ignore[valid-type]
        None,
        description="the label pass's sampler when it differs from scheduler: a stochastic "
        "one (ddpm) corrects an undertrained label model's errors as it goes",
    )
    label_steps: int = Field(20, ge=1, le=1000)
    image_steps: int = Field(20, ge=1, le=1000)
    label_guidance: float = Field(3.0, ge=0)
    label_time_shift: int = Field(
        0,
        ge=0,
        le=999,
        description="the label model is told a timestep this many training steps later "
        "(noisier) than the sample's: asymmetric time intervals, which sharpen drawn bits",
    )
    label_time_shift_below: int = Field(
        1000,
        ge=1,
        le=1000,
        description="shift only the steps at timesteps below this (1000: every step), "
        "leaving the noisy steps that draw the layout as the model learnt them",
    )
    image_guidance: float = Field(3.0, ge=0)
    resolution: int = Field(64, ge=8, le=2048)
    window: int | None = Field(
        None,
        ge=8,
        description="draw samples larger than this (the models' training crop, in pixels) "
        "in overlapping windows of it, their predictions averaged (MultiDiffusion)",
    )
    window_stride: int | None = Field(
        None, ge=1, description="pixels between windows (default: three quarters of window)"
    )
    batch_size: int = Field(4, ge=1)
    seed: int = 0
    max_attempts_per_sample: int = Field(
        4, ge=1, description="a shard stops drawing after shard_size times this many labels"
    )
    dtype: Literal["float32", "float16", "bfloat16"] = Field(
        "float32",
        description="weights and activations on CUDA; on a CPU with native bfloat16, "
        "bfloat16 autocasts each operation (weights stay float32), else float32",
    )
    qa: QAConfig = Field(default_factory=QAConfig)
    class_targets: dict[str, float] = Field(
        default_factory=dict,
        description="share of labelled pixels the store should reach per class name "
        "(e.g. barren: 0.06); generation keeps the draws that move the store toward them",
    )
    target_oversample: int = Field(
        4,
        ge=1,
        le=256,
        description="with class_targets: each kept label is the best of about this many "
        "QA-passing draws (attempts grow by this factor)",
    )

    @model_validator(mode="after")
    def _has_style(self) -> GenerationConfig:
        if not self.styles:
            raise ValueError("styles must declare at least one style")
        return self

    @model_validator(mode="after")
    def _stride_within_window(self) -> GenerationConfig:
        if self.window_stride is not None:
            if self.window is None:
                raise ValueError("window_stride needs window")
            if self.window_stride > self.window:
                raise ValueError(
                    f"window_stride {self.window_stride} exceeds window {self.window}: "
                    "windows would leave pixels undrawn"
                )
        return self

    @property
    def windowed(self) -> bool:
        """Whether samples are drawn in windows (a window smaller than the sample)."""
        return self.window is not None and self.window < self.resolution

    @property
    def stride(self) -> int | None:
        """Pixels between windows, or None without windows."""
        if self.window is None:
            return None
        return self.window_stride or self.window * 3 // 4

    @field_validator("class_targets")
    @classmethod
    def _known_shares(cls, targets: dict[str, float]) -> dict[str, float]:
        for name, share in targets.items():
            if name not in CLASS_NAMES:
                raise ValueError(f"unknown class {name!r}; classes: {', '.join(CLASS_NAMES)}")
            if not 0 <= share <= 1:
                raise ValueError(f"{name}: a share lies in 0..1, got {share}")
        if sum(targets.values()) > 1:
            raise ValueError(f"the shares sum to {sum(targets.values()):g}; at most 1")
        return targets


class GeoConfig(Section):
    """Georeferencing written into GeoTIFF exports."""

    crs: str = "EPSG:32650"
    origin_x: float = 0.0
    origin_y: float = 0.0
    pixel_size: float = Field(0.3, gt=0)


class StoreConfig(Section):
    path: str | Path | None = Field(
        None, description="a folder, or an object store URL (s3://bucket/prefix/store.zarr)"
    )
    shard_size: int = Field(16, ge=1, le=4096)
    compression_level: int = Field(3, ge=1, le=22, description="zstd level of the labels")
    image_codec: Literal[IMAGE_CODECS] = Field(  # type: ignore[valid-type]
        IMAGE_CODECS[0],
        description="lossless image codec, used when the store is created (labels: zstd)",
    )
    geo: GeoConfig = Field(default_factory=GeoConfig)


class QuotaConfig(Section):
    samples: int = Field(64, ge=1, description="committed samples the generation flow aims for")
    validate_every: int = Field(32, ge=1, description="validate each time this many more commit")


class ValidationConfig(Section):
    _later_fields: ClassVar[tuple[str, ...]] = (
        "mix_ratios",
        "rot_flip",
        "slide",
        "repeats",
        "mosaic",
    )
    model: Literal[SEGMENTERS] = "mask2former-cpu"  # type: ignore[valid-type]
    data: list[Literal[tuple(DATA_LABELS)]] = Field(  # type: ignore[valid-type]
        default_factory=lambda: list(DATA_LABELS)
    )
    iters: int = Field(200, ge=1)
    batch_size: int = Field(2, ge=1)
    crop_size: int = Field(128, ge=32)
    lr: float = Field(1e-4, gt=0)
    val_interval: int = Field(100, ge=1)
    checkpoint_interval: int = Field(100, ge=1)
    tta: bool = False
    rot_flip: bool = Field(
        False,
        description="also turn each training crop by a random multiple of 90 degrees and "
        "mirror it (an aerial view has no up)",
    )
    mosaic: bool = Field(
        False,
        description="draw a source whose Train tiles are under twice crop_size (generated "
        "64 px samples at crop 64) as 2x2 mosaics of its tiles, so its crops fall at any "
        "offset and never need padding",
    )
    slide: bool = Field(
        False,
        description="predict each evaluation tile in crop_size windows (stride 3/4 of the "
        "crop, overlaps averaged), as the model saw its training crops, instead of whole",
    )
    scale_factors: list[float] | None = Field(
        None,
        description="train at these rescale factors and evaluate at the native scale "
        "(None: mmseg's LoveDA resize to a size tied to crop_size)",
    )
    class_weights: dict[str, float] = Field(
        default_factory=dict,
        description="Mask2Former classification-loss weight per class name (default 1)",
    )
    pretrained_backbone: Path | None = None
    seed: int = 0
    repeats: int = Field(
        1,
        ge=1,
        le=16,
        description="train each row's segmenter this many times (seeds seed, seed + 1, ...) "
        "and report the mean: one seed moves mIoU by several hundredths on the same data",
    )
    output: Path | None = None
    mix_ratios: list[float] = Field(
        default_factory=list,
        description="add a Gen.+Ori. row per ratio: all Ori. tiles plus the store's first "
        "generated samples worth ratio x Ori.'s labelled pixels (e.g. [0.25, 0.5, 1, 2])",
    )
    mix_by: Literal[MIX_BY] = Field(  # type: ignore[valid-type]
        MIX_BY[0],
        description="a mixed training set (Gen.+Ori.) draws crops in proportion to each "
        "source's pixels (pixels), or to its tile count (samples: 384 generated 64 px "
        "samples then outdraw 24 real 256 px tiles 16 to 1)",
    )

    @field_validator("mix_ratios")
    @classmethod
    def _positive_distinct_ratios(cls, ratios: list[float]) -> list[float]:
        for ratio in ratios:
            if not math.isfinite(ratio) or ratio <= 0:
                raise ValueError(f"a mixing ratio is a positive number, got {ratio}")
        if len(set(ratios)) != len(ratios):
            raise ValueError(f"each ratio names one row; {ratios} repeats one")
        return ratios


class DaskConfig(Section):
    """Shard generation fanned out over a Dask cluster (prefect-dask's DaskTaskRunner)."""

    address: str | None = Field(
        None, description="a running Dask scheduler, e.g. tcp://10.0.0.5:8786"
    )
    workers: int | None = Field(
        None, ge=1, description="start a local cluster of this many worker processes"
    )
    torch_threads: int | None = Field(
        None,
        ge=1,
        description="torch threads per local worker (default: this machine's cores / workers)",
    )

    @model_validator(mode="after")
    def _one_cluster(self) -> DaskConfig:
        if (self.address is None) == (self.workers is None):
            raise ValueError(
                "set either address (a running Dask scheduler) or workers (a local cluster "
                "of that many processes), not both or neither"
            )
        if self.address is not None and self.torch_threads is not None:
            raise ValueError(
                "torch_threads applies to a local cluster; an external cluster's workers "
                "take theirs from OMP_NUM_THREADS where they are started"
            )
        return self


class PrefectConfig(Section):
    results_path: Path | None = None
    gpu_concurrency: int = Field(1, ge=1)
    nightly_cron: str = "0 1 * * *"
    timezone: str = "UTC"
    retries: int = Field(2, ge=0)
    retry_delay_seconds: float = Field(5, ge=0)
    task_timeout_seconds: float = Field(6 * 3600, gt=0)
    dask: DaskConfig | None = Field(
        None, description="fan shard generation out over Dask (unset: one shard at a time)"
    )

    @model_validator(mode="after")
    def _gpu_slots_for_every_worker(self) -> PrefectConfig:
        # Shard tasks carry the gpu tag, whose limit (`lfactory run`, `serve`) would let
        # only gpu_concurrency of the local workers generate at a time.
        if self.dask is not None and (self.dask.workers or 0) > self.gpu_concurrency:
            raise ValueError(
                f"dask.workers is {self.dask.workers} but gpu_concurrency is "
                f"{self.gpu_concurrency}: only {self.gpu_concurrency} shard(s) would generate "
                f"at a time; set gpu_concurrency to {self.dask.workers}"
            )
        return self


class FactoryConfig(Section):
    name: str = "factory"
    work_dir: Path = Path(".factory")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    data: DataConfig = Field(default_factory=DataConfig)
    models: ModelsConfig = Field(default_factory=ModelsConfig)
    label_lora: LabelLoraConfig = Field(default_factory=LabelLoraConfig)
    controlnet: ControlNetConfig = Field(default_factory=ControlNetConfig)
    vae: VaeConfig = Field(default_factory=VaeConfig)
    base: BaseTrainConfig = Field(default_factory=BaseTrainConfig)
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    quota: QuotaConfig = Field(default_factory=QuotaConfig)
    validation: ValidationConfig = Field(default_factory=ValidationConfig)
    prefect: PrefectConfig = Field(default_factory=PrefectConfig)

    @model_validator(mode="after")
    def _resolve_paths(self) -> FactoryConfig:
        """Make every path absolute and fill the ones left out from ``work_dir``."""
        work = self.work_dir.expanduser().absolute()
        defaults = [
            (self, "work_dir", work),
            (self.data, "root", work / "data" / "loveda"),
            (self.models, "base", work / "models" / "sd"),
            (self.label_lora, "output", work / "models" / "label-lora"),
            (self.controlnet, "output", work / "models" / "controlnet"),
            (self.vae, "output", work / "models" / "vae-training"),
            (self.base, "output", work / "models" / "base-training"),
            (self.store, "path", work / "store.zarr"),
            (self.validation, "output", work / "validation"),
            (self.prefect, "results_path", work / "prefect-results"),
        ]
        for section, key, default in defaults:
            value = getattr(section, key)
            if isinstance(value, str) and "://" in value and not value.startswith("file://"):
                continue  # an object store URL (store.path): see store/object_store.py
            resolved = default if value is None else Path(value).expanduser().absolute()
            # Bypass validate_assignment: the values are already valid Paths.
            section.__dict__[key] = resolved
        if self.data.eval_root is None:
            self.data.__dict__["eval_root"] = self.data.root
        else:
            self.data.__dict__["eval_root"] = self.data.eval_root.expanduser().absolute()
        for stage in (self.label_lora, self.controlnet):
            if stage.init_from is not None:
                stage.__dict__["init_from"] = stage.init_from.expanduser().absolute()
        if self.validation.pretrained_backbone is not None:
            self.validation.__dict__["pretrained_backbone"] = (
                self.validation.pretrained_backbone.expanduser().absolute()
            )
        return self

    def for_style(self, style: str) -> FactoryConfig:
        """This config narrowed to one declared style, writing its own store and reports.

        An on-demand style run is its own data set: it never mixes into the nightly store.
        """
        if style not in self.generation.styles:
            raise ConfigError(
                f"style {style!r} is not declared under generation.styles "
                f"(declared: {', '.join(sorted(self.generation.styles))})"
            )
        data = self.model_dump()
        data["name"] = f"{self.name}-{style}"
        data["generation"]["styles"] = {style: data["generation"]["styles"][style]}
        store = self.store.path
        if isinstance(store, str):  # an object store URL
            head, _, name = store.rpartition("/")
            data["store"]["path"] = f"{head}/{Path(name).stem}-{style}.zarr"
        else:
            data["store"]["path"] = store.with_name(f"{store.stem}-{style}.zarr")
        data["validation"]["output"] = self.validation.output.with_name(
            f"{self.validation.output.name}-{style}"
        )
        return FactoryConfig.model_validate(data)


def _format_errors(source: str, error: ValidationError) -> str:
    lines = [f"{source}: {error.error_count()} invalid setting(s)"]
    for item in error.errors():
        key = ".".join(str(p) for p in item["loc"]) or "(top level)"
        if item["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key")
        else:
            lines.append(f"  {key}: {item['msg']} (got {item.get('input')!r})")
    return "\n".join(lines)


def config_from_dict(data: dict[str, Any], source: str = "<config>") -> FactoryConfig:
    """Validate a plain mapping; ``source`` names it in error messages."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping, got {type(data).__name__}")
    try:
        return FactoryConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(_format_errors(source, error)) from None


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> FactoryConfig:
    """Load and validate a YAML config; every error names the file and the key."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    if overrides:
        data = _deep_merge(data, overrides)
    return config_from_dict(data, source=str(path))


def _deep_merge(base: Any, extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base) if isinstance(base, dict) else {}
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged
