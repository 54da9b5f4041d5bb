"""Shard generation fanned out on a local Dask cluster of two worker processes, under a
real Prefect server: every shard lands exactly once and the store verifies."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from cli_calls import call_main
from factory_configs import minimal_config

from pipeline_lib.config import DaskConfig, config_from_dict
from pipeline_lib.errors import ConfigError

pytestmark = pytest.mark.dask

PROBE = Path(__file__).with_name("dask_worker_probe.py")
SHARD_SIZE, SHARDS = 2, 4


def _fanned_out_config(work_dir: Path, **dask):
    return config_from_dict(
        minimal_config(
            work_dir,
            name="dasktest",
            store={"shard_size": SHARD_SIZE},
            quota={"samples": SHARD_SIZE * SHARDS, "validate_every": SHARD_SIZE * SHARDS},
            prefect={"retries": 0, "gpu_concurrency": 2, "dask": dask},
        )
    )


@pytest.mark.slow
@pytest.mark.server
def test_a_local_cluster_of_two_workers_commits_every_shard_exactly_once(
    prefect_api, tmp_path, monkeypatch, capsys
):
    import dask

    import flows.generate
    from flows.train import train_models
    from pipeline_lib.store.claims import claim_files
    from pipeline_lib.store.manifest import committed_shard_ids, manifest_dir, read_manifests

    config = _fanned_out_config(tmp_path, workers=2, torch_threads=1)
    train_models(config)
    validations = []  # validation is not under test here: record the steps it is started for
    monkeypatch.setattr(flows.generate, "start_validation", lambda cfg, s: validations.append(s))
    staged_log = tmp_path / "staged-by.log"
    probe = {"distributed.worker.preload": [str(PROBE)], "lfactory-test.staged-log": staged_log}
    with dask.config.set(probe):
        summary = flows.generate.generate_shards(config)

    store = config.store.path
    assert summary.committed == SHARD_SIZE * SHARDS and summary.shards_written == SHARDS
    assert committed_shard_ids(store) == list(range(SHARDS))
    assert sorted(p.name for p in manifest_dir(store).iterdir()) == [
        f"shard-{k:05d}.parquet" for k in range(SHARDS)
    ], "one manifest per shard, no temp or duplicate files"
    ids = read_manifests(store).column("sample_id").to_pylist()
    assert len(ids) == SHARD_SIZE * SHARDS == len(set(ids))
    assert claim_files(store) == [], "every claim is released once its shard is committed"
    # Started once the quota is committed, and again after the loop (a no-op once validated).
    assert set(validations) == {SHARD_SIZE * SHARDS}

    assert staged_log.is_file(), "no Dask worker generated a shard"
    staged = [line.split() for line in staged_log.read_text().splitlines()]
    assert sorted(int(shard) for shard, _, _ in staged) == list(range(SHARDS)), (
        "each shard is generated once, on a worker"
    )
    pids = {int(pid) for _, pid, _ in staged}
    assert len(pids) == 2 and os.getpid() not in pids, "both worker processes generated shards"
    assert {int(threads) for _, _, threads in staged} == {1}

    verified = call_main(monkeypatch, capsys, "store", "verify", store)
    assert verified.code == 0, verified.err
    assert "orphan" not in verified.out and "in progress" not in verified.out
    assert verified.out.strip().endswith("ok")

    again = flows.generate.generate_shards(config)
    assert (again.committed, again.shards_written) == (SHARD_SIZE * SHARDS, 0), "a re-run resumes"


def test_a_local_cluster_gets_cores_over_workers_torch_threads_each():
    from tasks.fan_out import dask_runner_options

    local = dask_runner_options(DaskConfig(workers=3), cores=16)["cluster_kwargs"]
    assert local["n_workers"] == 3 and local["threads_per_worker"] == 1 and local["processes"]
    assert local["env"]["OMP_NUM_THREADS"] == "5"
    assert dask_runner_options(DaskConfig(workers=4), cores=2)["cluster_kwargs"]["env"] == {
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    pinned = dask_runner_options(DaskConfig(workers=2, torch_threads=6), cores=4)
    assert pinned["cluster_kwargs"]["env"]["OMP_NUM_THREADS"] == "6"
    assert dask_runner_options(DaskConfig(address="tcp://10.0.0.5:8786")) == {
        "address": "tcp://10.0.0.5:8786"
    }


@pytest.mark.parametrize(
    ("dask", "message"),
    [
        ({}, "either address"),
        ({"workers": 2, "address": "tcp://10.0.0.5:8786"}, "not both"),
        ({"address": "tcp://10.0.0.5:8786", "torch_threads": 2}, "OMP_NUM_THREADS"),
        ({"workers": 0}, "workers"),
    ],
)
def test_a_dask_section_names_what_to_set(tmp_path, dask, message):
    with pytest.raises(ConfigError, match=message):
        _fanned_out_config(tmp_path, **dask)


def test_more_local_workers_than_gpu_slots_is_refused(tmp_path):
    data = minimal_config(tmp_path, prefect={"dask": {"workers": 2}})
    with pytest.raises(ConfigError, match="set gpu_concurrency to 2"):
        config_from_dict(data)
