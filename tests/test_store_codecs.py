"""The store's codecs: lossless for images and labels, readable by plain zarr; the read path."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import imagecodecs.numcodecs
import numpy as np
import pytest
import zarr
from store_fakes import fake_shard

from pipeline_lib.data.loveda import read_image, read_mask
from pipeline_lib.data.synth import synth_tile, tile_rng
from pipeline_lib.errors import ConfigError, IntegrityError
from pipeline_lib.store import SampleStore, ShardData, commit_shard, create_or_open_store
from pipeline_lib.store.codecs import DEFAULT_IMAGE_CODEC, IMAGE_CODECS
from pipeline_lib.store.shard_reader import EMPTY_CHUNK

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "loveda-real" / "Train" / "Rural"
SIZE = 64


def landscapes(n: int) -> tuple[np.ndarray, np.ndarray]:
    pairs = [
        synth_tile(tile_rng(0, "Train", s, i), SIZE, s)
        for i, s in enumerate(["Urban", "Rural"] * (n // 2))
    ]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def real_crops(n: int) -> tuple[np.ndarray, np.ndarray]:
    if not (REAL / "images_png" / "18.png").is_file():
        pytest.skip(f"{REAL}: the genuine LoveDA tiles are absent (../shared not laid out)")
    image, label = (
        read_image(REAL / "images_png" / "18.png"),
        read_mask(REAL / "masks_png" / "18.png"),
    )
    # Tile 18 has a no-data band (0): crops along the diagonal take it and real fields.
    steps = range(0, n * 100, 100)
    return (
        np.stack([image[y : y + SIZE, y : y + SIZE] for y in steps]),
        np.stack([label[y : y + SIZE, y : y + SIZE] for y in steps]),
    )


def commit(path: Path, images: np.ndarray, labels: np.ndarray, **kwargs) -> SampleStore:
    store = create_or_open_store(path, shard_size=len(images), height=SIZE, width=SIZE, **kwargs)
    rows = tuple({"sample_id": f"s{i}"} for i in range(len(images)))
    commit_shard(store, ShardData(0, images, labels, rows))
    return store


@pytest.mark.parametrize("kind", ["landscapes", "real"])
def test_default_codecs_give_images_and_labels_back_exactly(tmp_path, kind):
    images, labels = landscapes(4) if kind == "landscapes" else real_crops(4)
    store = commit(tmp_path / "s.zarr", images, labels)
    got_images, got_labels = store.read_rows(range(4))
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, labels)
    meta = json.loads((store.path / "images" / "zarr.json").read_text())
    inner = [c["name"] for c in meta["codecs"][0]["configuration"]["codecs"]]
    assert inner == [f"numcodecs.imagecodecs_{DEFAULT_IMAGE_CODEC}", "crc32c"]


@pytest.mark.parametrize("codec", IMAGE_CODECS)
def test_every_image_codec_is_lossless(tmp_path, codec):
    images, labels = landscapes(2)
    store = commit(tmp_path / "s.zarr", images, labels, image_codec=codec)
    np.testing.assert_array_equal(store.read_rows([0, 1])[0], images)


def test_htj2k_which_races_across_threads_is_called_by_one_thread_at_a_time(tmp_path, monkeypatch):
    # OpenJPH now and then wrote a wrong codestream when several threads of a fresh process
    # encoded at once (a CI run failed so); the store must never let its calls overlap.
    inside, overlaps = [0], []
    for name in ("encode", "decode"):
        original = getattr(imagecodecs.numcodecs.Htj2k, name)

        def tracked(self, buf, *args, _original=original, **kwargs):
            inside[0] += 1
            overlaps.append(inside[0])
            time.sleep(0.01)  # wide enough for a second thread to enter, were it allowed
            try:
                return _original(self, buf, *args, **kwargs)
            finally:
                inside[0] -= 1

        monkeypatch.setattr(imagecodecs.numcodecs.Htj2k, name, tracked)
    images, labels = landscapes(4)
    store = commit(tmp_path / "s.zarr", images, labels, image_codec="htj2k")
    np.testing.assert_array_equal(store.read_rows(range(4))[0], images)
    np.testing.assert_array_equal(zarr.open_group(store.path, mode="r")["images"][:4], images)
    assert len(overlaps) >= 3 * 8 and max(overlaps) == 1  # 8 chunks written, read thrice


def test_labels_use_only_codecs_of_the_zarr_v3_specification(tmp_path):
    store = commit(tmp_path / "s.zarr", *landscapes(2))
    meta = json.loads((store.path / "labels" / "zarr.json").read_text())
    sharding = meta["codecs"][0]
    assert sharding["name"] == "sharding_indexed"
    assert [c["name"] for c in sharding["configuration"]["codecs"]] == ["bytes", "zstd"]


def test_a_store_opens_with_plain_zarr_in_a_fresh_process(tmp_path):
    images, labels = landscapes(2)
    store = commit(tmp_path / "s.zarr", images, labels)
    np.save(tmp_path / "want.npy", images)
    # Nothing of the factory is imported: zarr finds the image codec by its entry point.
    script = (
        "import sys, numpy as np, zarr\n"
        "g = zarr.open_group(sys.argv[1], mode='r')\n"
        "np.testing.assert_array_equal(g['images'][:2], np.load(sys.argv[2]))\n"
        "print(int(g['labels'][:2].max()))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(store.path), str(tmp_path / "want.npy")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) == int(labels.max())


def test_an_unknown_image_codec_is_refused_and_creates_no_store(tmp_path):
    with pytest.raises(ConfigError, match="unknown image codec 'gif'"):
        create_or_open_store(
            tmp_path / "s.zarr", shard_size=2, height=SIZE, width=SIZE, image_codec="gif"
        )
    assert not (tmp_path / "s.zarr" / "zarr.json").exists()


def test_a_flipped_byte_in_an_image_fails_the_read(tmp_path):
    store = commit(tmp_path / "s.zarr", *landscapes(2))
    shard_file = store.path / "images" / "c" / "0" / "0" / "0" / "0"
    data = bytearray(shard_file.read_bytes())
    data[100] ^= 0xFF
    shard_file.write_bytes(bytes(data))
    for rows in ([0], [0, 1]):  # one row and a batch
        with pytest.raises(IntegrityError, match="unreadable"):
            SampleStore(store.path).read_rows(rows)


def test_read_rows_gives_what_zarr_itself_reads(tmp_path):
    store = create_or_open_store(tmp_path / "s.zarr", shard_size=4, height=16, width=16)
    for k in (0, 2):
        commit_shard(store, fake_shard(k, 3))
    rows = [9, 0, 1, 2, 3, 8, 10, 11, 5]  # committed, padding, a never-written shard, unsorted
    images, labels = store.read_rows(rows)
    group = zarr.open_group(store.path, mode="r")
    for i, row in enumerate(rows):
        np.testing.assert_array_equal(images[i], group["images"][row])
        np.testing.assert_array_equal(labels[i], group["labels"][row])
    assert not images[4].any() and not images[8].any()  # rows never written read as 0
    np.testing.assert_array_equal(store.read_rows([10])[1][0], labels[6])


def test_an_open_reader_sees_rows_of_a_store_that_grew(tmp_path):
    path = tmp_path / "s.zarr"
    reader = create_or_open_store(path, shard_size=4, height=16, width=16)
    commit_shard(reader, fake_shard(0, 3))
    before = reader.arrays()[0]
    assert reader.arrays()[0] is before  # kept open between reads
    writer = SampleStore(path)  # another process's handle: grows the arrays past 4 shards
    shard = fake_shard(9, 2)
    commit_shard(writer, shard)
    images, labels = reader.read_rows([36, 37])
    np.testing.assert_array_equal(images, shard.images)
    np.testing.assert_array_equal(labels, shard.labels)
    assert reader.arrays()[0] is not before and reader.arrays()[0].shape[0] >= 40


@pytest.mark.parametrize("bands", [2, 1], ids=["two bands", "one chunk (earlier stores)"])
def test_images_in_bands_or_whole_read_back_exactly_through_the_direct_reader(
    tmp_path, monkeypatch, bands
):
    # Stores made before images were cut into bands hold one chunk per image: both read
    # through the shard reader, not zarr's slower path, and give the very same pixels.
    monkeypatch.setattr("pipeline_lib.store.store.IMAGE_BANDS", bands)
    store = create_or_open_store(tmp_path / "s.zarr", shard_size=4, height=16, width=16)
    shards = [fake_shard(k, 4) for k in (0, 1)]
    for shard in shards:
        commit_shard(store, shard)
    group = zarr.open_group(store.path, mode="r")
    assert group["images"].chunks == (1, 16 // bands, 16, 3)
    reader = SampleStore(store.path)
    assert None not in reader._open_for_reading()[3]
    expected = np.concatenate([s.images for s in shards])
    for row in (0, 5, 7):  # single rows: one sample's bands decoded side by side
        np.testing.assert_array_equal(reader.read_rows([row])[0][0], expected[row])
    images, labels = reader.read_rows(list(range(8))[::-1])  # many rows, decoded together
    np.testing.assert_array_equal(images, expected[::-1])
    np.testing.assert_array_equal(labels, np.concatenate([s.labels for s in shards])[::-1])


def test_an_image_of_odd_height_stays_one_chunk(tmp_path):
    store = create_or_open_store(tmp_path / "s.zarr", shard_size=2, height=15, width=16)
    image = np.arange(15 * 16 * 3, dtype=np.uint8).reshape(15, 16, 3)
    label = np.ones((15, 16), np.uint8)
    commit_shard(store, ShardData(0, image[None], label[None], ({"sample_id": "odd-0"},)))
    assert zarr.open_group(store.path, mode="r")["images"].chunks == (1, 15, 16, 3)
    np.testing.assert_array_equal(SampleStore(store.path).read_rows([0])[0][0], image)


@pytest.mark.parametrize("codec", IMAGE_CODECS)
def test_a_shard_the_store_encodes_itself_is_one_zarr_reads_and_writes_alike(tmp_path, codec):
    # The store assembles shard files itself (shard_encoder.py): zarr's own read path must
    # give every sample back, and zarr writing the same block must read back the same.
    images, labels = landscapes(4)
    images[1], labels[2] = 0, 0  # an all-fill chunk is left out of the file, as zarr does
    mine = create_or_open_store(
        tmp_path / "mine.zarr", shard_size=6, height=SIZE, width=SIZE, image_codec=codec
    )
    commit_shard(
        mine, ShardData(0, images, labels, tuple({"sample_id": f"s{i}"} for i in range(4)))
    )
    theirs = create_or_open_store(
        tmp_path / "theirs.zarr", shard_size=6, height=SIZE, width=SIZE, image_codec=codec
    )
    group = zarr.open_group(theirs.path, mode="r+")
    group["images"][:4], group["labels"][:4] = images, labels
    for store in (mine, theirs):
        got = zarr.open_group(store.path, mode="r")
        np.testing.assert_array_equal(got["images"][:6], np.concatenate([images, images[:2] * 0]))
        np.testing.assert_array_equal(got["labels"][:6], np.concatenate([labels, labels[:2] * 0]))
    index = SampleStore(mine.path)._open_for_reading()[3][0]._index
    shard_file = mine.path / "images" / "c" / "0" / "0" / "0" / "0"
    with open(shard_file, "rb") as handle:
        offsets = index(0, handle.fileno(), shard_file.stat())[..., 0]
    assert (offsets[[1, 4, 5]] == EMPTY_CHUNK).all() and (offsets[[0, 2, 3]] != EMPTY_CHUNK).all()


def test_an_array_whose_codecs_the_store_does_not_encode_itself_is_written_through_zarr(
    tmp_path, monkeypatch
):
    monkeypatch.setattr("pipeline_lib.store.shard_encoder._chunk_encoder", lambda codecs: None)
    images, labels = landscapes(2)
    store = commit(tmp_path / "s.zarr", images, labels)
    got = zarr.open_group(store.path, mode="r")
    np.testing.assert_array_equal(got["images"][:2], images)
    np.testing.assert_array_equal(got["labels"][:2], labels)
    np.testing.assert_array_equal(SampleStore(store.path).read_rows([0, 1])[0], images)
