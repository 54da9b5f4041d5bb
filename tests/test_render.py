"""Rendering real label maps with the image model, and the quality-gap bench's folders."""

from __future__ import annotations

import csv
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from cli_calls import call_main
from factory_configs import generator_config
from fake_loveda import write_fake_loveda

from pipeline_lib.config import config_from_dict
from pipeline_lib.data.loveda import list_tiles, read_image, read_mask

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import quality_gap  # noqa: E402

RES = 32


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from pipeline_lib.models.build import init_models

    return init_models(tmp_path_factory.mktemp("models") / "sd", "tiny")


def make_config(tmp_path: Path, models: Path, root: Path):
    settings = generator_config(
        tmp_path / "work", models, resolution=RES, batch_size=3, shard_size=4
    )
    return config_from_dict({**settings, "data": {"root": str(root)}})


def test_rendered_tiles_keep_their_masks_and_names_and_get_drawn_images(
    tmp_path, models, one_torch_thread
):
    from pipeline_lib.generate.render import render_split

    root = write_fake_loveda(tmp_path / "real", tiles_per_scene=2, size=RES)
    cfg = make_config(tmp_path, models, root)
    out = tmp_path / "rendered"
    assert render_split(cfg, root, out, "Train", progress=False) == 4
    real = {(t.scene, t.tile_id): t for t in list_tiles(root, ["Train"])}
    drawn = list_tiles(out)
    assert {(t.split, t.scene, t.tile_id) for t in drawn} == {("Train", *k) for k in real}
    for tile in drawn:
        source = real[(tile.scene, tile.tile_id)]
        assert np.array_equal(read_mask(tile.mask_path), read_mask(source.mask_path))
        image = read_image(tile.image_path)
        assert image.shape == (RES, RES, 3) and image.dtype == np.uint8
        assert not np.array_equal(image, read_image(source.image_path))
    # The same config draws the same images: a render is reproducible.
    again = tmp_path / "again"
    render_split(cfg, root, again, "Train", progress=False)
    for tile in drawn:
        twin = again / tile.image_path.relative_to(out)
        assert np.array_equal(read_image(twin), read_image(tile.image_path))


def test_render_command_names_a_mask_of_another_size_and_writes_nothing(
    tmp_path, models, monkeypatch, capsys
):
    root = write_fake_loveda(tmp_path / "real", tiles_per_scene=1, size=RES * 2)
    config = tmp_path / "factory.yaml"
    config.write_text(yaml.safe_dump(make_config(tmp_path, models, root).model_dump(mode="json")))
    out = tmp_path / "rendered"
    result = call_main(monkeypatch, capsys, "render", config, root, out)
    assert result.code == 2
    assert re.search(r"masks_png/\d+\.png: 64x64 px.*--size 32", result.err), result.err
    assert not out.exists() and not list(tmp_path.glob(".rendered.*"))


@pytest.mark.slow
def test_quality_gap_rows_train_on_train_tiles_only(tmp_path, models, one_torch_thread):
    from pipeline_lib.generate import Generator, generate_and_commit_shard

    root = write_fake_loveda(tmp_path / "real", tiles_per_scene=1, size=RES * 2)
    cfg = make_config(tmp_path, models, root)
    generator = Generator(cfg)
    for shard in range(2):
        generate_and_commit_shard(cfg, generator, shard)
    work = tmp_path / "gap"
    sources = quality_gap.gap_sources(cfg, work, cfg.store.path, progress=False)
    assert list(sources) == list(quality_gap.ROWS) and sources["Ori."] == root
    with open(sources["Ori. crops"] / "crops.csv") as f:
        crops = list(csv.DictReader(f))
    # 2 Train tiles of 64 px -> 8 Train crops of 32; the Val tiles' crops stay on Val.
    assert {(c["split"], c["source_split"]) for c in crops} == {("Train", "Train"), ("Val", "Val")}
    for row in ("Ori. crops", "rendered", "Gen."):
        train = [t for t in list_tiles(sources[row], ["Train"]) if t.mask_path is not None]
        assert len(train) == 8, row
    # A second call reuses every folder it made.
    stamp = sources["rendered"].stat().st_mtime_ns
    assert quality_gap.gap_sources(cfg, work, cfg.store.path, progress=False) == sources
    assert sources["rendered"].stat().st_mtime_ns == stamp


def test_quality_gap_without_gen_needs_no_store_and_draws_nothing(tmp_path, models):
    root = write_fake_loveda(tmp_path / "real", tiles_per_scene=1, size=RES * 2)
    cfg = make_config(tmp_path, models, root)
    work = tmp_path / "gap"
    sources = quality_gap.gap_sources(cfg, work, None, progress=False, rows=("Ori.", "Ori. crops"))
    assert list(sources) == ["Ori.", "Ori. crops"]
    assert [p.name for p in work.iterdir()] == [f"crops-{RES}"]


def test_colour_spread_tells_a_class_that_changes_colour_from_one_that_does_not(tmp_path):
    from pipeline_lib.data.loveda import write_tile

    mask = np.ones((8, 8), np.uint8)  # background on the left, building on the right
    mask[:, 4:] = 2
    for i, grey in enumerate((40, 120, 200)):
        image = np.zeros((8, 8, 3), np.uint8)
        image[:, :4] = grey  # background changes colour from tile to tile
        image[:, 4:] = (90 + np.arange(4) * 10)[:, None]  # building: same texture, same mean
        write_tile(tmp_path, "Train", "Urban", str(i), image, mask)
    spread = quality_gap.colour_spread(tmp_path, min_pixels=8)
    assert spread["background"][0] > 60 and spread["background"][1] == 0
    assert spread["building"][0] == 0 and spread["building"][1] > 10
    assert set(spread) == {"background", "building"}


def test_images_drawn_in_windows_are_rendered_into_their_own_folder(tmp_path, models):
    """A render of the same labels in windows must not be mistaken for a whole-sample one."""
    cfg = make_config(tmp_path, models, tmp_path / "data")

    def digest(window, stride):
        gen = cfg.generation.model_copy(update={"window": window, "window_stride": stride})
        return quality_gap.image_settings_digest(cfg.model_copy(update={"generation": gen}))

    whole = quality_gap.image_settings_digest(cfg)
    assert len({whole, digest(16, 12), digest(16, 8)}) == 3
    assert digest(RES, None) == whole  # a window the size of the sample draws it whole
