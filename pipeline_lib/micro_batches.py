"""Micro-batches: how a training batch is split when it does not fit in GPU memory.

The effective batch (``batch_size * grad_accum``) is part of what a training run is: it
changes the trajectory and the resume hash. A split keeps it exactly, so a micro-batch
must divide the batch the config asked for.
"""

from __future__ import annotations

from typing import TypeVar

from pipeline_lib.config import TrainConfig

Train = TypeVar("Train", bound=TrainConfig)


def effective_batch(train: TrainConfig) -> int:
    """Samples per optimizer step, however they are split into micro-batches."""
    return train.batch_size * train.grad_accum


def exact_splits(batch_size: int) -> list[int]:
    """The micro-batch sizes to fall back on, largest first: each the largest divisor of
    ``batch_size`` at most half the one before (5 -> [5, 1]; 12 -> [12, 6, 3, 1])."""
    sizes = [batch_size]
    while sizes[-1] > 1:
        sizes.append(max(d for d in range(1, sizes[-1] // 2 + 1) if batch_size % d == 0))
    return sizes


def split_batch(train: Train, micro_batch: int) -> Train:
    """``train`` with ``micro_batch`` samples per forward pass and the same effective
    batch (more accumulation steps); ``micro_batch`` must divide ``batch_size``."""
    if micro_batch == train.batch_size:
        return train
    if micro_batch < 1 or train.batch_size % micro_batch:
        raise ValueError(
            f"a micro-batch of {micro_batch} does not divide batch_size {train.batch_size}; "
            f"choose one of {exact_splits(train.batch_size)}"
        )
    factor = train.batch_size // micro_batch
    return train.model_copy(
        update={"batch_size": micro_batch, "grad_accum": train.grad_accum * factor}
    )
