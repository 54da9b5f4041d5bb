"""Mixing ratios: how many generated samples a ratio adds to Ori., which ones, and the sweep's
rows, best ratio and plot in the report (validation.mix_ratios)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from store_fakes import fake_shard

from pipeline_lib.config import FactoryConfig, ValidationConfig, config_from_dict
from pipeline_lib.data.classes import CLASS_NAMES
from pipeline_lib.data.loveda import list_tiles, split_stats, write_tile
from pipeline_lib.errors import ConfigError
from pipeline_lib.report.results import MixSweep, ValidationResult
from pipeline_lib.store import commit_shard, create_or_open_store
from pipeline_lib.store.store import SampleStore
from pipeline_lib.validate.experiment import assemble_report
from pipeline_lib.validate.mixing import mix_samples
from pipeline_lib.validate.sources import train_sources

ORI_TILE, NO_DATA_ROWS, GEN_SIZE = 32, 4, 16
# Two Ori. Train tiles of 32 x 32 with a 4-row no-data band: 2 x 28 x 32 = 1,792 labelled
# pixels, 7 generated samples of 16 x 16 at ratio 1.
ORI_PIXELS = 2 * (ORI_TILE - NO_DATA_ROWS) * ORI_TILE


def write_ori(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for split in ("Train", "Val"):
        for i in range(2):
            mask = rng.integers(1, 8, (ORI_TILE, ORI_TILE), dtype=np.uint8)
            mask[:NO_DATA_ROWS] = 0
            image = rng.integers(0, 256, (ORI_TILE, ORI_TILE, 3), dtype=np.uint8)
            write_tile(root, split, ("Urban", "Rural")[i], str(i), image, mask)
    return root


def sweep_config(tmp_path: Path, ratios: list[float], shards: int = 3) -> FactoryConfig:
    """Ori. of 1,792 labelled pixels and a store of ``shards`` x 4 samples of 16 px."""
    store = tmp_path / "store.zarr"
    writer = create_or_open_store(store, shard_size=4, height=GEN_SIZE, width=GEN_SIZE)
    for k in range(shards):
        commit_shard(writer, fake_shard(k, 4, size=GEN_SIZE))
    return FactoryConfig(
        work_dir=tmp_path / "w",
        data={"root": write_ori(tmp_path / "ori")},
        generation={"resolution": GEN_SIZE},
        store={"path": store},
        validation={"mix_ratios": ratios},
    )


def test_a_ratio_adds_its_share_of_ori_pixels_in_generated_samples_rounded_up():
    assert mix_samples(1, ORI_PIXELS, GEN_SIZE) == 7  # 1,792 / 256
    assert mix_samples(0.5, ORI_PIXELS, GEN_SIZE) == 4  # 3.5 -> 4
    assert mix_samples(2, ORI_PIXELS, GEN_SIZE) == 14
    assert mix_samples(0.25, 1024 * 1024, 512) == 1  # one 512 px sample per 1024 px tile
    # Exact: 0.1 x 30 samples' pixels is 3 samples, not the float 3.0000000000000004 -> 4.
    assert mix_samples(0.1, 30 * 64 * 64, 64) == 3


def test_ratio_one_is_the_quality_runs_gen_size(tmp_path: Path):
    from pipeline_lib.quality import matching_quota

    cfg = sweep_config(tmp_path, [1])
    assert split_stats(cfg.data.root, "Train").pixels == ORI_PIXELS
    assert matching_quota(cfg).quota.samples == mix_samples(1, ORI_PIXELS, GEN_SIZE)


def test_each_ratio_trains_on_ori_and_the_stores_first_samples(tmp_path: Path):
    cfg = sweep_config(tmp_path, [1, 0.5, 2])  # 12 committed; ratio 2 needs 14
    sources = train_sources(["gen", "ori"], cfg)

    assert list(sources) == ["Gen.", "Ori.", "Gen.+Ori. x0.5", "Gen.+Ori. x1"]
    first = SampleStore(cfg.store.path).manifest().column("index").to_pylist()
    for name, count in (("Gen.+Ori. x0.5", 4), ("Gen.+Ori. x1", 7)):
        generated, original = sources[name]
        assert original == cfg.data.root
        ids = [t.tile_id for t in list_tiles(generated, ["Train"])]
        assert sorted(map(int, ids)) == sorted(first[:count])
    # A quota step sweeps only what its own samples fill: at 6, ratio 1 (7) is left out.
    assert list(train_sources([], cfg, samples=6)) == ["Gen.+Ori. x0.5"]


def test_without_mix_ratios_the_config_dump_and_validate_cache_key_are_unchanged(tmp_path):
    from tasks.validation import _validate_key

    assert "mix_ratios" not in ValidationConfig().model_dump(mode="json")
    assert ValidationConfig(mix_ratios=[0.5]).model_dump()["mix_ratios"] == [0.5]

    def key(ratios: list[float]) -> str:
        config = FactoryConfig(work_dir=tmp_path, validation={"mix_ratios": ratios})
        params = {"config": config, "name": "Ori.", "sources": [], "work_dir": tmp_path}
        return _validate_key(None, params)

    assert key([]) == key([0.5, 1])  # the Ori. row's model is the same whatever the sweep
    # The key as it was computed before mix_ratios existed: cached rows stay cached.
    from pipeline_lib.data.loveda import fingerprint
    from tasks.options import digest

    config = FactoryConfig(work_dir=tmp_path)
    before = digest(
        "validate", config.validation, "Ori.", str(tmp_path), [], fingerprint(config.data.eval_root)
    )
    assert key([]) == before


@pytest.mark.parametrize(("ratios", "message"), [([0.5, -1], "positive"), ([1, 1], "repeats")])
def test_bad_mix_ratios_name_the_setting(ratios: list[float], message: str):
    with pytest.raises(ConfigError, match=rf"validation\.mix_ratios(.|\n)*{message}"):
        config_from_dict({"validation": {"mix_ratios": ratios}})


def row(name: str, miou: float, train: int) -> ValidationResult:
    return ValidationResult(
        data_name=name,
        model="mask2former-cpu",
        iters=2,
        train_samples=train,
        eval_samples=2,
        eval_root="/data/ori",
        eval_split="Val",
        iou=dict.fromkeys(CLASS_NAMES, miou),
        miou=miou,
        pixel_accuracy=0.5,
        mmseg_miou=100 * miou,
        tta=False,
        checkpoint="/w/iter_2.pth",
        work_dir="/w",
        train_seconds=1.0,
        seconds_per_iter=0.5,
        seed=0,
    )


def test_the_report_holds_one_row_per_ratio_and_names_the_best(tmp_path: Path):
    rows = [
        row("Ori.", 0.40, 2),
        row("Gen.+Ori. x0.5", 0.45, 6),
        row("Gen.+Ori. x1", 0.43, 9),
    ]
    report = assemble_report(rows, tmp_path, mix_ratios=[1, 0.5, 2])

    data = json.loads((tmp_path / "report.json").read_text())
    assert data["mix_sweep"]["ratios"] == [0.5, 1]
    assert data["mix_sweep"]["rows"] == ["Gen.+Ori. x0.5", "Gen.+Ori. x1"]
    assert data["mix_sweep"]["miou"] == pytest.approx([0.45, 0.43])
    assert data["mix_sweep"]["skipped"] == [2]
    assert data["best_mix_ratio"] == 0.5 == report.mix_sweep.best_ratio
    markdown = (tmp_path / "report.md").read_text()
    assert "| 0.5 | Gen.+Ori. x0.5 | 6 | 0.450 |" in markdown
    assert "Best ratio: **0.5** (mIoU 0.450)." in markdown
    assert "Left out (this round had too few generated samples): 2." in markdown
    plot = Path(report.files["mix_plot"])
    assert plot.name in markdown and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    tie = MixSweep(ratios=(0.5, 1), rows=("a", "b"), miou=(0.4, 0.4))
    assert tie.best_ratio == 0.5  # a tie goes to the ratio with fewer generated samples


def test_a_report_without_a_sweep_is_as_before(tmp_path: Path):
    report = assemble_report([row("Ori.", 0.4, 2)], tmp_path)
    data = json.loads((tmp_path / "report.json").read_text())
    assert "mix_sweep" not in data and "best_mix_ratio" not in data
    assert set(report.files) == {"json", "markdown", "bars"}
    assert "Mixing ratios" not in (tmp_path / "report.md").read_text()


def test_the_quality_report_names_the_best_ratio_and_links_the_plot(tmp_path: Path):
    written = _quality_report(tmp_path)

    assert json.loads(Path(written.files["json"]).read_text())["best_mix_ratio"] == 1
    markdown = Path(written.files["markdown"]).read_text()
    assert "Best ratio: **1** (mIoU 0.430)." in markdown
    assert "](validation/step-000007/mix_miou.png)" in markdown
    assert "not an independent figure" not in markdown


def test_a_filtered_quality_report_says_its_consistency_is_not_independent(tmp_path: Path):
    written = _quality_report(tmp_path, min_agreement=0.5)
    assert json.loads(Path(written.files["json"]).read_text())["min_agreement"] == 0.5
    markdown = Path(written.files["markdown"]).read_text()
    assert "kept only pairs it agreed with at min_agreement 0.5" in markdown


def _quality_report(tmp_path: Path, **fields):
    from pipeline_lib.report.fidelity import LabelFidelity
    from pipeline_lib.report.quality import QualityReport, write_quality_report
    from pipeline_lib.validate.consistency import ConsistencyResult

    rows = [row("Gen.", 0.38, 7), row("Ori.", 0.40, 2), row("Gen.+Ori. x1", 0.43, 9)]
    validation = assemble_report(rows, tmp_path / "validation" / "step-000007", [1])
    shares = dict.fromkeys(CLASS_NAMES, 1 / len(CLASS_NAMES))
    report = QualityReport(
        name="mix",
        validation=validation,
        fidelity=LabelFidelity(7, 8, {}, shares, shares, 0.0, 0.0, 0.0),
        consistency=ConsistencyResult(7, 0.3, 0.5, shares, "mask2former-cpu"),
        majority_baseline={"class": "building", "pixel_accuracy": 0.2, "miou": 0.03},
        stage_seconds={},
        train_samples=2,
        train_pixels=ORI_PIXELS,
        generated_pixels=7 * GEN_SIZE**2,
        **fields,
    )
    return write_quality_report(report, tmp_path, np.zeros((4, 4, 3), np.uint8))
