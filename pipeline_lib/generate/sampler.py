"""The two-stage sampler: label maps from SD (+ label LoRA), then images from SD + ControlNet.

A :class:`Generator` loads the pipelines once and keeps them across shards. Draws are
made in batches of ``generation.batch_size`` attempts; attempt ``a`` of a shard always
lies in the batch ``a // batch_size``, and the image batch holds exactly the selected
labels of that batch: the kept ones, and those the agreement filter rejected once their
image was drawn (the shard records which), so :func:`regenerate` can replay a sample's
batches bit for bit.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import diffusers
import numpy as np
import torch
from diffusers import (
    StableDiffusionControlNetPipeline,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from tqdm.auto import tqdm

from pipeline_lib.choices import SCHEDULER_CLASSES
from pipeline_lib.config import FactoryConfig, GenerationConfig
from pipeline_lib.data.classes import LABEL_COLOURS
from pipeline_lib.data.palette import colourise
from pipeline_lib.errors import CheckpointError, ConfigError
from pipeline_lib.generate.agreement import DISAGREEMENT, AgreementFilter
from pipeline_lib.generate.concat_pipeline import LabelConcatPipeline, LabelPipeline
from pipeline_lib.generate.duplicates import DuplicateFilter
from pipeline_lib.generate.qa import LabelQA, score_label
from pipeline_lib.generate.seeds import image_seed, pick_style, sample_id, sample_seed
from pipeline_lib.generate.selection import (
    Candidate,
    ClassSteering,
    fraction_vector,
    release,
    select,
)
from pipeline_lib.generate.time_shift import shifted_timesteps
from pipeline_lib.generate.windows import WindowedUNet
from pipeline_lib.models.class_mix import draw_mixes, load_mix_bank
from pipeline_lib.models.label_colours import check_label_colours
from pipeline_lib.models.model_hash import model_hash
from pipeline_lib.models.sd_folder import (
    CONTROLNET_SUBDIR,
    load_controlnet,
    load_sd_components,
    sd_scale_factor,
)
from pipeline_lib.models.tile_style import StyleBank
from pipeline_lib.models.unet_input import is_self_conditioned, is_vector_conditioned
from pipeline_lib.precision import cpu_has_bf16
from pipeline_lib.store.shard_writer import ShardData
from pipeline_lib.store.store import SampleStore

log = logging.getLogger(__name__)

SCHEDULERS = {name: getattr(diffusers, cls) for name, cls in SCHEDULER_CLASSES.items()}
LORA_WEIGHTS = "pytorch_lora_weights.safetensors"
NO_LORA = "none"
# A class share this far from its target after a shard means the target is out of reach.
TARGET_GAP_WARNING = 0.1


def resolve_device(device: str) -> torch.device:
    """``auto`` is CUDA when present, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def controlnet_dir(cfg: FactoryConfig) -> Path:
    """The trained image model when one exists, else the ControlNet initialised beside the
    base; a concat image model has no untrained stand-in."""
    trained = Path(cfg.controlnet.output)
    if (trained / "config.json").is_file():
        return trained
    if cfg.controlnet.conditioning == "concat":
        raise CheckpointError(
            f"{trained}: no trained concat image model; run `lfactory train controlnet` "
            "(or the factory) before generating"
        )
    return Path(cfg.models.base) / CONTROLNET_SUBDIR


def is_concat_model(folder: Path) -> bool:
    """True when ``folder`` holds a UNet whose input takes the label (not a ControlNet)."""
    config = json.loads((folder / "config.json").read_text())
    return config.get("_class_name") == "UNet2DConditionModel"


@dataclass(frozen=True)
class Draw:
    """One attempt: its identity and, once sampled, its label, QA and image."""

    attempt: int
    seed: int
    style: str
    prompt: str
    negative_prompt: str


def scheduler_names(gen: GenerationConfig) -> str:
    """The manifest's sampler name: ``ddim``, or ``ddpm/ddim`` when the label pass differs."""
    if gen.label_scheduler in (None, gen.scheduler):
        return gen.scheduler
    return f"{gen.label_scheduler}/{gen.scheduler}"


def _join(*parts: str) -> str:
    return ", ".join(p for p in parts if p)


def _to_uint8(images: np.ndarray) -> np.ndarray:
    return (np.clip(images, 0, 1) * 255).round().astype(np.uint8)


class Generator:
    """SD label pipeline and SD + ControlNet image pipeline, loaded once, sharing components."""

    def __init__(self, cfg: FactoryConfig, with_images: bool = True):
        """``with_images=False`` loads the label pipeline alone, for work that draws labels
        only (``bench.label_sampling``): no image model need exist, none is hashed."""
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        gen = cfg.generation
        # Half-precision weights only on CUDA; a CPU with native bf16 keeps fp32 weights
        # and autocasts each operation (the tiny UNet samples about 1.5x faster).
        self.dtype = getattr(torch, gen.dtype) if self.device.type == "cuda" else torch.float32
        self.cpu_autocast = self.device.type == "cpu" and gen.dtype == "bfloat16" and cpu_has_bf16()
        parts = load_sd_components(cfg.models.base, dtype=self.dtype)
        shared = {
            "vae": parts.vae,
            "text_encoder": parts.text_encoder,
            "tokenizer": parts.tokenizer,
            "unet": parts.unet,
        }
        none = {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}
        scheduler_cls = SCHEDULERS[gen.scheduler]
        label_scheduler = SCHEDULERS[gen.label_scheduler or gen.scheduler]
        self.label_pipe = StableDiffusionPipeline(
            **shared, scheduler=label_scheduler.from_config(parts.scheduler.config), **none
        )
        lora = Path(cfg.label_lora.output)
        self.lora_hash = NO_LORA
        self.shares_lora = (lora / LORA_WEIGHTS).is_file()  # the image pass must disable it
        self.mix_bank: np.ndarray | None = None  # a mix-conditioned model's Train mixes
        check_label_colours(lora, cfg.label_lora.colours, "label_lora.output")
        if self.shares_lora:
            self.label_pipe.load_lora_weights(lora)
            self.lora_hash = model_hash(lora)
        elif (lora / "config.json").is_file():
            # A fully fine-tuned label UNet: the image pass keeps the base's own.
            label_unet = UNet2DConditionModel.from_pretrained(
                lora, torch_dtype=self.dtype, local_files_only=True
            )
            if is_vector_conditioned(label_unet):
                self.mix_bank = load_mix_bank(lora)
            if is_self_conditioned(label_unet) or self.mix_bank is not None:
                self.label_pipe = LabelPipeline(
                    parts.vae,
                    parts.text_encoder,
                    parts.tokenizer,
                    label_unet,
                    self.label_pipe.scheduler,
                )
            else:
                self.label_pipe.unet = label_unet
            self.lora_hash = model_hash(lora)
        cn_dir = controlnet_dir(cfg) if with_images else None
        image_scheduler = scheduler_cls.from_config(parts.scheduler.config)
        self.concat = cn_dir is not None and is_concat_model(cn_dir)
        self.image_pipe: LabelConcatPipeline | StableDiffusionControlNetPipeline | None = None
        self.style_bank: StyleBank | None = None  # a style-conditioned model's Train tiles
        if self.concat:
            unet = UNet2DConditionModel.from_pretrained(
                cn_dir, torch_dtype=self.dtype, local_files_only=True
            )
            self.image_pipe = LabelConcatPipeline(
                parts.vae, parts.text_encoder, parts.tokenizer, unet, image_scheduler
            )
            if self.image_pipe.style_conditioned:
                self.style_bank = StyleBank.load(cn_dir)
        elif cn_dir is not None:
            self.image_pipe = StableDiffusionControlNetPipeline(
                **shared,
                controlnet=load_controlnet(cn_dir, dtype=self.dtype),
                scheduler=image_scheduler,
                **none,
            )
        if gen.windowed:
            self._draw_in_windows(sd_scale_factor(parts.vae))
        for pipe in (self.label_pipe, self.image_pipe):
            if pipe is not None:
                pipe.to(self.device)
                pipe.set_progress_bar_config(disable=True)
        base_hash = model_hash(cfg.models.base)
        self.hashes = {
            "label_model_hash": base_hash,
            "lora_hash": self.lora_hash,
            "image_model_hash": base_hash,
            "controlnet_hash": model_hash(cn_dir) if cn_dir is not None else NO_LORA,
        }
        log.info(
            "generator ready on %s: base %s, LoRA %s, ControlNet %s",
            self.device,
            cfg.models.base,
            self.lora_hash,
            cn_dir,
        )

    def _draw_in_windows(self, scale_factor: int) -> None:
        """Both passes denoise ``generation.window`` px windows of each sample (MultiDiffusion)."""
        gen = self.cfg.generation
        for key, pixels in (("window", gen.window), ("window_stride", gen.stride)):
            if pixels % scale_factor:
                raise ConfigError(
                    f"generation.{key} {pixels} is not a multiple of the VAE's scale factor "
                    f"{scale_factor}"
                )
        if self.image_pipe is not None and not self.concat:
            # A ControlNet's residuals would have to be windowed with the UNet they feed.
            raise ConfigError("generation.window needs a concat image model, not a ControlNet")
        if self.shares_lora:
            raise ConfigError("generation.window needs a fully fine-tuned label model, not a LoRA")
        for pipe in (self.label_pipe, self.image_pipe):
            if pipe is not None:
                pipe.unet = WindowedUNet(
                    pipe.unet, gen.window // scale_factor, gen.stride // scale_factor
                )

    @cached_property
    def agreement(self) -> AgreementFilter:
        """The agreement filter, its segmenter loaded on first use: once per generator, and
        never by regenerate, which replays the kept attempts without judging them again."""
        return AgreementFilter.for_config(self.cfg, str(self.device))

    def precision(self) -> torch.autocast:
        """bf16 autocast for a sampling call where ``cpu_autocast`` holds, else a no-op."""
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.cpu_autocast)

    # ------------------------------------------------------------------ draws

    def draw(self, shard_id: int, attempt: int) -> Draw:
        gen = self.cfg.generation
        seed = sample_seed(gen.seed, shard_id, attempt)
        style = pick_style(list(gen.styles), seed)
        spec = gen.styles[style]
        return Draw(
            attempt,
            seed,
            style,
            _join(gen.prompt, spec.prompt),
            _join(gen.negative_prompt, spec.negative_prompt),
        )

    def sample_labels(self, draws: list[Draw]) -> list[tuple[np.ndarray, np.ndarray, LabelQA]]:
        """Colour label, snapped raw mask and QA of each draw (one batched SD call)."""
        gen = self.cfg.generation
        call = {
            "prompt": [d.prompt for d in draws],
            "negative_prompt": [d.negative_prompt for d in draws],
            "num_inference_steps": gen.label_steps,
            "guidance_scale": gen.label_guidance,
            "height": gen.resolution,
            "width": gen.resolution,
            "generator": [torch.Generator("cpu").manual_seed(d.seed) for d in draws],
        }
        last = self.label_pipe.scheduler.config.num_train_timesteps - 1
        shift = shifted_timesteps(
            self.label_pipe.unet, gen.label_time_shift, last, gen.label_time_shift_below
        )
        with self.precision(), shift:
            if isinstance(self.label_pipe, LabelPipeline):
                if self.mix_bank is not None:
                    call["class_mix"] = draw_mixes(self.mix_bank, [d.seed for d in draws])
                out = self.label_pipe(**call)
            else:
                out = self.label_pipe(**call, output_type="np").images
        results = []
        colours = LABEL_COLOURS[self.cfg.label_lora.colours]
        for rgb in _to_uint8(out):
            mask, qa = score_label(rgb, gen.qa, colours)
            results.append((rgb, mask, qa))
        return results

    def sample_images(self, draws: list[Draw], masks: list[np.ndarray]) -> np.ndarray:
        """Images conditioned on the colourised snapped masks (one batched ControlNet call)."""
        if not draws:
            return np.zeros(
                (0, self.cfg.generation.resolution, self.cfg.generation.resolution, 3), np.uint8
            )
        gen = self.cfg.generation
        generators = [torch.Generator("cpu").manual_seed(image_seed(d.seed)) for d in draws]
        if self.concat:
            styles = None
            if self.style_bank is not None:
                styles = self.style_bank.pick(masks, [d.seed for d in draws])
            with self.precision():
                out = self.image_pipe(
                    prompt=[d.prompt for d in draws],
                    negative_prompt=[d.negative_prompt for d in draws],
                    masks=np.stack(masks),
                    num_inference_steps=gen.image_steps,
                    guidance_scale=gen.image_guidance,
                    generator=generators,
                    style=styles,
                )
            return _to_uint8(out)
        control = np.stack([colourise(m) for m in masks]).astype(np.float32) / 255
        # The label LoRA was trained for label maps; the image pass uses the base UNet.
        lora = self.shares_lora
        if lora:
            self.label_pipe.disable_lora()
        try:
            with self.precision():
                out = self.image_pipe(
                    prompt=[d.prompt for d in draws],
                    negative_prompt=[d.negative_prompt for d in draws],
                    image=control,
                    num_inference_steps=gen.image_steps,
                    guidance_scale=gen.image_guidance,
                    height=gen.resolution,
                    width=gen.resolution,
                    output_type="np",
                    generator=generators,
                ).images
        finally:
            if lora:
                self.label_pipe.enable_lora()
        return _to_uint8(out)

    def record(
        self,
        shard_id: int,
        draw: Draw,
        qa: LabelQA,
        dup_distance: float | None = None,
        agreement: float | None = None,
    ) -> dict[str, Any]:
        """The manifest fields this generator knows about one kept sample."""
        gen = self.cfg.generation
        return {
            "sample_id": sample_id(self.cfg.name, gen.seed, shard_id, draw.attempt),
            "attempt": draw.attempt,
            "batch_size": gen.batch_size,
            "style": draw.style,
            "prompt": draw.prompt,
            "negative_prompt": draw.negative_prompt,
            "seed": draw.seed,
            "label_steps": gen.label_steps,
            "image_steps": gen.image_steps,
            "label_guidance": gen.label_guidance,
            "image_guidance": gen.image_guidance,
            "scheduler": scheduler_names(gen),
            **self.hashes,
            "off_palette_share": qa.off_palette_share,
            "small_fragment_share": qa.small_fragment_share,
            "min_fragment_pixels": qa.min_fragment_pixels,
            "dup_distance": dup_distance,
            "agreement_miou": agreement,
        }

    def run_config(self) -> dict[str, Any]:
        """What a shard's manifest keeps so that regenerate can rebuild its samples."""
        cfg = self.cfg
        return {
            "name": cfg.name,
            "generation": cfg.generation.model_dump(mode="json"),
            "models_base": str(cfg.models.base),
            "label_lora": str(cfg.label_lora.output),
            "label_colours": cfg.label_lora.colours,
            "controlnet": str(controlnet_dir(cfg)),
            "device": str(self.device),
        }

    # ------------------------------------------------------------------ shards

    def generate_shard(self, shard_id: int, n: int, store: SampleStore | None = None) -> ShardData:
        """Draw rounds of batches until ``n`` labels are kept or the attempts run out.

        A label is kept when it passes QA and :func:`selection.select` picks it: toward
        ``generation.class_targets`` and away from near-duplicates of the committed
        samples of ``store`` (None: a store without samples); and, once its image is
        drawn, when the agreement filter finds the pair consistent.
        """
        gen = self.cfg.generation
        size = gen.batch_size
        targets = gen.class_targets
        # Without class targets a round is one batch and every passing label is kept.
        oversample = gen.target_oversample if targets else 1
        steering = ClassSteering.for_store(store, targets) if targets else None
        duplicates = DuplicateFilter.for_store(
            store, gen.qa.min_label_distance, gen.qa.duplicate_grid
        )
        agreement = self.agreement
        limit = n * gen.max_attempts_per_sample * oversample
        kept: list[tuple[Draw, LabelQA, float | None, float | None]] = []
        disagreeing: list[int] = []
        masks: list[np.ndarray] = []
        images: list[np.ndarray] = []
        rejected: Counter[str] = Counter()
        attempts = 0
        # A shard of windowed 256 px samples takes minutes on a CPU: show its samples.
        bar = tqdm(total=n, desc=f"shard {shard_id}", unit="sample", leave=False)
        while len(kept) < n and attempts < limit:
            # Whole batches only: batch b always holds attempts [b*size, (b+1)*size).
            draws = [self.draw(shard_id, a) for a in range(attempts, attempts + oversample * size)]
            attempts += len(draws)
            labels: list[tuple[np.ndarray, LabelQA]] = []
            for start in range(0, len(draws), size):
                batch = draws[start : start + size]
                labels += [(mask, verdict) for _, mask, verdict in self.sample_labels(batch)]
            candidates = []
            for key, (mask, verdict) in enumerate(labels):
                if verdict.kept:
                    candidates.append(Candidate(key, mask, fraction_vector(mask)))
                else:
                    rejected[verdict.reason] += 1
            chosen, dropped = select(candidates, n - len(kept), oversample, steering, duplicates)
            rejected.update(dropped)
            chosen_by_key = {c.key: (c, distance) for c, distance in chosen}
            for start in range(0, len(draws), size):
                # The image batch holds exactly the batch's selected labels, in attempt order.
                keys = [k for k in range(start, start + size) if k in chosen_by_key]
                batch_masks = [labels[k][0] for k in keys]
                batch_images = self.sample_images([draws[k] for k in keys], batch_masks)
                scores = agreement.scores(batch_images, batch_masks)
                for k, mask, image, score in zip(
                    keys, batch_masks, batch_images, scores, strict=True
                ):
                    candidate, distance = chosen_by_key[k]
                    if agreement.rejects(score):
                        # Its noise was its own: no other attempt's draw changes.
                        rejected[DISAGREEMENT] += 1
                        disagreeing.append(draws[k].attempt)
                        release(candidate, steering, duplicates)
                        continue
                    masks.append(mask)
                    images.append(image)
                    kept.append((draws[k], labels[k][1], distance, score))
                    bar.update()
        bar.close()
        if len(kept) < n:
            log.warning(
                "shard %d: only %d of %d labels were kept in %d draws",
                shard_id,
                len(kept),
                n,
                attempts,
            )
        furthest = steering.furthest() if steering is not None else None
        if furthest and abs(furthest[1] - furthest[2]) > TARGET_GAP_WARNING:
            log.warning(
                "shard %d: after it the store holds %s at %.3f, generation.class_targets "
                "asks for %.3f: the label model seldom draws the mix asked for, and choosing "
                "one of %d draws cannot make it; raise generation.target_oversample or train "
                "the label model on that class mix",
                shard_id,
                *furthest,
                oversample,
            )
        res = gen.resolution
        return ShardData(
            shard_id=shard_id,
            images=np.stack(images) if images else np.zeros((0, res, res, 3), np.uint8),
            labels=np.stack(masks) if masks else np.zeros((0, res, res), np.uint8),
            rows=tuple(self.record(shard_id, *sample) for sample in kept),
            attempts=attempts,
            rejected=dict(rejected),
            config={**self.run_config(), **agreement.shard_record(disagreeing)},
        )
