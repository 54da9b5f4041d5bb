"""The sample store on object storage: a real S3 API (moto's server on 127.0.0.1), the same
guarantees as on a disk: exact round trip, verify, export, a killed writer, one commit."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from child_processes import kill_when
from store_fakes import fake_sample, fake_shard

from pipeline_lib.data.loveda import check_dataset, list_tiles, read_mask
from pipeline_lib.errors import IntegrityError, ManifestExistsError, ShardClaimedError
from pipeline_lib.quota import generate_to_quota
from pipeline_lib.store import (
    SampleStore,
    commit_shard,
    commit_staged_shard,
    committed_count,
    create_or_open_store,
    leases,
    plan_shards,
    read_manifests,
    repair_store,
    shard_writer,
    stage_shard,
    verify_store,
)
from pipeline_lib.store.claims import claim_shard, shard_is_claimed
from pipeline_lib.store.manifest import (
    is_committed,
    manifest_path,
    read_manifest,
    write_manifest,
)
from pipeline_lib.store.object_store import object_root

pytest.importorskip("s3fs", reason="object stores need s3fs (pip install -e '.[dev]')")
pytest.importorskip("moto", reason="these tests need moto[server] (pip install -e '.[dev]')")

pytestmark = pytest.mark.object_store

REPO = Path(__file__).parents[1]
CHILD = Path(__file__).with_name("store_writer_child.py")
BUCKET = "lfactory-test"
# Short leases: a killed writer's shard is taken over within seconds.
LEASE_S = 2.0


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server on a free port of 127.0.0.1, and the environment any AWS client
    (this process's and the writer subprocesses') reads to reach it."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import fsspec

    fsspec.filesystem("s3", skip_instance_cache=True).mkdir(BUCKET)
    yield env
    server.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def url(s3_server, monkeypatch) -> str:
    """A fresh store URL for each test, with short claim leases."""
    monkeypatch.setattr(leases, "LEASE_S", LEASE_S)
    return f"s3://{BUCKET}/{uuid.uuid4().hex[:12]}/store.zarr"


def make_store(url: str, shards=(0, 1), kept: int = 3) -> SampleStore:
    store = create_or_open_store(url, shard_size=4, height=16, width=16)
    for k in shards:
        commit_shard(store, fake_shard(k, kept))
    return store


def objects(url: str) -> list[str]:
    root = object_root(url)
    return sorted(key.removeprefix(root.root + "/") for key in root.fs.find(root.root))


def run_child(url: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "LFACTORY_CLAIM_LEASE_S": str(LEASE_S), "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, str(CHILD), url, *args],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
    )


def test_shards_on_an_object_store_read_back_exactly_one_object_per_array(url):
    store = make_store(url, shards=(0, 3))
    assert isinstance(store.path, str) and store.path == url
    table = read_manifests(url)
    assert table["index"].to_pylist() == [0, 1, 2, 12, 13, 14]
    for row in table.to_pylist():
        image, label = fake_sample(0, row["shard_id"], row["attempt"])
        got_images, got_labels = SampleStore(url).read_rows([row["index"]])
        np.testing.assert_array_equal(got_images[0], image)
        np.testing.assert_array_equal(got_labels[0], label)
    image, label, row = store.read_sample(table["sample_id"][4].as_py())
    assert row["index"] == 13
    assert committed_count(url) == 6 and plan_shards(url, 24, 4) == [1, 2, 4, 5]
    # A shard is one object per array, the commit one manifest; no temp objects, and the
    # claims were released.
    assert objects(url) == [
        "images/c/0/0/0/0",
        "images/c/3/0/0/0",
        "images/zarr.json",
        "labels/c/0/0/0",
        "labels/c/3/0/0",
        "labels/zarr.json",
        "manifests/shard-00000.parquet",
        "manifests/shard-00003.parquet",
        "zarr.json",
    ]
    again = commit_shard(store, fake_shard(0, 2))
    assert again.already_committed and read_manifest(url, 0).num_rows == 3


def test_verify_passes_then_catches_a_corrupted_object(url, monkeypatch, capsys):
    from cli_calls import call_main

    make_store(url, shards=(0, 1))
    result = call_main(monkeypatch, capsys, "store", "verify", url)
    assert result.code == 0 and result.out.endswith("ok\n"), result.out + result.err
    assert "2 shard(s), 6 sample(s)" in result.out

    root = object_root(url)
    data = bytearray(root.read("labels", "c", "1", "0", "0"))
    data[40] ^= 0xFF
    root.fs.pipe_file(root.key("labels", "c", "1", "0", "0"), bytes(data))
    report = verify_store(url)
    assert not report.ok and all("shard 1" in p for p in report.problems), report.problems
    with pytest.raises(IntegrityError):
        SampleStore(url).read_sample(read_manifests(url)["sample_id"][3].as_py())
    result = call_main(monkeypatch, capsys, "store", "verify", url)
    assert result.code == 2 and "shard 1" in result.err


def test_export_from_an_object_store_to_a_local_folder(url, tmp_path, monkeypatch, capsys):
    from cli_calls import call_main

    store = make_store(url, shards=(0, 1))
    result = call_main(monkeypatch, capsys, "store", "export", url, tmp_path / "out")
    assert result.code == 0, result.out + result.err
    assert check_dataset(tmp_path / "out").total_tiles == 6
    tiles = {t.tile_id: t for t in list_tiles(tmp_path / "out")}
    for row in read_manifests(url).to_pylist():
        _, label = fake_sample(0, row["shard_id"], row["attempt"])
        np.testing.assert_array_equal(read_mask(tiles[str(row["index"])].mask_path), label)
    assert store.read_rows([5])[1][0].shape == (16, 16)
    result = call_main(monkeypatch, capsys, "store", "stats", url)
    assert result.code == 0 and f"{url}: 6 samples in 2 shard(s)" in result.out, result.err


@pytest.mark.slow  # a writer subprocess, and a lease to run out
def test_killed_writer_leaves_no_visible_shard_and_a_rerun_completes_the_quota(url):
    died = run_child(url, "--samples", "16", "--die-before-commit", "2")
    assert died.returncode == -signal.SIGKILL, died.stderr[-3000:]
    # Shard 2's arrays landed but its manifest did not: the shard is invisible.
    assert "images/c/2/0/0/0" in objects(url)
    report = verify_store(url)
    assert report.ok and report.shards == 2 and report.samples == 6
    assert plan_shards(url, 16, 4) == [2, 3]

    def make(shard_id: int):
        return commit_shard(SampleStore(url), fake_shard(shard_id, 3))

    # The dead writer's claim blocks shard 2 until its lease runs out; then it is taken over.
    run = generate_to_quota(url, 12, 4, make)
    assert run.committed == 12 and run.shards_written == 2
    report = verify_store(url)
    assert report.ok and report.orphans == () and report.in_progress == ()
    table = read_manifests(url)
    ids = table["sample_id"].to_pylist()
    assert len(ids) == len(set(ids)) == 12
    for row in table.to_pylist():
        image, label = fake_sample(0, row["shard_id"], row["attempt"])
        got_images, got_labels = SampleStore(url).read_rows([row["index"]])
        np.testing.assert_array_equal(got_images[0], image)
        np.testing.assert_array_equal(got_labels[0], label)


def test_a_second_committer_of_a_shard_is_refused_and_the_first_manifest_stands(url, monkeypatch):
    # S3 checks If-None-Match and writes in one step; moto's server does not promise that
    # for simultaneous requests, so the two committers race in a fixed order here: both
    # found the shard uncommitted, the first one's PUT landed first.
    store = make_store(url, shards=())
    staged = stage_shard(store, fake_shard(0, 3))
    now = datetime.now(UTC)
    first = [{**row, "created_at": now} for row in staged.rows[:2]]
    write_manifest(url, 0, first, {"shard_id": 0, "kept": 2})
    with pytest.raises(ManifestExistsError, match="committed by another writer"):
        write_manifest(url, 0, [{**row, "created_at": now} for row in staged.rows], {})

    monkeypatch.setattr(shard_writer, "is_committed", lambda store, shard_id: False)
    result = commit_staged_shard(store, staged)
    assert result.already_committed and result.kept == 2, "the first commit stands"
    assert read_manifest(url, 0)["sample_id"].to_pylist() == [r["sample_id"] for r in first]
    manifests = [k for k in objects(url) if k.startswith("manifests/")]
    assert manifests == ["manifests/shard-00000.parquet"]
    assert manifest_path(url, 0) == f"{url}/manifests/shard-00000.parquet"
    assert leases.claim_ids(url) == [], "the refused committer released its claim"


def put_claim(url: str, shard_id: int, expires: float) -> None:
    """A claim object as a writer on another machine leaves it."""
    record = {
        "shard_id": shard_id,
        "token": "theirs",
        "pid": 1,
        "host": "elsewhere",
        "since": "2026-01-01T00:00:00+00:00",
        "expires": expires,
    }
    root = object_root(url)
    root.fs.pipe_file(
        root.key("claims", f"shard-{shard_id:05d}.claim"), json.dumps(record).encode()
    )


def test_a_live_claim_is_respected_and_an_expired_one_taken_over(url):
    store = make_store(url, shards=())
    put_claim(url, 0, time.time() + 60)
    assert shard_is_claimed(url, 0) and verify_store(url).in_progress
    with pytest.raises(ShardClaimedError, match="pid 1 on elsewhere"):
        commit_shard(store, fake_shard(0, 3))
    put_claim(url, 0, time.time() - 60)  # its writer stopped renewing a minute ago
    report = verify_store(url)
    assert report.ok and any("claim on shard 0" in o for o in report.orphans), report.orphans
    assert commit_shard(store, fake_shard(0, 3)).kept == 3
    assert leases.claim_ids(url) == [] and verify_store(url).orphans == ()


def test_a_writer_whose_claim_was_taken_over_cannot_commit(url):
    store = make_store(url, shards=())
    staged = stage_shard(store, fake_shard(1, 3))
    assert claim_shard(url, 1) is None, "a second writer in this process"
    # The writer stalled past its lease and a writer elsewhere took the claim over.
    put_claim(url, 1, time.time() + 60)
    with pytest.raises(ShardClaimedError):
        commit_staged_shard(store, staged)
    assert not is_committed(url, 1)
    assert leases.read_claim(url, 1)["token"] == "theirs", "the new writer's claim stays"


@pytest.mark.slow  # a writer subprocess, and a lease to run out
def test_a_writer_killed_at_any_moment_leaves_only_whole_shards(url):
    env = {**os.environ, "LFACTORY_CLAIM_LEASE_S": str(LEASE_S), "PYTHONPATH": str(REPO)}
    child = subprocess.Popen(
        [sys.executable, str(CHILD), url, "--samples", "40"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
    )
    kill_when(child, lambda: is_committed(url, 1), 240, "the child never committed")
    report = verify_store(url)
    assert report.ok and 2 <= report.shards < 10

    def make(shard_id: int):
        return commit_shard(SampleStore(url), fake_shard(shard_id, 3))

    generate_to_quota(url, 30, 4, make)
    report = verify_store(url)
    assert report.ok and report.shards == 10 and report.samples == 30
    assert not [o for o in report.orphans if "uncommitted" in o] and report.in_progress == ()
    # Killed between its manifest and releasing its claim, the writer left that claim.
    repair_store(url)
    assert verify_store(url).orphans == ()
    ids = read_manifests(url)["sample_id"].to_pylist()
    assert len(ids) == len(set(ids)) == 30


def test_the_config_keeps_a_store_url_and_styles_get_their_own():
    from pipeline_lib.config import FactoryConfig

    config = FactoryConfig.model_validate(
        {"store": {"path": "s3://bucket/stores/night.zarr"}, "generation": {"styles": {"snow": {}}}}
    )
    assert config.store.path == "s3://bucket/stores/night.zarr"
    assert config.for_style("snow").store.path == "s3://bucket/stores/night-snow.zarr"
    local = FactoryConfig.model_validate({"store": {"path": "stores/night.zarr"}})
    assert isinstance(local.store.path, Path) and local.store.path.is_absolute()


def test_repair_removes_a_dead_writers_leftovers_and_leaves_a_live_one_alone(url, monkeypatch):
    # A lease no busy machine outlasts: the live writer's claim stays live throughout.
    monkeypatch.setattr(leases, "LEASE_S", 60.0)
    store = make_store(url, shards=(0,))
    stage_shard(store, fake_shard(1, 3))
    report = verify_store(url)
    assert report.in_progress and report.orphans == ()
    assert repair_store(url) == [] and "images/c/1/0/0/0" in objects(url)

    # As if its writer had died a minute ago: this process stops renewing and forgets it.
    leases._held.pop((os.getpid(), url, 1)).stop.set()
    put_claim(url, 1, time.time() - 60)
    assert len(verify_store(url).orphans) == 3  # the claim and both arrays' shard objects
    assert len(repair_store(url)) == 3
    assert [k for k in objects(url) if "/1/" in k or k.startswith("claims/")] == []
    report = verify_store(url)
    assert report.ok and report.shards == 1 and report.orphans == ()


@pytest.mark.slow  # two `lfactory generate` subprocesses
def test_two_generate_runs_on_one_object_store_one_killed_commit_every_shard_once(
    url, tmp_path, monkeypatch
):
    # The local test's writers (the real `lfactory generate` on stub models), on a URL.
    from test_concurrent_writers import SHARD_SIZE, SHARDS, WRITERS, start_writer, stub_config_file

    from pipeline_lib.config import load_config
    from pipeline_lib.generate.seeds import sample_id

    monkeypatch.setenv("LFACTORY_CLAIM_LEASE_S", str(LEASE_S))
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    config = stub_config_file(tmp_path)
    writers = [
        start_writer(tmp_path, "survivor", config, "--store", url),
        start_writer(tmp_path, "victim", config, "--store", url, "--die-at-commit", "2"),
    ]
    deadline = time.monotonic() + 300
    while not all((tmp_path / f"{n}.ready").exists() for n in WRITERS):
        for name, writer in zip(WRITERS, writers, strict=True):
            assert writer.poll() is None, (tmp_path / f"{name}.err").read_text()[-3000:]
        assert time.monotonic() < deadline, "the writers never got ready"
        time.sleep(0.05)
    (tmp_path / "go").touch()
    survivor, victim = writers
    assert victim.wait(timeout=300) == -signal.SIGKILL, (tmp_path / "victim.err").read_text()
    assert survivor.wait(timeout=300) == 0, (tmp_path / "survivor.err").read_text()[-3000:]

    lines = {n: (tmp_path / f"{n}.log").read_text().splitlines() for n in WRITERS}
    assert len(lines["victim"]) == 2 and lines["victim"][1].startswith("dying ")
    commits = [int(k) for k in lines["survivor"] + lines["victim"][:1]]
    assert sorted(commits) == list(range(SHARDS)), "every shard committed exactly once"
    report = verify_store(url)
    assert report.ok and report.orphans == () and report.in_progress == ()
    ids = read_manifests(url)["sample_id"].to_pylist()
    seed = load_config(config).generation.seed
    expected = {sample_id("stub", seed, k, a) for k in range(SHARDS) for a in range(SHARD_SIZE)}
    assert len(ids) == len(set(ids)) and set(ids) == expected, "no sample lost or duplicated"
