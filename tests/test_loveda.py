"""LoveDA I/O: the data check names every offending path; the mmseg export keeps masks."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from fake_loveda import BAD_KINDS, write_fake_loveda

from pipeline_lib.data.loveda import check_dataset, export_mmseg, list_tiles, read_mask
from pipeline_lib.errors import DataError

# What the message must say for each bad kind, beside the offending path.
EXPECTED_WORDS = {
    "missing folder": "missing folder",
    "image without mask": "image without mask",
    "mask without image": "mask without image",
    "size mismatch": "differs from its image",
    "single-band image": "1 band(s)",
    "RGBA image": "4 band(s)",
    "mask value 9": "[9]",
    "truncated PNG": "truncated",
    "garbage bytes": "unreadable",
    "empty split": "empty split",
}


@pytest.fixture
def fake_root(tmp_path: Path) -> Path:
    return write_fake_loveda(tmp_path / "loveda")


def test_check_passes_a_valid_tree_and_counts_tiles_and_pixels(fake_root: Path) -> None:
    report = check_dataset(fake_root)
    assert report.tiles == {(s, c): 2 for s in ("Train", "Val") for c in ("Urban", "Rural")}
    assert report.pixel_counts.sum() == 8 * 32 * 32
    assert sum(report.class_fractions().values()) == pytest.approx(1.0)


@pytest.mark.parametrize("kind", list(BAD_KINDS))
def test_check_names_the_offending_path_for_each_bad_kind(fake_root: Path, kind: str) -> None:
    bad_path = BAD_KINDS[kind](fake_root)
    with pytest.raises(DataError) as caught:
        check_dataset(fake_root)
    message = str(caught.value)
    assert str(bad_path) in message
    assert EXPECTED_WORDS[kind] in message
    assert any(str(bad_path) in problem for problem in caught.value.problems)


def test_check_rejects_a_missing_root(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match="does not exist") as caught:
        check_dataset(missing)
    assert str(missing) in str(caught.value)


def test_check_lists_every_problem_not_only_the_first(fake_root: Path) -> None:
    first = BAD_KINDS["mask value 9"](fake_root)
    second = BAD_KINDS["empty split"](fake_root)
    with pytest.raises(DataError) as caught:
        check_dataset(fake_root)
    assert len(caught.value.problems) == 2
    assert str(first) in str(caught.value) and str(second) in str(caught.value)


def _run_cli(monkeypatch: pytest.MonkeyPatch, *args: str) -> int:
    """Run the real entry point (``lfactory.cli.main``) and return its exit code."""
    from lfactory.cli import main

    monkeypatch.setattr(sys, "argv", ["lfactory", *args])
    with pytest.raises(SystemExit) as exited:
        main()
    return exited.value.code


def test_cli_check_exits_2_and_names_the_bad_file_on_stderr(
    fake_root: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    bad_path = BAD_KINDS["truncated PNG"](fake_root)
    assert _run_cli(monkeypatch, "data", "check", str(fake_root)) == 2
    err = capsys.readouterr().err
    assert str(bad_path) in err
    assert "Traceback" not in err


def test_cli_check_exits_0_on_a_valid_tree(
    fake_root: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run_cli(monkeypatch, "data", "check", str(fake_root)) in (0, None)
    assert "8 tiles" in capsys.readouterr().out


def test_export_mmseg_copies_every_tile_and_keeps_raw_mask_values(
    fake_root: Path, tmp_path: Path
) -> None:
    out = tmp_path / "mmseg"
    counts = export_mmseg(fake_root, out)
    assert counts == {"train": 4, "val": 4}
    for kind in ("img_dir", "ann_dir"):
        for split in ("train", "val"):
            assert len(list((out / kind / split).glob("*.png"))) == 4
    for tile in list_tiles(fake_root, ("Train", "Val")):
        exported = out / "ann_dir" / tile.split.lower() / f"{tile.scene.lower()}_{tile.tile_id}.png"
        np.testing.assert_array_equal(read_mask(exported), read_mask(tile.mask_path))


def test_export_mmseg_refuses_a_non_empty_target(fake_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "mmseg"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(DataError, match="not empty"):
        export_mmseg(fake_root, out)
    assert (out / "keep.txt").read_text() == "mine"


REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "loveda-real"


@pytest.mark.skipif(not REAL.is_dir(), reason=f"genuine LoveDA tiles not found at {REAL}")
def test_genuine_loveda_tiles_read_and_check():
    from pipeline_lib.data.loveda import read_image

    report = check_dataset(REAL)
    # As many tiles as the folder's checksum list names images.
    listed = (REAL / "SHA256SUMS").read_text().count("images_png/")
    assert listed >= 14 and report.tiles == {("Train", "Rural"): listed}
    # Tile 18's no-data band: 262,523 pixels of value 0 (the release's own counts).
    mask = read_mask(REAL / "Train" / "Rural" / "masks_png" / "18.png")
    assert int((mask == 0).sum()) == 262523 and mask.shape == (1024, 1024)
    assert read_image(REAL / "Train" / "Rural" / "images_png" / "18.png").shape == (1024, 1024, 3)
    assert 0.4 < report.class_fractions()["agriculture"] < 0.5
