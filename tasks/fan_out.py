"""How a round of shards runs: one after another in the flow's process, or fanned out over
a Dask cluster through prefect-dask's DaskTaskRunner (``prefect.dask`` in the config).

On Dask the shards of a round are generated side by side, each on some worker, and staged
there under its claim; the flow's process commits each shard as soon as it is staged (the
claim's token gives it the right), so manifests are still written by one process, one at a
time, and a new shard is submitted as each one is committed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

from prefect import Task
from prefect.futures import PrefectFuture

from pipeline_lib.config import DaskConfig, FactoryConfig
from pipeline_lib.generate.shards import open_store_for
from pipeline_lib.quota import ShardOutcome, ShardRound, one_by_one
from pipeline_lib.store.shard_writer import ShardResult, StagedShard


def dask_runner_options(dask: DaskConfig, cores: int | None = None) -> dict[str, Any]:
    """``DaskTaskRunner`` arguments for ``dask``: the external scheduler's address, or a
    local cluster of worker processes that run one shard each, with ``torch_threads``
    torch threads, by default ``cores / workers`` (``cores``: this machine's, unless given)."""
    if dask.address is not None:
        return {"address": dask.address}
    threads = dask.torch_threads or max(1, (cores or os.cpu_count() or 1) // dask.workers)
    return {
        "cluster_kwargs": {
            "n_workers": dask.workers,
            "processes": True,
            # One shard at a time per process: torch's threads are its parallelism.
            "threads_per_worker": 1,
            # Read by torch as a worker process starts; Dask's own default is one thread.
            "env": {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)},
        }
    }


@contextmanager
def shard_rounds(config: FactoryConfig, generate: Task, commit: Task) -> Iterator[ShardRound]:
    """The runner of a round of shards for ``pipeline_lib.quota.generate_to_quota``.

    Without ``prefect.dask`` each shard is generated and committed in turn in this process.
    With it, shards are submitted to the cluster, which lives as long as the block (a local
    one is started here; an external one is only connected to).
    """
    if config.prefect.dask is None:
        yield one_by_one(lambda shard_id: commit(config, generate(config, shard_id)))
        return
    # Imported here: distributed takes about a second to import, paid only by fanned-out runs.
    from distributed import as_completed
    from prefect_dask import DaskTaskRunner

    # Created here, once, rather than by every worker's first shard at the same moment.
    open_store_for(config)
    with DaskTaskRunner(**dask_runner_options(config.prefect.dask)) as runner:

        def on_dask(shard_ids: list[int]) -> Iterator[ShardOutcome]:
            # Two shards per worker thread keep every worker busy; holding the rest back
            # lets class-target steering see the commits of all but the latest shards.
            window = 2 * max(1, sum(runner.client.nthreads().values()))
            waiting = iter(shard_ids)
            running: dict[Any, PrefectFuture[StagedShard]] = {}
            finished = as_completed(loop=runner.client.loop)

            def submit_next() -> None:
                shard_id = next(waiting, None)
                if shard_id is not None:
                    staged = runner.submit(generate, {"config": config, "shard_id": shard_id})
                    running[staged.wrapped_future] = staged
                    finished.add(staged.wrapped_future)

            for _ in range(window):
                submit_next()
            for done in finished:
                yield partial(_commit, commit, config, running.pop(done))
                submit_next()

        yield on_dask


def _commit(commit: Task, config: FactoryConfig, staged: PrefectFuture[StagedShard]) -> ShardResult:
    # result() raises the staging's own error here, ShardClaimedError included, so the
    # quota loop treats a shard another writer holds as it does without Dask.
    return commit(config, staged.result())
