"""Synthetic LoveDA: release layout, determinism per seed, a land-cover-like class mix."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline_lib.data import synth
from pipeline_lib.data.classes import class_fractions
from pipeline_lib.data.loveda import check_dataset, read_image, read_mask
from pipeline_lib.data.synth import make_synthetic_loveda, synth_tile, tile_rng
from pipeline_lib.errors import DataError

SIZE = 64


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.png"))}


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth") / "loveda"
    make_synthetic_loveda(root, tiles=4, size=SIZE, seed=7)
    return root


def test_writes_the_loveda_release_layout(synth_root: Path) -> None:
    for split in ("Train", "Val"):
        for scene in ("Urban", "Rural"):
            images = sorted((synth_root / split / scene / "images_png").glob("*.png"))
            masks = sorted((synth_root / split / scene / "masks_png").glob("*.png"))
            assert len(images) == 2
            assert [p.name for p in images] == [p.name for p in masks]
            assert all(p.stem.isdigit() for p in images)
            for image_path, mask_path in zip(images, masks, strict=True):
                assert read_image(image_path).shape == (SIZE, SIZE, 3)
                mask = read_mask(mask_path)
                assert mask.shape == (SIZE, SIZE)
                assert 1 <= mask.min() and mask.max() <= 7
    ids = [p.stem for p in synth_root.rglob("images_png/*.png")]
    assert len(ids) == len(set(ids)) == 8


def test_output_passes_the_data_check_and_records_its_seed(synth_root: Path) -> None:
    report = check_dataset(synth_root)
    assert report.total_tiles == 8
    assert report.no_data_fraction() == 0.0
    record = json.loads((synth_root / "synth.json").read_text())
    assert (record["seed"], record["size"], record["tiles"]) == (7, SIZE, 4)


def test_same_seed_gives_identical_bytes_and_another_seed_differs(
    synth_root: Path, tmp_path: Path
) -> None:
    make_synthetic_loveda(tmp_path / "same", tiles=4, size=SIZE, seed=7)
    make_synthetic_loveda(tmp_path / "other", tiles=4, size=SIZE, seed=8)
    reference = _files(synth_root)
    assert _files(tmp_path / "same") == reference
    other = _files(tmp_path / "other")
    assert other.keys() == reference.keys()
    assert all(other[name] != reference[name] for name in reference)


def test_a_tile_does_not_depend_on_how_many_tiles_are_made(tmp_path: Path) -> None:
    make_synthetic_loveda(tmp_path / "two", tiles=2, size=SIZE, seed=7)
    make_synthetic_loveda(tmp_path / "six", tiles=6, size=SIZE, seed=7)
    first = "Train/Rural/images_png/0.png"
    assert (tmp_path / "two" / first).read_bytes() == (tmp_path / "six" / first).read_bytes()


def _mix(scene: str, tiles: int = 6, size: int = 128) -> dict[str, float]:
    masks = [synth_tile(tile_rng(0, "Train", scene, i), size, scene)[1] for i in range(tiles)]
    return class_fractions(np.stack(masks))


def test_class_mix_looks_like_loveda_urban_and_rural() -> None:
    urban, rural = _mix("Urban"), _mix("Rural")
    assert urban["building"] > 2 * rural["building"]
    assert urban["road"] > rural["road"]
    assert rural["agriculture"] > 2 * urban["agriculture"]
    # Rural: agriculture dominant (~0.44 in the genuine tiles), barren rare.
    assert rural["agriculture"] == max(rural.values())
    assert 0.25 < rural["agriculture"] < 0.65
    assert rural["barren"] < 0.05
    assert all(share > 0 for share in rural.values())


def test_classes_are_not_separable_by_colour_alone() -> None:
    pixels, labels = [], []
    for i in range(4):
        image, mask = synth_tile(tile_rng(1, "Train", "Rural", i), 128, "Rural")
        pixels.append(image.reshape(-1, 3).astype(np.float32))
        labels.append(mask.ravel())
    x, y = np.concatenate(pixels), np.concatenate(labels)
    classes = np.unique(y)
    means = np.stack([x[y == c].mean(0) for c in classes])
    nearest = classes[((x[:, None, :] - means[None]) ** 2).sum(-1).argmin(1)]
    assert (nearest == y).mean() < 0.8


def test_synth_tile_is_a_pure_function_of_its_generator() -> None:
    a = synth_tile(tile_rng(3, "Val", "Urban", 5), SIZE, "Urban")
    b = synth_tile(tile_rng(3, "Val", "Urban", 5), SIZE, "Urban")
    assert a[0].dtype == np.uint8 and a[1].dtype == np.uint8
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


@pytest.mark.parametrize(
    ("tiles", "size", "words"), [(1, 64, "tiles must be at least 2"), (4, 16, "size must be")]
)
def test_bad_counts_and_sizes_are_data_errors(
    tmp_path: Path, tiles: int, size: int, words: str
) -> None:
    with pytest.raises(DataError, match=words):
        make_synthetic_loveda(tmp_path / "out", tiles=tiles, size=size, seed=0)
    assert not (tmp_path / "out").exists()


def test_a_failure_midway_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    written = []
    real_write = synth.write_tile

    def failing_write(*args: object, **kwargs: object) -> None:
        if len(written) == 3:
            raise OSError("disk full")
        written.append(args)
        real_write(*args, **kwargs)

    monkeypatch.setattr(synth, "write_tile", failing_write)
    with pytest.raises(OSError, match="disk full"):
        make_synthetic_loveda(tmp_path / "out", tiles=4, size=SIZE, seed=0)
    assert list(tmp_path.iterdir()) == []


def _run_cli(monkeypatch: pytest.MonkeyPatch, *args: str) -> int:
    from lfactory.cli import main

    monkeypatch.setattr(sys, "argv", ["lfactory", *args])
    with pytest.raises(SystemExit) as exited:
        main()
    return exited.value.code or 0


def test_cli_synth_writes_a_checked_data_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cli"
    code = _run_cli(monkeypatch, "data", "synth", str(out), "--tiles", "2", "--size", "32")
    assert code == 0
    assert f"wrote {out}: 4 tiles" in capsys.readouterr().out
    assert check_dataset(out).total_tiles == 4


@pytest.mark.parametrize(("option", "value"), [("--size", "31"), ("--tiles", "1")])
def test_cli_synth_rejects_bad_values_with_exit_2(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    option: str,
    value: str,
) -> None:
    out = tmp_path / "cli"
    assert _run_cli(monkeypatch, "data", "synth", str(out), option, value) == 2
    assert option in capsys.readouterr().err
    assert not out.exists()
