"""What Prefect adds to every factory task: cache keys, retries, storage, OOM back-off."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar

from prefect import Task
from prefect.client.schemas.objects import State, TaskRun
from prefect.filesystems import LocalFileSystem
from prefect.logging import get_logger
from prefect.settings import get_current_settings
from prefect.tasks import exponential_backoff

from pipeline_lib.config import FactoryConfig
from pipeline_lib.errors import FactoryError, GpuMemoryError
from pipeline_lib.hashing import json_digest

GPU_TAG = "gpu"
T = TypeVar("T")
log = get_logger(__name__)


def digest(*parts: Any) -> str:
    """A stable cache key over config sections, hashes and plain values."""
    return json_digest(*parts, length=32)


@lru_cache(maxsize=16)
def _result_storage(path: str, api_url: str | None) -> LocalFileSystem:
    # Prefect needs storage blocks saved server-side; one per results folder (and server).
    # The saved instance, not its slug: a slug is loaded from the server at each task run.
    block = LocalFileSystem(basepath=path)
    block.save(f"lfactory-results-{digest(path)[:12]}", overwrite=True)
    return block


# OSErrors that name a path which is not there or not allowed: the same call fails again.
_DETERMINISTIC_OS_ERRORS = (
    FileNotFoundError,
    FileExistsError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
)


def is_worth_retrying(error: BaseException) -> bool:
    """Whether a second try of the same call can succeed: GPU memory, I/O and network
    errors, a server hiccup. A ``FactoryError`` (bad data, config or store) never can."""
    if isinstance(error, FactoryError):
        return False
    if is_out_of_memory(error):
        return True
    if isinstance(error, OSError):  # includes ConnectionError and TimeoutError
        return not isinstance(error, _DETERMINISTIC_OS_ERRORS)
    import httpx

    if isinstance(error, httpx.HTTPStatusError):
        return error.response.status_code >= 500 or error.response.status_code == 429
    return isinstance(error, httpx.TransportError)


def retry_only_transient(task: Task, task_run: TaskRun, state: State) -> bool:
    """Prefect's ``retry_condition_fn``: retry a failed run only when its error is
    worth another try (see ``is_worth_retrying``)."""
    error = state.data if isinstance(state.data, BaseException) else None
    if error is None:
        try:
            error = state.result(raise_on_failure=False)
        except Exception:  # noqa: BLE001 - an unreadable result: retry as before
            return True
    return not isinstance(error, BaseException) or is_worth_retrying(error)


def configured(task: Task, config: FactoryConfig, **options: Any) -> Task:
    """``task`` with the run-time options the config sets: retries with exponential
    back-off for errors a second try can cure (never a ``FactoryError``), a timeout,
    results persisted under ``prefect.results_path`` (which is also where cache records
    live, so a re-run anywhere that sees the path hits the cache), and the ``gpu`` tag
    only where the config's device may be a GPU.
    """
    p = config.prefect
    configured_task = task.with_options(
        retries=p.retries,
        retry_condition_fn=retry_only_transient,
        retry_delay_seconds=exponential_backoff(backoff_factor=p.retry_delay_seconds)
        if p.retries
        else 0,
        retry_jitter_factor=0.2 if p.retries else None,
        timeout_seconds=p.task_timeout_seconds,
        persist_result=True,
        result_storage=_result_storage(str(p.results_path), get_current_settings().api.url),
        **options,
    )
    if config.device == "cpu":
        # A CPU run holds no GPU: a slot of the gpu limit would only cost its lease's
        # round-trips (measured: 0.35-0.7 s per task on 2 cores). Set, not passed:
        # with_options reads an empty tag set as "keep the task's own".
        configured_task.tags = configured_task.tags - {GPU_TAG}
    return configured_task


def is_out_of_memory(error: BaseException) -> bool:
    # Only code that imported torch can have run out of GPU memory.
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(error, torch.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and "out of memory" in str(error).lower()


def back_off_on_oom(run: Callable[[int], T], sizes: Sequence[int], what: str) -> T:
    """Call ``run(sizes[0])``; on a CUDA out-of-memory error try again with the next size."""
    for attempt, size in enumerate(sizes):
        try:
            return run(size)
        except Exception as error:  # noqa: BLE001 - re-raised unless it is an OOM
            if not is_out_of_memory(error) or attempt == len(sizes) - 1:
                raise
            import torch

            torch.cuda.empty_cache()
            log.warning(
                "%s ran out of GPU memory; retrying with batch size %d", what, sizes[attempt + 1]
            )
    raise ValueError(f"{what}: no batch size to try")


def halve_on_oom(run: Callable[[int], T], batch_size: int, what: str) -> T:
    """Call ``run(batch_size)``; on a CUDA out-of-memory error try again with half the batch
    (for work whose result does not depend on the batch, such as sampling)."""
    sizes = [batch_size]
    while sizes[-1] > 1:
        sizes.append(sizes[-1] // 2)
    return back_off_on_oom(run, sizes, what)


def refuse_on_oom(run: Callable[[], T], what: str, advice: str) -> T:
    """Call ``run()``; turn a CUDA out-of-memory error into a ``GpuMemoryError`` that says
    what to change, for work whose result a smaller batch would change."""
    try:
        return run()
    except Exception as error:  # noqa: BLE001 - re-raised unless it is an OOM
        if not is_out_of_memory(error):
            raise
        raise GpuMemoryError(f"{what} ran out of GPU memory; {advice}") from error


def refreshed_if_missing(task: Task, *outputs: Path) -> Task:
    """Bypass the cache when an output a cached result points at has gone from disk.

    Cache keys name a task's inputs; only its outputs can tell that a cached result no
    longer describes the files (someone deleted the models or the data set).
    """
    if all(Path(p).exists() for p in outputs):
        return task
    return task.with_options(refresh_cache=True)
