"""The validation report: the research's table (JSON, Markdown) and the grouped bar chart."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from pipeline_lib.data.classes import CLASS_NAMES
from pipeline_lib.errors import DataError
from pipeline_lib.report.iou_table import markdown_table
from pipeline_lib.report.results import ValidationResult
from pipeline_lib.validate.experiment import assemble_report

HEADER = "| data | background | building | road | water | barren | forest | agriculture | mIoU |"


def result(
    name: str,
    base: float,
    eval_root: str = "/data/loveda",
    train: int = 10,
    absent: str | None = None,
) -> ValidationResult:
    iou = {c: base + i / 100 for i, c in enumerate(CLASS_NAMES)}
    if absent:
        iou[absent] = math.nan
    present = [v for v in iou.values() if not math.isnan(v)]
    return ValidationResult(
        data_name=name,
        model="mask2former-cpu",
        iters=4,
        train_samples=train,
        eval_samples=5,
        eval_root=eval_root,
        eval_split="Val",
        iou=iou,
        miou=sum(present) / len(present),
        pixel_accuracy=0.7,
        mmseg_miou=round(100 * sum(present) / len(present), 2),
        tta=False,
        checkpoint="/w/iter_4.pth",
        work_dir="/w",
        train_seconds=8.0,
        seconds_per_iter=2.0,
        seed=0,
    )


@pytest.fixture
def rows() -> list[ValidationResult]:
    return [
        result("Gen.", 0.4, train=32),
        result("Ori.", 0.5, train=24, absent="barren"),
        result("Gen.+Ori.", 0.45, train=56),
    ]


def test_report_files_hold_the_research_table_in_row_order(rows, tmp_path: Path):
    report = assemble_report(rows, tmp_path)

    data = json.loads((tmp_path / "report.json").read_text())
    assert [r["data_name"] for r in data["rows"]] == ["Gen.", "Ori.", "Gen.+Ori."]
    assert data["columns"] == [*CLASS_NAMES, "mIoU"]
    assert (data["eval_root"], data["eval_split"], data["eval_samples"]) == (
        "/data/loveda",
        "Val",
        5,
    )
    assert [r["train_samples"] for r in data["rows"]] == [32, 24, 56]
    assert data["rows"][1]["iou"]["barren"] is None  # absent class: null, never NaN in JSON
    assert data["rows"][0]["iou"]["road"] == pytest.approx(0.42)

    lines = (tmp_path / "report.md").read_text().splitlines()
    assert HEADER in lines
    table = lines[lines.index(HEADER) + 2 : lines.index(HEADER) + 5]
    assert [line.split(" | ")[0] for line in table] == ["| Gen.", "| Ori.", "| Gen.+Ori."]
    assert table[0] == "| Gen. | 0.400 | 0.410 | 0.420 | 0.430 | 0.440 | 0.450 | 0.460 | 0.430 |"
    assert "n/a" in table[1]
    assert "**Val** split of `/data/loveda` (5 tiles)" in "\n".join(lines)

    png = tmp_path / "iou_bars.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    assert report.files == {
        "json": str(tmp_path / "report.json"),
        "markdown": str(tmp_path / "report.md"),
        "bars": str(png),
    }


def test_result_round_trips_through_json_with_nan_for_absent_classes(rows):
    back = ValidationResult.from_json(json.loads(json.dumps(rows[1].to_json())))
    assert math.isnan(back.iou["barren"]) and back.iou["road"] == rows[1].iou["road"]
    assert back.miou == rows[1].miou


def test_rows_evaluated_on_different_folders_are_not_mixed(rows, tmp_path: Path):
    with pytest.raises(DataError, match="different splits"):
        assemble_report([rows[0], result("Ori.", 0.5, eval_root="/other")], tmp_path)


def test_markdown_table_has_one_line_per_row(rows):
    from pipeline_lib.report.results import ValidationReport

    table = markdown_table(
        ValidationReport(rows=tuple(rows), eval_root="/d", eval_split="Val", eval_samples=5)
    )
    assert table.splitlines()[0] == HEADER and len(table.splitlines()) == 2 + len(rows)


def test_sample_grid_puts_each_image_beside_its_colour_label():
    import numpy as np

    from pipeline_lib.data.classes import PALETTE
    from pipeline_lib.report.sample_grid import sample_grid

    images = np.full((3, 8, 8, 3), 7, np.uint8)
    labels = np.zeros((3, 8, 8), np.uint8)
    labels[1] = 4
    grid = sample_grid(images, labels, columns=2, gap=2)
    assert grid.shape == (2 * 10, 2 * (18 + 2), 3)
    assert (grid[:8, :8] == 7).all()
    assert (grid[:8, 10:18] == PALETTE[0]).all()
    assert (grid[:8, 30:38] == PALETTE[4]).all()  # second pair: water
