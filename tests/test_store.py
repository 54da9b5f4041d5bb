"""The sample store: round trip, exactly-once commits under SIGKILL, verify, export, readers."""

from __future__ import annotations

import errno
import json
import pickle
import signal
import subprocess
import sys
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
import rasterio
import torch
import zarr
from child_processes import kill_when
from store_fakes import SIZE, fake_sample, fake_shard

from pipeline_lib.config import GeoConfig
from pipeline_lib.data.loveda import check_dataset, list_tiles, read_mask
from pipeline_lib.errors import DataError, IntegrityError, ShardNotFoundError, StoreError
from pipeline_lib.store import (
    MANIFEST_SCHEMA,
    SCHEMA_VERSION,
    SampleStore,
    StoreDataset,
    commit_shard,
    commit_staged_shard,
    committed_count,
    create_or_open_store,
    export_store,
    manifest_dataset,
    plan_shards,
    read_manifests,
    stage_shard,
    store_stats,
    verify_store,
)
from pipeline_lib.store.manifest import manifest_dir, manifest_path, read_shard_meta

CHILD = Path(__file__).with_name("store_writer_child.py")


def make_store(path: Path, shards=(0, 1), kept: int = 3, shard_size: int = 4) -> SampleStore:
    store = create_or_open_store(path, shard_size=shard_size, height=SIZE, width=SIZE)
    for k in shards:
        commit_shard(store, fake_shard(k, kept))
    return store


def run_child(store: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(CHILD), str(store), *args], capture_output=True, text=True, timeout=120
    )


def assert_all_expected(store_path: Path, shards: range, kept: int) -> None:
    """Every expected sample is committed exactly once with the expected bytes."""
    table = read_manifests(store_path)
    ids = table["sample_id"].to_pylist()
    assert len(ids) == len(set(ids)) == len(shards) * kept
    store = SampleStore(store_path)
    for row in table.to_pylist():
        image, label = fake_sample(0, row["shard_id"], row["attempt"])
        got_images, got_labels = store.read_rows([row["index"]])
        np.testing.assert_array_equal(got_images[0], image)
        np.testing.assert_array_equal(got_labels[0], label)


def test_committed_samples_read_back_with_their_manifest_rows(tmp_path):
    store = make_store(tmp_path / "s.zarr", shards=(0, 3))
    table = read_manifests(store.path)
    assert table.schema.equals(MANIFEST_SCHEMA, check_metadata=False)
    assert table["index"].to_pylist() == [0, 1, 2, 12, 13, 14]  # shard k owns rows [4k, 4k+4)
    assert set(table["schema_version"].to_pylist()) == {SCHEMA_VERSION}
    row = table.to_pylist()[4]
    image, label, read_row = store.read_sample(row["sample_id"])
    want_image, want_label = fake_sample(0, 3, row["attempt"])
    np.testing.assert_array_equal(image, want_image)
    np.testing.assert_array_equal(label, want_label)
    fractions = [read_row[f"frac_{n}"] for n in ("background", "building", "road", "water")]
    assert all(0 <= f <= 1 for f in fractions)
    assert committed_count(store.path) == 6
    assert plan_shards(store.path, quota=20, shard_size=4) == [1, 2, 4]
    with pytest.raises(ShardNotFoundError, match="nope"):
        store.read_sample("nope")


def test_arrays_grow_by_doubling_and_stay_whole(tmp_path):
    store = make_store(tmp_path / "s.zarr", shards=(0, 9))
    images, labels = store.arrays()
    assert images.shape[0] >= 40 and images.shape[0] % 4 == 0
    assert labels.shape == (images.shape[0], SIZE, SIZE)
    assert verify_store(store.path).ok


def test_committed_shard_is_never_rewritten(tmp_path):
    store = make_store(tmp_path / "s.zarr", shards=(0,))
    before = manifest_path(store.path, 0).read_bytes()
    result = commit_shard(store, fake_shard(0, 2, seed=5))
    assert result.already_committed and result.kept == 3
    assert manifest_path(store.path, 0).read_bytes() == before


def test_staged_shard_is_invisible_until_committed(tmp_path):
    store = make_store(tmp_path / "s.zarr", shards=())
    staged = stage_shard(store, fake_shard(2, 3))
    assert committed_count(store.path) == 0 and plan_shards(store.path, 12, 4) == [0, 1, 2]
    assert pickle.loads(pickle.dumps(staged)) == staged  # crosses a task boundary
    result = commit_staged_shard(store, staged)
    assert (result.kept, result.already_committed) == (3, False)
    assert commit_staged_shard(store, staged).already_committed
    with pytest.raises(StoreError, match="already committed"):
        stage_shard(store, fake_shard(2, 3))


def test_commit_refuses_staged_bytes_that_changed(tmp_path):
    store = make_store(tmp_path / "s.zarr", shards=())
    staged = stage_shard(store, fake_shard(0, 3))
    images, _ = store.arrays(mode="r+")
    images[1] = 7  # e.g. another writer raced on the same shard
    with pytest.raises(IntegrityError, match=staged.rows[1]["sample_id"]):
        commit_staged_shard(store, staged)
    assert committed_count(store.path) == 0


def test_store_geometry_mismatch_and_bad_shards_are_errors(tmp_path):
    store = make_store(tmp_path / "s.zarr", shards=())
    with pytest.raises(StoreError, match="shard_size"):
        create_or_open_store(store.path, shard_size=8, height=SIZE, width=SIZE)
    with pytest.raises(StoreError, match="exceed"):
        commit_shard(store, fake_shard(0, 5))
    bad = fake_shard(1, 2)
    bad.labels[0, 0, 0] = 9
    with pytest.raises(DataError, match="value 9"):
        commit_shard(store, bad)
    with pytest.raises(StoreError, match="no sample store"):
        SampleStore(tmp_path / "missing.zarr")


def test_killed_run_leaves_no_visible_partial_shard(tmp_path):
    path = tmp_path / "s.zarr"
    died = run_child(path, "--samples", "16", "--die-before-commit", "2")
    assert died.returncode == -signal.SIGKILL, died.stderr
    # Shard 2's arrays landed but its manifest did not: invisible, reported as an orphan.
    assert (path / "images" / "c" / "2").is_dir()
    report = verify_store(path)
    assert report.ok and report.shards == 2 and report.samples == 6
    assert any("uncommitted shard 2" in o for o in report.orphans)
    assert plan_shards(path, 16, 4) == [2, 3]

    again = run_child(path, "--samples", "16")
    assert again.returncode == 0, again.stderr
    report = verify_store(path)
    assert report.ok and report.orphans == () and report.samples == 12
    assert_all_expected(path, range(4), 3)


def test_sigkill_at_any_moment_then_rerun_is_exactly_once(tmp_path):
    path = tmp_path / "s.zarr"
    child = subprocess.Popen(
        [sys.executable, str(CHILD), str(path), "--samples", "160"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    kill_when(child, manifest_path(path, 1).exists, 60, "child never committed")
    report = verify_store(path)
    assert report.ok and 2 <= report.shards < 40
    done = run_child(path, "--samples", "160")
    assert done.returncode == 0, done.stderr
    report = verify_store(path)
    assert report.ok and report.shards == 40 and report.samples == 120
    assert not [o for o in report.orphans if "uncommitted" in o]
    ids = read_manifests(path)["sample_id"].to_pylist()
    assert len(ids) == len(set(ids)) == 120


def test_concurrent_writers_of_different_shards_lose_nothing(tmp_path):
    path = tmp_path / "s.zarr"
    make_store(path, shards=())
    even = [str(k) for k in range(0, 24, 2)]
    odd = [str(k) for k in range(1, 24, 2)]
    procs = [
        subprocess.Popen(
            [sys.executable, str(CHILD), str(path), "--samples", "96", "--only", *ids],
            stderr=subprocess.PIPE,
        )
        for ids in (even, odd)
    ]
    for proc in procs:
        assert proc.wait(timeout=120) == 0, proc.stderr.read()
    report = verify_store(path)
    assert report.ok and report.shards == 24
    assert_all_expected(path, range(24), 3)


def test_verify_detects_a_flipped_byte(tmp_path):
    store = make_store(tmp_path / "s.zarr", shards=(0,))
    shard_file = store.path / "labels" / "c" / "0" / "0" / "0"
    data = bytearray(shard_file.read_bytes())
    data[40] ^= 0xFF
    shard_file.write_bytes(bytes(data))
    report = verify_store(store.path)
    assert not report.ok
    assert any("unreadable" in p or "sha256" in p for p in report.problems)
    with pytest.raises(IntegrityError):
        store.read_sample(read_manifests(store.path)["sample_id"][0].as_py())


def test_verify_catches_wrong_bytes_even_without_codec_error(tmp_path):
    store = make_store(tmp_path / "s.zarr", shards=(0,))
    images, _ = store.arrays(mode="r+")
    images[1] = 0  # valid zstd, wrong pixels: only the manifest sha256 can tell
    report = verify_store(store.path)
    assert [p for p in report.problems if "image bytes differ" in p and "row 1" in p]
    sample = read_manifests(store.path)["sample_id"][1].as_py()
    with pytest.raises(IntegrityError, match=sample):
        store.read_sample(sample)
    store.read_sample(sample, verify=False)


def test_verify_flags_manifests_pointing_beyond_the_arrays(tmp_path):
    store = make_store(tmp_path / "s.zarr", shards=(0, 3))
    for array in store.arrays(mode="r+"):
        array.resize((8, *array.shape[1:]))  # as if a resize had been lost
    report = verify_store(store.path)
    assert len([p for p in report.problems if "beyond the arrays" in p]) == 3


def test_verify_lists_partial_files_as_orphans(tmp_path):
    store = make_store(tmp_path / "s.zarr", shards=(0,))
    (store.path / "manifests" / ".shard-00001.parquet.123.partial").write_bytes(b"x")
    report = verify_store(store.path)
    assert report.ok and any(".partial" in o for o in report.orphans)
    assert committed_count(store.path) == 3


def test_manifests_read_with_pyarrow_and_duckdb(tmp_path):
    store = make_store(tmp_path / "s.zarr", shards=(0, 1, 2))
    dataset = pads.dataset(str(store.path / "manifests"), format="parquet")
    assert dataset.to_table().num_rows == 9
    con = duckdb.connect()
    rows = con.execute(
        "select shard_id, count(*) as n, avg(frac_building) from "
        f"read_parquet('{store.path}/manifests/*.parquet', union_by_name=true) "
        "group by shard_id order by shard_id"
    ).fetchall()
    assert [(r[0], r[1]) for r in rows] == [(0, 3), (1, 3), (2, 3)]
    meta = read_shard_meta(store.path, 1)
    assert meta["rejected"] == {"off_palette": 1} and meta["attempts"] == 4
    schema = pq.read_schema(manifest_path(store.path, 0))
    assert schema.metadata[b"schema_version"] == str(SCHEMA_VERSION).encode()


def test_manifest_of_unknown_schema_version_is_refused(tmp_path):
    store = make_store(tmp_path / "s.zarr", shards=(0,))
    path = manifest_path(store.path, 0)
    table = pq.read_table(path)
    pq.write_table(table.replace_schema_metadata({b"schema_version": b"99"}), path)
    with pytest.raises(StoreError, match="schema_version 99"):
        read_manifests(store.path)


def write_v1_manifest(store: Path, shard_id: int) -> None:
    """Rewrite a shard's manifest as schema version 1 wrote it: no dup_distance and
    agreement_miou columns, version 1 in the schema metadata and in every row."""
    path = manifest_path(store, shard_id)
    table = pq.read_table(path)
    v1 = pa.schema(
        [f for f in MANIFEST_SCHEMA if f.name not in ("dup_distance", "agreement_miou")],
        metadata={**table.schema.metadata, b"schema_version": b"1"},
    )
    table = table.set_column(0, "schema_version", pa.array([1] * table.num_rows, pa.int16()))
    pq.write_table(table.select(v1.names).cast(v1), path)


def test_a_store_written_with_v1_manifests_still_verifies_and_reads(tmp_path):
    store = make_store(tmp_path / "s.zarr", shards=(0, 1))
    write_v1_manifest(store.path, 0)
    write_v1_manifest(store.path, 1)
    assert "dup_distance" not in pq.read_schema(manifest_path(store.path, 0)).names
    commit_shard(store, fake_shard(2, 3))  # the old store keeps growing with version 2 rows

    report = verify_store(store.path)
    assert report.ok and (report.shards, report.samples) == (3, 9)
    table = read_manifests(store.path)
    assert table.schema.names == MANIFEST_SCHEMA.names
    assert table["schema_version"].to_pylist() == [1] * 6 + [SCHEMA_VERSION] * 3
    assert table["dup_distance"].null_count == table["agreement_miou"].null_count == 9
    dataset = manifest_dataset(store.path).to_table()
    assert dataset.num_rows == 9 and dataset["dup_distance"].null_count == 9
    _, label, row = store.read_sample(table["sample_id"][0].as_py())
    assert row["dup_distance"] is None and label.shape == (SIZE, SIZE)
    stats = store_stats(store.path)
    assert (stats.samples, stats.shards) == (9, 3)
    assert export_store(store.path, tmp_path / "out", "mmseg") == {"train": 9}


def test_manifest_of_version_0_or_a_future_one_is_refused(tmp_path):
    store = make_store(tmp_path / "s.zarr", shards=(0,))
    path = manifest_path(store.path, 0)
    table = pq.read_table(path)
    for version in (b"0", str(SCHEMA_VERSION + 1).encode()):
        pq.write_table(table.replace_schema_metadata({b"schema_version": version}), path)
        with pytest.raises(StoreError, match=f"schema_version {version.decode()}, this code "):
            read_manifests(store.path)


def test_stats_count_samples_rejects_and_classes(tmp_path):
    store = make_store(tmp_path / "s.zarr", shards=(0, 1))
    stats = store_stats(store.path)
    assert (stats.samples, stats.shards, stats.attempts, stats.rejected) == (6, 2, 8, 2)
    assert stats.reject_rate == pytest.approx(0.25)
    assert sum(stats.class_fractions.values()) == pytest.approx(1.0, abs=1e-4)
    assert json.dumps(stats.reject_reasons) == '{"off_palette": 2}'


def test_exported_loveda_layout_passes_the_data_check(tmp_path):
    store = make_store(tmp_path / "s.zarr", shards=(0, 1))
    counts = export_store(store.path, tmp_path / "out", "loveda")
    report = check_dataset(tmp_path / "out")
    assert report.total_tiles == 6 and sum(counts.values()) == 6
    tiles = list_tiles(tmp_path / "out")
    assert {t.scene for t in tiles} == {"Urban", "Rural"}  # style urban/rural, rest -> Rural
    row = read_manifests(store.path).to_pylist()[0]
    tile = next(t for t in tiles if t.tile_id == str(row["index"]))
    np.testing.assert_array_equal(read_mask(tile.mask_path), store.read_rows([row["index"]])[1][0])
    with pytest.raises(DataError, match="not empty"):
        export_store(store.path, tmp_path / "out", "loveda")


def test_export_mmseg_and_geotiff_with_georeference(tmp_path):
    store = make_store(tmp_path / "s.zarr", shards=(0,))
    assert export_store(store.path, tmp_path / "mm", "mmseg") == {"train": 3}
    assert export_store(store.path, tmp_path / "two", "mmseg", limit=2) == {"train": 2}
    assert len(list((tmp_path / "mm" / "ann_dir" / "train").glob("*.png"))) == 3
    geo = GeoConfig(crs="EPSG:32650", origin_x=1000.0, origin_y=5000.0, pixel_size=0.5)
    export_store(store.path, tmp_path / "geo", "geotiff", geo=geo, columns=2)
    with rasterio.open(tmp_path / "geo" / "labels" / "2.tif") as src:
        assert src.crs.to_epsg() == 32650
        # Row 2 on a 2-wide grid: first column, second line of 16 px tiles at 0.5 m.
        assert (src.transform.c, src.transform.f) == (1000.0, 5000.0 - 16 * 0.5)
        np.testing.assert_array_equal(src.read(1), store.read_rows([2])[1][0])
    with pytest.raises(DataError, match="unknown export format"):
        export_store(store.path, tmp_path / "x", "png")
    assert not (tmp_path / "x").exists()


def test_dataset_works_in_dataloader_workers(tmp_path):
    store = make_store(tmp_path / "s.zarr", shards=(0, 1))
    dataset = StoreDataset(store.path)
    item = dataset[0]
    assert item["image"].shape == (3, SIZE, SIZE) and item["image"].dtype == torch.float32
    assert item["label"].dtype == torch.int64 and item["image"].max() <= 1
    # spawn: this test process may already run Prefect's background threads (the factory
    # test), and forking a threaded process is unsafe whatever the dataset does.
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=2, num_workers=2, shuffle=False, multiprocessing_context="spawn"
    )
    labels = torch.cat([batch["label"] for batch in loader])
    assert labels.shape == (6, SIZE, SIZE)
    expected = zarr.open_group(store.path, mode="r")["labels"][[0, 1, 2, 4, 5, 6]]
    np.testing.assert_array_equal(labels.numpy(), expected)


def test_top_up_plans_new_shards_when_rejections_left_the_store_short(tmp_path):
    path = tmp_path / "s.zarr"
    assert run_child(path, "--samples", "8").returncode == 0  # 2 shards keep 3 of 4 each
    assert plan_shards(path, 8, 4) == []
    assert plan_shards(path, 8, 4, top_up=True) == [2]
    assert plan_shards(path, 6, 4, top_up=True) == []


def test_a_store_with_missing_or_unreadable_attributes_is_a_store_error(tmp_path):
    make_store(tmp_path / "s")
    meta_path = tmp_path / "s" / "zarr.json"
    meta = json.loads(meta_path.read_text())
    del meta["attributes"]["height"]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(StoreError, match=r"zarr.json: store attribute\(s\) height missing"):
        SampleStore(tmp_path / "s")
    meta_path.write_text("{not json")
    with pytest.raises(StoreError, match="zarr.json: unreadable store metadata"):
        SampleStore(tmp_path / "s")


def test_a_commit_counts_only_after_its_bytes_and_names_are_fsynced(tmp_path, monkeypatch):
    import os

    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(src, dst):
        events.append(("rename", str(dst)))
        return real_replace(src, dst)

    store = make_store(tmp_path / "s.zarr", shards=())
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    commit_shard(store, fake_shard(1, 3))
    commit = events.index(("rename", str(manifest_path(store.path, 1))))
    before = {path for kind, path in events[:commit] if kind == "fsync"}
    for name in ("images", "labels"):
        data = [str(p) for p in (store.path / name / "c" / "1").rglob("*") if p.is_file()]
        assert data and set(data) <= before, f"{name} shard file not synced before the commit"
        assert str(store.path / name / "c" / "1") in before  # the new shard folder's name
        assert str(store.path / name / "c") in before
    assert ("fsync", str(manifest_dir(store.path))) in events[commit:], "the rename itself"


def _refusing_put(code: int, where: str):
    """zarr's file write, refusing with ``code`` (as a full or read-only disk would) for
    every path below ``where``."""
    import os

    import zarr.storage._local as local

    real = local._put

    def put(path, *args, **kwargs):
        if str(path).startswith(where):
            raise OSError(code, os.strerror(code), str(path))
        return real(path, *args, **kwargs)

    return put


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EACCES])
def test_a_refused_array_write_leaves_the_store_as_it_was(tmp_path, monkeypatch, code):
    import zarr.storage._local as local

    from pipeline_lib.errors import StoreWriteError

    store = make_store(tmp_path / "s.zarr", shards=(0,))
    monkeypatch.setattr(local, "_put", _refusing_put(code, str(store.path / "labels" / "c" / "1")))
    with pytest.raises(StoreWriteError, match="nothing was committed") as error:
        commit_shard(store, fake_shard(1, 3))
    assert "labels/c/1" in str(error.value) and "run again" in str(error.value)
    report = verify_store(store.path)
    assert report.ok and report.shards == 1 and report.orphans == ()
    monkeypatch.undo()
    commit_shard(store, fake_shard(1, 3))
    assert verify_store(store.path).ok and committed_count(store.path) == 6


def test_a_full_disk_at_the_manifest_commits_nothing_and_leaves_no_temp_file(tmp_path, monkeypatch):
    import errno

    import pipeline_lib.store.manifest as manifest
    from pipeline_lib.errors import StoreWriteError

    store = make_store(tmp_path / "s.zarr", shards=(0,))

    def full_disk(table, where, **kwargs):
        Path(where).write_bytes(b"PAR1 torn")
        raise OSError(errno.ENOSPC, "No space left on device", str(where))

    monkeypatch.setattr(manifest.pq, "write_table", full_disk)
    with pytest.raises(StoreWriteError, match="disk is full"):
        commit_shard(store, fake_shard(1, 3))
    monkeypatch.undo()
    assert committed_count(store.path) == 3
    assert not list(store.path.rglob("*.partial"))


def test_repair_after_sigkill_removes_leftovers_and_never_committed_data(
    tmp_path, monkeypatch, capsys
):
    from cli_calls import call_main

    path = tmp_path / "s.zarr"
    died = run_child(path, "--samples", "16", "--die-before-commit", "2")
    assert died.returncode == -signal.SIGKILL, died.stderr
    partial = path / "images" / "c" / "0" / "0" / "0" / "0.0123abcd.partial"
    partial.write_bytes(b"half a chunk")  # as zarr's own temp file of a killed write
    before = verify_store(path)
    assert {str(path / n / "c" / "2") for n in ("images", "labels")} <= {
        o.split(": ")[0] for o in before.orphans
    }
    assert any(str(partial) in o for o in before.orphans)
    assert any("claim on shard 2 of pid" in o and "which is gone" in o for o in before.orphans)

    result = call_main(monkeypatch, capsys, "store", "repair", path)
    assert result.code == 0 and "removed 4 leftover(s)" in result.out
    assert not (path / "claims" / "shard-00002.claim").exists()
    after = verify_store(path)
    assert after.ok and after.orphans == () and after.samples == 6
    assert_all_expected(path, range(2), 3)
    assert run_child(path, "--samples", "16").returncode == 0
    assert_all_expected(path, range(4), 3)


def test_the_verify_task_and_command_fail_alike_and_name_every_problem(
    tmp_path, monkeypatch, capsys
):
    from cli_calls import call_main
    from factory_configs import minimal_config
    from prefect.logging import disable_run_logger

    from pipeline_lib.config import config_from_dict
    from tasks.store import verify_store_task

    config = config_from_dict(minimal_config(tmp_path / "work"))
    store = make_store(config.store.path, shards=(0, 1, 2))
    images, _ = store.arrays(mode="r+")
    images[0:3] = 0
    images[4:7] = 0  # six damaged samples
    with disable_run_logger(), pytest.raises(IntegrityError) as task_error:
        verify_store_task.fn(config)
    result = call_main(monkeypatch, capsys, "store", "verify", store.path)
    assert result.code == 2
    for error in (str(task_error.value), result.err):
        assert "6 problem(s)" in error
        assert error.count("image bytes differ") == 6
