"""The training loop shared by the label LoRA and the ControlNet, with exact resume.

Data and noise are pure functions of (seed, step), so a checkpoint needs only the
trainable weights, optimizer, LR scheduler and step: a run stopped at step k and
resumed ends with bit-identical weights to one that never stopped (on CPU).
Checkpoints are written to a temporary folder and renamed, so a killed run never
leaves a half-written one that looks complete.
"""

from __future__ import annotations

import json
import logging
import math
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from diffusers import UNet2DConditionModel
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from pipeline_lib.choices import LR_SCHEDULES
from pipeline_lib.config import FactoryConfig, GeneratorTrainConfig, TrainConfig
from pipeline_lib.errors import CheckpointError, ConfigError, TrainingDivergedError
from pipeline_lib.hashing import json_digest
from pipeline_lib.micro_batches import effective_batch
from pipeline_lib.models.model_hash import model_hash
from pipeline_lib.precision import cpu_has_bf16
from pipeline_lib.train.pair_sampler import Batch

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
SUMMARY = "training_summary.json"
_STATE = "state.json"
_WEIGHTS = "trainable.safetensors"
_EMA_WEIGHTS = "ema.safetensors"


@dataclass(frozen=True)
class TrainSummary:
    """What a training run did; written as ``training_summary.json`` beside the weights."""

    kind: str
    output: str
    steps: int
    target_steps: int
    complete: bool
    final_loss: float | None
    loss_curve: list[tuple[int, float]]
    wall_time_s: float
    samples_per_s: float
    steps_per_s: float
    config_hash: str
    base_model_hash: str
    resumed_from: int
    seed: int
    device: str
    output_hash: str | None

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")


@dataclass
class TrainJob:
    """What differs between trainers; the loop does the rest.

    ``batch(step, micro)`` makes one micro-batch's data (in DataLoader workers);
    ``loss(batch, step, micro)`` computes its loss with the (prepared) model;
    ``save_final(output)`` writes the finished model in its deployable format.
    """

    kind: str
    model: torch.nn.Module
    batch: Callable[[int, int], Batch]
    loss: Callable[[Batch, int, int], torch.Tensor]
    save_final: Callable[[Path], None]
    samples_per_step: int
    config_hash: str
    base_model_hash: str
    output: Path


def make_accelerator(cfg: FactoryConfig, train: TrainConfig) -> Accelerator:
    """An Accelerator on CUDA when asked for (or ``auto`` and present), else CPU in fp32."""
    use_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: cuda, but no CUDA device is available; use auto or cpu")
    precision = train.mixed_precision if use_cuda else cpu_precision(train.mixed_precision)
    # accelerate keeps one process-wide state and refuses a second Accelerator with another
    # precision or device; one process (a flow, a test run) trains both models in turn.
    AcceleratorState._reset_state()
    return Accelerator(
        cpu=not use_cuda,
        mixed_precision=precision,
        gradient_accumulation_steps=train.grad_accum,
    )


def cpu_precision(asked: str) -> str:
    """``bf16`` where the CPU computes bfloat16 natively (AVX512-BF16 or AMX: the tiny UNet's
    training loop ran 1.26x faster, though at lr 1e-3 its base diverged where fp32 did
    not), else ``no``: fp16 autocast on a CPU is slower than fp32, as emulated bf16 is."""
    if asked == "bf16" and cpu_has_bf16():
        return "bf16"
    if asked != "no":
        log.info("mixed_precision %s is not fast on this CPU; training in fp32", asked)
    return "no"


def weight_dtype(accelerator: Accelerator) -> torch.dtype:
    """Dtype for frozen modules: half precision under mixed precision on CUDA, else fp32
    (a CPU autocasts per operation and keeps its weights and inputs in fp32)."""
    if accelerator.device.type != "cuda":
        return torch.float32
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(
        accelerator.mixed_precision, torch.float32
    )


def place(module: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """Move to device; cast only when needed (a no-op cast makes diffusers warn)."""
    module.to(device)
    return module.to(dtype) if dtype != torch.float32 else module


def config_hash(*parts: Any) -> str:
    """What, besides step count, determines the weights (16 hex digits)."""
    return json_digest(*parts)


def train_section_hash(train: TrainConfig, *extra: Any) -> str:
    # Checkpoint spacing and data workers do not change the trajectory, nor does how the
    # effective batch is split into micro-batches; paths are machine-local. Under a constant
    # rate a longer run continues a shorter one (and hashes as before lr_schedule existed);
    # a decaying rate depends on where it ends.
    unused = {"steps", "lr_schedule"} if train.lr_schedule == "constant" else set()
    # Off, self-conditioning and the noise offset hash as before the fields existed.
    if not getattr(train, "self_condition", False):
        unused.add("self_condition")
    if not train.noise_offset:
        unused.add("noise_offset")
    unused |= {
        "checkpoint_every",
        "divergence_factor",
        "output",
        "keep_checkpoints",
        "data_workers",
        "batch_size",
        "grad_accum",
        "init_from",
    }
    section = train.model_dump(mode="json", exclude=unused)
    section["effective_batch"] = effective_batch(train)
    start = getattr(train, "init_from", None)
    if start is not None:  # the weights it starts from, wherever they lie
        section["init_from"] = model_hash(start)
    return config_hash(section, *extra)


# An interval is compared only when it holds this many losses: the few steps between a
# test's checkpoints are too noisy to call a divergence.
_MIN_LOSSES_PER_INTERVAL = 5


def _stop_if_diverged(
    kind: str, intervals: list[float], losses: list[float], train: TrainConfig, output: Path
) -> None:
    """Record the mean of ``losses`` (one checkpoint interval's) in ``intervals`` and raise
    when it is over ``divergence_factor`` x the lowest earlier one."""
    # A finite divergence (bf16 on a CPU at lr 1e-3: 0.11 -> 0.52 within 20 steps, never
    # recovering) would otherwise be checkpointed and handed to every later stage.
    if len(losses) < _MIN_LOSSES_PER_INTERVAL:
        return
    mean = float(np.mean(losses))
    best = min(intervals, default=None)
    intervals.append(mean)
    if train.divergence_factor is not None and best is not None:
        if mean > train.divergence_factor * best:
            raise TrainingDivergedError(
                f"{kind}: mean loss {mean:.4f} over the last {len(losses)} steps is over "
                f"{train.divergence_factor:g} x the best interval's {best:.4f}; lower {kind}'s "
                "lr or set mixed_precision: no, and train again with --no-resume (the last "
                f"checkpoint, {latest_checkpoint(output)}, is kept)"
            )


# ---------------------------------------------------------------- checkpoints


def starting_model(train: GeneratorTrainConfig, section: str) -> Path | None:
    """``train.init_from`` once it holds a saved model; None where the stage starts anew."""
    start = train.init_from
    if start is not None and not (Path(start) / "config.json").is_file():
        raise CheckpointError(
            f"{section}.init_from: {start} holds no trained model (no config.json); train the "
            "config that writes it first"
        )
    return start


def continued_unet(start: Path, fresh: torch.nn.Module, section: str) -> UNet2DConditionModel:
    """The UNet saved at ``start``, which must have the input ``fresh`` would have."""
    unet = UNet2DConditionModel.from_pretrained(start, local_files_only=True)
    if unet.config.class_embed_type != fresh.config.class_embed_type:
        raise ConfigError(
            f"{section}.init_from: {start} has class embedding "
            f"{unet.config.class_embed_type!r} where this config's model has "
            f"{fresh.config.class_embed_type!r}; it was trained with other conditioning"
        )
    if unet.config.in_channels != fresh.config.in_channels:
        raise ConfigError(
            f"{section}.init_from: {start} reads {unet.config.in_channels} input channels where "
            f"this config's model reads {fresh.config.in_channels}; it was trained with other "
            "conditioning"
        )
    return unet


def _checkpoint_dir(output: Path, step: int) -> Path:
    return output / CHECKPOINTS / f"step-{step:05d}"


def latest_checkpoint(output: Path) -> Path | None:
    """The newest complete checkpoint (one whose state.json was written), if any."""
    folder = output / CHECKPOINTS
    if not folder.is_dir():
        return None
    done = [p for p in _step_dirs(folder) if (p / _STATE).is_file()]
    return done[-1] if done else None


def _step_dirs(folder: Path) -> list[Path]:
    steps = [p for p in folder.glob("step-*") if p.name[5:].isdigit()]
    return sorted(steps, key=lambda p: int(p.name[5:]))


def _trainable(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(
    job: TrainJob,
    accelerator: Accelerator,
    optimizer: Any,
    lr_scheduler: Any,
    step: int,
    state: dict[str, Any],
    keep: int,
    ema: EMAModel | None = None,
) -> Path:
    """Write weights, optimizer, LR scheduler, RNG states and loop state for ``step``."""
    final = _checkpoint_dir(job.output, step)
    tmp = final.with_name(f".{final.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model = accelerator.unwrap_model(job.model)
    names = list(_trainable(model))
    save_file(
        {n: p.detach().cpu().contiguous() for n, p in _trainable(model).items()}, tmp / _WEIGHTS
    )
    if ema is not None:
        shadow = dict(zip(names, ema.shadow_params, strict=True))
        save_file({n: t.detach().cpu().contiguous() for n, t in shadow.items()}, tmp / _EMA_WEIGHTS)
        state = {**state, "ema_step": ema.optimization_step}
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(lr_scheduler.state_dict(), tmp / "lr_scheduler.pt")
    torch.save(_rng_states(), tmp / "rng.pt")
    if accelerator.scaler is not None:
        torch.save(accelerator.scaler.state_dict(), tmp / "scaler.pt")
    (tmp / _STATE).write_text(json.dumps({**state, "step": step}, indent=1) + "\n")
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for old in _step_dirs(job.output / CHECKPOINTS)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(
    job: TrainJob,
    accelerator: Accelerator,
    optimizer: Any,
    lr_scheduler: Any,
    folder: Path,
    ema: EMAModel | None = None,
) -> dict[str, Any]:
    """Restore a checkpoint into the live objects; returns its loop state."""
    state = json.loads((folder / _STATE).read_text())
    for key in ("config_hash", "base_model_hash"):
        if state.get(key) != getattr(job, key):
            raise CheckpointError(
                f"{folder} was made with a different {key.replace('_', ' ')} "
                f"({state.get(key)} vs {getattr(job, key)}); delete {folder.parent} "
                "or train with --no-resume"
            )
    params = _trainable(accelerator.unwrap_model(job.model))
    saved = load_file(folder / _WEIGHTS)
    if set(saved) != set(params):
        raise CheckpointError(f"{folder / _WEIGHTS}: parameter names do not match the model")
    with torch.no_grad():
        for name, tensor in saved.items():
            params[name].copy_(tensor)
        if ema is not None:
            if not (folder / _EMA_WEIGHTS).is_file():
                raise CheckpointError(f"{folder}: no {_EMA_WEIGHTS}, but ema_decay is set")
            shadow = load_file(folder / _EMA_WEIGHTS)
            for held, name in zip(ema.shadow_params, params, strict=True):
                held.copy_(shadow[name])
            ema.optimization_step = int(state.pop("ema_step"))
    optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=True))
    lr_scheduler.load_state_dict(torch.load(folder / "lr_scheduler.pt", weights_only=True))
    _set_rng_states(torch.load(folder / "rng.pt", weights_only=True))
    if accelerator.scaler is not None and (folder / "scaler.pt").is_file():
        accelerator.scaler.load_state_dict(torch.load(folder / "scaler.pt", weights_only=True))
    return state


def _rng_states() -> dict[str, Any]:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    states: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _set_rng_states(states: dict[str, Any]) -> None:
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


# ---------------------------------------------------------------- the loop


class _MicroBatches(Dataset):
    """Micro-batch k is (step, micro) = divmod(k, grad_accum): a pure function of k."""

    def __init__(self, make: Callable[[int, int], Batch], grad_accum: int):
        self.make, self.grad_accum = make, grad_accum

    def __getitem__(self, k: int) -> Batch:
        return self.make(*divmod(k, self.grad_accum))


def _same(batch: Batch) -> Batch:
    return batch


def _prefetch(job: TrainJob, train: TrainConfig, start: int, stop: int) -> DataLoader:
    # Decoding and cropping large tiles would otherwise stall a GPU between steps.
    order = range(start * train.grad_accum, stop * train.grad_accum)
    return DataLoader(
        _MicroBatches(job.batch, train.grad_accum),
        batch_size=None,
        sampler=order,
        num_workers=train.data_workers,
        collate_fn=_same,
    )


def run_training(
    job: TrainJob,
    train: TrainConfig,
    accelerator: Accelerator,
    resume: bool = True,
    max_steps: int | None = None,
    progress: bool = True,
) -> TrainSummary:
    """Train ``job.model`` to ``train.steps`` (or stop at ``max_steps``), checkpointing.

    Resumes from the newest checkpoint under ``output/checkpoints`` unless ``resume``
    is False, which deletes them first. Final weights are written only once the full
    step count is reached; the summary is written either way.
    """
    output = job.output
    if not resume:
        shutil.rmtree(output / CHECKPOINTS, ignore_errors=True)
    params = list(_trainable(job.model).values())
    optimizer = torch.optim.AdamW(params, lr=train.lr, weight_decay=1e-2)
    lr_scheduler = get_scheduler(
        LR_SCHEDULES[train.lr_schedule],
        optimizer,
        num_warmup_steps=train.lr_warmup_steps,
        num_training_steps=train.steps,
    )
    job.model, optimizer, lr_scheduler = accelerator.prepare(job.model, optimizer, lr_scheduler)
    # The average that gets saved as the final model; the raw weights keep training.
    ema = EMAModel(params, decay=train.ema_decay) if train.ema_decay else None

    state: dict[str, Any] = {
        "loss_curve": [],
        "wall_time_s": 0.0,
        "config_hash": job.config_hash,
        "base_model_hash": job.base_model_hash,
    }
    start = 0
    checkpoint = latest_checkpoint(output) if resume else None
    if checkpoint is not None:
        state = load_checkpoint(job, accelerator, optimizer, lr_scheduler, checkpoint, ema)
        start = state.pop("step")
        log.info("%s: resuming from %s", job.kind, checkpoint)
    stop = min(train.steps, max_steps) if max_steps is not None else train.steps
    log_every = max(1, train.steps // 100)

    job.model.train()
    began, recent, interval, last_loss = time.perf_counter(), [], [], None
    state.setdefault("interval_losses", [])  # absent from checkpoints older than the guard
    bar = tqdm(
        total=stop,
        initial=start,
        desc=job.kind,
        unit="step",
        disable=not progress,
        dynamic_ncols=True,
    )
    batches = iter(_prefetch(job, train, start, stop))
    for step in range(start, stop):
        for micro in range(train.grad_accum):
            batch = next(batches)
            with accelerator.accumulate(job.model):
                loss = job.loss(batch, step, micro)
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(params, train.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            value = loss.detach().item()
            if not math.isfinite(value):
                # The previous checkpoint stays the resume point: nothing of this step is saved.
                raise TrainingDivergedError(
                    f"{job.kind}: loss is {value} at step {step + 1}; lower {job.kind}'s lr "
                    f"or raise its warm-up (resume starts from {latest_checkpoint(output)})"
                )
            recent.append(value)
            interval.append(value)
        if ema is not None:
            ema.step(params)
        done = step + 1
        if done % log_every == 0 or done == stop:
            last_loss = float(np.mean(recent))
            state["loss_curve"].append((done, last_loss))
            recent = []
        bar.update(1)
        bar.set_postfix(loss=f"{recent[-1] if recent else last_loss:.4f}")
        if done % train.checkpoint_every == 0 or done == stop:
            _stop_if_diverged(job.kind, state["interval_losses"], interval, train, output)
            interval = []
            state["wall_time_s"] += time.perf_counter() - began
            began = time.perf_counter()
            save_checkpoint(
                job, accelerator, optimizer, lr_scheduler, done, state, train.keep_checkpoints, ema
            )
    bar.close()

    complete = stop >= train.steps
    if complete:
        if ema is not None:
            ema.copy_to(params)
        job.save_final(output)
    steps_run = max(stop, start)
    wall = state["wall_time_s"]
    curve = [(int(s), float(v)) for s, v in state["loss_curve"]]
    summary = TrainSummary(
        kind=job.kind,
        output=str(output),
        steps=steps_run,
        target_steps=train.steps,
        complete=complete,
        final_loss=curve[-1][1] if curve else None,
        loss_curve=curve,
        wall_time_s=round(wall, 3),
        samples_per_s=round(steps_run * job.samples_per_step / wall, 3) if wall else 0.0,
        steps_per_s=round(steps_run / wall, 3) if wall else 0.0,
        config_hash=job.config_hash,
        base_model_hash=job.base_model_hash,
        resumed_from=start,
        seed=train.seed,
        device=str(accelerator.device),
        output_hash=model_hash(output) if complete else None,
    )
    summary.write(output / SUMMARY)
    log.info(
        "%s: %d/%d steps, final loss %s, %.1f s",
        job.kind,
        steps_run,
        train.steps,
        summary.final_loss,
        wall,
    )
    return summary
