"""A Dask worker preload for the fan-out test: each shard a worker generates is logged as
``shard_id pid torch_threads`` to the file named by ``lfactory-test.staged-log`` in the
Dask config (the parent's config reaches every worker process the cluster spawns).

The generator's class is patched, not a module function: Prefect tasks reach the workers
pickled by value, with the functions they call bound at pickling time.
"""

from __future__ import annotations

import os

import dask

from pipeline_lib.generate.sampler import Generator


def dask_setup(worker) -> None:
    log_path = dask.config.get("lfactory-test.staged-log")
    real_generate = Generator.generate_shard

    def logged_generate(self, shard_id, *args, **kwargs):
        import torch

        data = real_generate(self, shard_id, *args, **kwargs)
        with open(log_path, "a") as log:
            log.write(f"{shard_id} {os.getpid()} {torch.get_num_threads()}\n")
        return data

    Generator.generate_shard = logged_generate
