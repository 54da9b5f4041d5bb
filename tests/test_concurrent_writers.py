"""Two writers on one store at once: claims split the shards between them, a killed
writer's shard is taken over, and no shard is lost, torn or committed twice."""

from __future__ import annotations

import base64
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from label_stubs import SIZE
from store_fakes import fake_shard

from pipeline_lib.errors import ShardClaimedError
from pipeline_lib.generate.seeds import sample_id
from pipeline_lib.quota import generate_to_quota
from pipeline_lib.store import (
    SampleStore,
    commit_shard,
    commit_staged_shard,
    create_or_open_store,
    read_manifests,
    repair_store,
    stage_shard,
    verify_store,
)
from pipeline_lib.store.claims import claim_path, claim_shard, release_claim, shard_is_claimed

HERE = Path(__file__).parent
STUB_CHILD = HERE / "stub_writer_child.py"
STORE_CHILD = HERE / "store_writer_child.py"
SHARDS, SHARD_SIZE = 8, 4
WRITERS = ("survivor", "victim")


def stub_config_file(tmp_path: Path) -> Path:
    path = tmp_path / "stub.yaml"
    config = {
        "name": "stub",
        "work_dir": str(tmp_path / "work"),
        "device": "cpu",
        "generation": {"resolution": SIZE, "batch_size": 2},
        "store": {"shard_size": SHARD_SIZE},
    }
    path.write_text(yaml.safe_dump(config))
    return path


def start_writer(tmp_path: Path, name: str, config: Path, *extra: str) -> subprocess.Popen:
    command = [
        sys.executable,
        str(STUB_CHILD),
        "--log",
        str(tmp_path / f"{name}.log"),
        "--ready",
        str(tmp_path / f"{name}.ready"),
        "--go",
        str(tmp_path / "go"),
        "--delay",
        "0.05",
        *extra,
        str(config),
        "--samples",
        str(SHARDS * SHARD_SIZE),
    ]
    with (tmp_path / f"{name}.err").open("w") as errors:  # a full pipe would stall the child
        return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=errors)


def test_two_writers_one_killed_mid_shard_commit_every_shard_exactly_once(
    tmp_path, monkeypatch, capsys
):
    from cli_calls import call_main

    from pipeline_lib.config import load_config

    config = stub_config_file(tmp_path)
    cfg = load_config(config)
    survivor = start_writer(tmp_path, "survivor", config)
    victim = start_writer(tmp_path, "victim", config, "--die-at-commit", "2")
    deadline = time.monotonic() + 600  # imports take long on a loaded machine
    while not all((tmp_path / f"{n}.ready").exists() for n in WRITERS):
        for name, writer in zip(WRITERS, (survivor, victim), strict=True):
            assert writer.poll() is None, (tmp_path / f"{name}.err").read_text()[-3000:]
        assert time.monotonic() < deadline, "the writers never got ready"
        time.sleep(0.05)
    (tmp_path / "go").touch()  # both generate from here on, on the same plan

    assert victim.wait(timeout=300) == -signal.SIGKILL, (tmp_path / "victim.err").read_text()
    assert survivor.wait(timeout=300) == 0, (tmp_path / "survivor.err").read_text()[-3000:]

    lines = {n: (tmp_path / f"{n}.log").read_text().splitlines() for n in WRITERS}
    # The victim committed one shard and died about to commit a second, its claim held.
    assert len(lines["victim"]) == 2 and lines["victim"][1].startswith("dying ")
    died_holding = int(lines["victim"][1].removeprefix("dying "))
    commits = [int(k) for k in lines["survivor"] + lines["victim"][:1]]
    assert sorted(commits) == list(range(SHARDS)), "every shard committed exactly once"
    assert died_holding in map(int, lines["survivor"]), "the survivor took the shard over"

    result = call_main(monkeypatch, capsys, "store", "verify", cfg.store.path)
    assert result.code == 0 and result.out.endswith("ok\n"), result.out + result.err
    assert "orphan" not in result.out and "in progress" not in result.out
    ids = read_manifests(cfg.store.path)["sample_id"].to_pylist()
    seed = cfg.generation.seed
    expected = {sample_id("stub", seed, k, a) for k in range(SHARDS) for a in range(SHARD_SIZE)}
    assert len(ids) == len(set(ids)) and set(ids) == expected, "no sample lost or duplicated"

    def regenerate(shard_id: int):
        pytest.fail(f"a re-run generated shard {shard_id} again")

    rerun = generate_to_quota(cfg.store.path, SHARDS * SHARD_SIZE, SHARD_SIZE, regenerate)
    assert (rerun.committed, rerun.shards_written) == (SHARDS * SHARD_SIZE, 0)


def run_store_child(path: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(STORE_CHILD), str(path), "--samples", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def staged_from(child: subprocess.Popen):
    line = child.stdout.readline()
    assert line, child.stderr.read()
    return pickle.loads(base64.b64decode(line))


def test_a_live_writers_shard_is_left_alone_and_taken_over_once_it_dies(tmp_path):
    path = tmp_path / "s.zarr"
    store = create_or_open_store(path, shard_size=4, height=SIZE, width=SIZE)
    commit_shard(store, fake_shard(0, 3))
    release = tmp_path / "release"
    holder = run_store_child(path, "--stage", "1", "--hold-until", str(release))
    staged_from(holder)

    report = verify_store(path)
    assert report.ok and len(report.in_progress) == 1
    assert report.in_progress[0].startswith(f"shard 1: being written by pid {holder.pid} on ")
    assert report.orphans == (), "a live writer's staged shard is no leftover"
    assert repair_store(path) == [] and (path / "images" / "c" / "1").is_dir()
    with pytest.raises(ShardClaimedError, match=f"shard 1 is being written by pid {holder.pid}"):
        commit_shard(store, fake_shard(1, 3))

    def make(shard_id: int):
        release.touch()  # the holder dies (SIGKILL) while this run is at work
        return commit_shard(store, fake_shard(shard_id, 3))

    run = generate_to_quota(path, 12, 4, make)
    assert holder.wait(timeout=60) == -signal.SIGKILL
    assert run.shards_written == 3 and sorted(SampleStore(path).committed_shards()) == [0, 1, 2, 3]
    report = verify_store(path)
    assert report.ok and report.orphans == () and report.in_progress == ()
    ids = read_manifests(path)["sample_id"].to_pylist()
    assert len(ids) == len(set(ids)) == 12


def test_a_shard_staged_in_a_process_that_is_gone_commits_by_its_claim_token(tmp_path):
    path = tmp_path / "s.zarr"
    store = create_or_open_store(path, shard_size=4, height=SIZE, width=SIZE)
    stager = run_store_child(path, "--stage", "0")
    staged = staged_from(stager)
    assert stager.wait(timeout=60) == 0
    assert claim_path(path, 0).exists() and not shard_is_claimed(path, 0)

    result = commit_staged_shard(store, staged)
    assert (result.kept, result.already_committed) == (3, False)
    assert not claim_path(path, 0).exists()
    assert verify_store(path).orphans == ()


def test_one_claim_per_shard_within_a_process_too(tmp_path):
    store = create_or_open_store(tmp_path / "s.zarr", shard_size=4, height=SIZE, width=SIZE)
    claim = claim_shard(store.path, 0)
    assert claim is not None and shard_is_claimed(store.path, 0)
    assert claim_shard(store.path, 0) is None, "a second task of this process"
    with pytest.raises(ShardClaimedError):
        stage_shard(store, fake_shard(0, 3))
    staged = stage_shard(store, fake_shard(0, 3), claim)
    assert staged.claim_token == claim.token
    commit_staged_shard(store, staged)
    assert not shard_is_claimed(store.path, 0) and not claim_path(store.path, 0).exists()
    again = claim_shard(store.path, 1)
    release_claim(store.path, 1, again.token)
    assert claim_shard(store.path, 1) is not None
