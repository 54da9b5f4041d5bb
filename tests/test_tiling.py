"""``lfactory data tile``: crops split by whole source tile, recorded, no-data dropped."""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from cli_calls import call_main

from pipeline_lib.data.classes import PALETTE
from pipeline_lib.data.loveda import check_dataset, list_tiles, read_image, read_mask, write_tile
from pipeline_lib.data.tiling import CROPS_FILE, TILING_FILE, tile_dataset
from pipeline_lib.errors import DataError

SIDE = 64
BARREN = 5
REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "loveda-real"


def make_source(root: Path, tiles: int = 6, barren_in: tuple[int, ...] = (1, 4)) -> Path:
    """Train/Rural tiles 0..tiles-1 of blocky classes 1, 2, 3, 4, 6, 7 (barren, value 5, only
    in the tiles ``barren_in``); images are the class colour plus noise."""
    rng = np.random.default_rng(7)
    common = np.array([1, 2, 3, 4, 6, 7])
    for i in range(tiles):
        blocks = rng.choice(common, (4, 4))
        if i in barren_in:
            blocks[0, 0] = BARREN
        mask = np.kron(blocks, np.ones((SIDE // 4, SIDE // 4), np.int64)).astype(np.uint8)
        noise = rng.integers(-20, 21, (SIDE, SIDE, 3))
        image = np.clip(PALETTE[mask].astype(np.int64) + noise, 0, 255).astype(np.uint8)
        write_tile(root, "Train", "Rural", str(i), image, mask)
    return root


def crop_rows(out: Path) -> list[dict[str, str]]:
    with open(out / CROPS_FILE, newline="") as f:
        return list(csv.DictReader(f))


def test_no_source_tile_has_crops_on_both_sides(tmp_path: Path):
    source = make_source(tmp_path / "src")
    summary = tile_dataset(source, tmp_path / "out", 32, val_tiles=2, seed=3)

    rows = crop_rows(tmp_path / "out")
    splits_of = defaultdict(set)
    for row in rows:
        splits_of[row["source_id"]].add(row["split"])
    assert all(len(splits) == 1 for splits in splits_of.values())
    assert sum(splits == {"Val"} for splits in splits_of.values()) == 2
    assert summary.crops == {"Train": 16, "Val": 8}  # 4 crops of 32 px per 64 px tile
    report = check_dataset(tmp_path / "out")
    assert report.tiles == {("Train", "Rural"): 16, ("Val", "Rural"): 8}
    assert {t.tile_id for t in list_tiles(tmp_path / "out")} == {r["crop_id"] for r in rows}


@pytest.mark.parametrize("seed", range(4))
def test_the_val_draw_keeps_a_class_of_two_tiles_on_both_sides(tmp_path: Path, seed: int):
    source = make_source(tmp_path / "src", barren_in=(1, 4))
    summary = tile_dataset(source, tmp_path / "out", 32, val_tiles=2, seed=seed)

    assert summary.missing == {"Train": (), "Val": ()}
    barren_tiles = {"Train/Rural/1", "Train/Rural/4"}
    assert len(barren_tiles & set(summary.tiles["Val"])) == 1
    again = tile_dataset(source, tmp_path / "again", 32, val_tiles=2, seed=seed)
    assert again.tiles == summary.tiles  # the seed decides the draw
    record = json.loads((tmp_path / "out" / TILING_FILE).read_text())
    assert record["seed"] == seed and record["tiles"]["Val"] == list(summary.tiles["Val"])


def test_each_crop_is_its_source_tile_at_the_recorded_offset_and_scale(tmp_path: Path):
    source = make_source(tmp_path / "src", tiles=3)
    tile_dataset(source, tmp_path / "out", 16, val_ids=["2"], resize=32)

    rows = crop_rows(tmp_path / "out")
    assert len(rows) == 3 * 4 and {r["scale"] for r in rows} == {"0.5"}
    for row in rows:
        src_mask = read_mask(source / "Train" / "Rural" / "masks_png" / f"{row['source_id']}.png")
        y0, x0 = int(row["y"]) * 2, int(row["x"]) * 2  # source pixels: offset / scale
        base = out_path(tmp_path / "out", row)
        crop = read_mask(base / "masks_png" / f"{row['crop_id']}.png")
        # Blocks of 16 source px become blocks of 8: nearest keeps every label exact.
        np.testing.assert_array_equal(crop, src_mask[y0 : y0 + 32 : 2, x0 : x0 + 32 : 2])
        assert read_image(base / "images_png" / f"{row['crop_id']}.png").shape == (16, 16, 3)
    assert {r["source_id"] for r in rows if r["split"] == "Val"} == {"2"}


def out_path(out: Path, row: dict[str, str]) -> Path:
    return out / row["split"] / row["scene"]


def test_crops_that_are_mostly_no_data_are_dropped(tmp_path: Path):
    source = make_source(tmp_path / "src", tiles=3)
    mask_path = source / "Train" / "Rural" / "masks_png" / "0.png"
    mask = read_mask(mask_path)
    mask[:40] = 0  # the top crops all no-data, the bottom ones 8 rows of 32 (a quarter)
    write_tile(
        source,
        "Train",
        "Rural",
        "0",
        read_image(mask_path.parent.parent / "images_png" / "0.png"),
        mask,
    )

    summary = tile_dataset(source, tmp_path / "out", 32, val_tiles=1, seed=0)
    kept = [r for r in crop_rows(tmp_path / "out") if r["source_id"] == "0"]
    assert summary.dropped == 2 and {r["y"] for r in kept} == {"32"}
    assert {float(r["no_data_fraction"]) for r in kept} == {0.25}
    strict = tile_dataset(source, tmp_path / "strict", 32, val_tiles=1, max_no_data=0.2)
    assert strict.dropped == 4  # the quarter no-data crops go too
    assert "Train/Rural/0" not in strict.tiles["Train"] + strict.tiles["Val"]


def test_val_tiles_all_makes_an_evaluation_only_set(tmp_path: Path):
    source = make_source(tmp_path / "src", tiles=3)
    summary = tile_dataset(source, tmp_path / "out", 32, val_tiles="all")

    assert summary.crops == {"Val": 12} and len(summary.tiles["Val"]) == 3
    assert not (tmp_path / "out" / "Train").exists()
    assert {r["split"] for r in crop_rows(tmp_path / "out")} == {"Val"}


def test_a_failed_tiling_leaves_no_partial_output(tmp_path: Path):
    source = make_source(tmp_path / "src", tiles=3)
    image = source / "Train" / "Rural" / "images_png" / "2.png"
    image.write_bytes(image.read_bytes()[:100])  # truncated: read only when cutting

    with pytest.raises(DataError, match="2.png: unreadable or truncated"):
        tile_dataset(source, tmp_path / "out", 32, val_tiles=1)
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["src"]


def test_cli_tile_prints_the_split_and_says_how_it_chooses(tmp_path, monkeypatch, capsys):
    source = make_source(tmp_path / "src")
    result = call_main(
        monkeypatch,
        capsys,
        "data",
        "tile",
        source,
        tmp_path / "out",
        "--size",
        "32",
        "--val-ids",
        "0, Rural/5",
    )
    assert result.code == 0, result.err
    assert "Val: 8 crops from 2 tiles" in result.out
    assert "Val tiles: Train/Rural/0, Train/Rural/5" in result.out
    help_text = call_main(monkeypatch, capsys, "data", "tile", "--help").out
    assert "fewest classes missing" in help_text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--size", "32", "--val-tiles", "2"], "data set folder does not exist"),
        (["--size", "128", "--val-tiles", "2"], "crop size 128 px is larger than tile"),
        (["--size", "32", "--val-tiles", "6"], "val tiles 6 leaves no Train tile"),
        (["--size", "32", "--val-tiles", "some"], "--val-tiles 'some'"),
        (["--size", "32"], "give exactly one of val tiles"),
        (["--size", "32", "--val-ids", "9"], "val id '9' names no tile"),
        (["--size", "32", "--val-tiles", "2", "--resize", "128"], "resize 128 px is larger"),
    ],
)
def test_bad_input_exits_2_naming_the_value(tmp_path, monkeypatch, capsys, args, message):
    source = make_source(tmp_path / "src")
    root = tmp_path / "absent" if "does not exist" in message else source
    result = call_main(monkeypatch, capsys, "data", "tile", root, tmp_path / "out", *args)
    assert result.code == 2 and message in result.err, result.err
    assert "Traceback" not in result.err and not (tmp_path / "out").exists()


@pytest.mark.skipif(not REAL.is_dir(), reason=f"genuine LoveDA tiles not found at {REAL}")
def test_genuine_tiles_split_by_tile_with_every_class_on_both_sides(tmp_path: Path):
    summary = tile_dataset(REAL, tmp_path / "real", 128, val_tiles=6, seed=0, resize=512)

    assert len(summary.tiles["Train"]) == 16 and len(summary.tiles["Val"]) == 6
    assert summary.missing == {"Train": (), "Val": ()}
    rows = crop_rows(tmp_path / "real")
    assert len({(r["source_id"], r["split"]) for r in rows}) == 22  # one split per tile
    # Tile 18's no-data band (rows 0..269 of 1024, so 0..134 at 512 px) drops its top row.
    tile_18 = [r for r in rows if r["source_id"] == "18"]
    assert summary.dropped == 4 and len(tile_18) == 12 and "0" not in {r["y"] for r in tile_18}


def test_a_non_empty_output_folder_is_refused_and_kept(tmp_path: Path):
    source = make_source(tmp_path / "src", tiles=2)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(DataError, match="already exists and is not empty"):
        tile_dataset(source, tmp_path / "out", 32, val_tiles=1)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["keep.txt"]
