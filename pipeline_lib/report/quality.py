"""The quality proof's report: the research's table, Gen./Ori., label fidelity, consistency,
stage times, and a grid of real and generated pairs (quality.json, quality.md,
quality_grid.png in the run's folder)."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline_lib.data.classes import CLASS_NAMES, PALETTE
from pipeline_lib.data.loveda import write_png
from pipeline_lib.report.fidelity import LabelFidelity
from pipeline_lib.report.iou_table import markdown_table, mix_sweep_lines, seeds_lines
from pipeline_lib.report.results import ValidationReport
from pipeline_lib.validate.consistency import ConsistencyResult

QUALITY_JSON, QUALITY_MD, QUALITY_GRID = "quality.json", "quality.md", "quality_grid.png"
# The research's figures on LoveDA (Gen. / Ori. / Gen.+Ori. mIoU), for the ratio's context.
RESEARCH = {"Gen.": 0.516, "Ori.": 0.530, "Gen.+Ori.": 0.533}


@dataclass(frozen=True)
class QualityReport:
    name: str
    validation: ValidationReport
    fidelity: LabelFidelity
    consistency: ConsistencyResult
    majority_baseline: dict[str, Any]
    stage_seconds: dict[str, float]
    train_samples: int
    train_pixels: int
    generated_pixels: int
    # The agreement filter's threshold (0: off). When on, its segmenter is the Ori. model
    # that also scores consistency, which the filter then raised by selection.
    min_agreement: float = 0.0
    files: dict[str, str] = field(default_factory=dict)

    def row(self, data_name: str) -> float:
        for r in self.validation.rows:
            if r.data_name == data_name:
                return r.miou
        return math.nan

    @property
    def gen_over_ori(self) -> float:
        return self.row("Gen.") / self.row("Ori.")

    def to_json(self) -> dict[str, Any]:
        ori = self.row("Ori.")
        data = {
            "name": self.name,
            "table": self.validation.to_json(),
            "miou": {r.data_name: r.miou for r in self.validation.rows},
            "gen_over_ori": _finite(self.gen_over_ori),
            "both_minus_ori": _finite(self.row("Gen.+Ori.") - ori),
            "research": RESEARCH,
            "majority_baseline": self.majority_baseline,
            "train_samples": self.train_samples,
            "train_pixels": self.train_pixels,
            "generated_samples": self.fidelity.samples,
            "generated_pixels": self.generated_pixels,
            "label_fidelity": self.fidelity.to_json(),
            "consistency": self.consistency.to_json(),
            "consistency_over_ori": _finite(self.consistency.miou / ori),
            "min_agreement": self.min_agreement,
            "stage_seconds": self.stage_seconds,
            "files": self.files,
        }
        if self.validation.mix_sweep is not None:
            data["best_mix_ratio"] = self.validation.mix_sweep.best_ratio
        return data


def _finite(value: float) -> float | None:
    return None if math.isnan(value) or math.isinf(value) else round(float(value), 4)


def _filtered(report: QualityReport) -> str:
    if not report.min_agreement:
        return ""
    return (
        f"; the same model kept only pairs it agreed with at min_agreement "
        f"{report.min_agreement:g}, so this is not an independent figure"
    )


def majority_baseline(train_fractions: dict[str, float], eval_fractions: dict[str, float]):
    """Predicting Train's most common class everywhere: its pixel accuracy and mIoU on eval."""
    majority = max(train_fractions, key=train_fractions.get)
    share = eval_fractions.get(majority, 0.0)
    # IoU of the majority class is its share of eval pixels; every other class scores 0.
    present = [c for c in CLASS_NAMES if eval_fractions.get(c, 0.0) > 0]
    return {
        "class": majority,
        "pixel_accuracy": round(share, 4),
        "miou": round(share / max(len(present), 1), 4),
    }


GRID_ALT = "real label | real image | generated label | generated image"


def markdown(report: QualityReport, grid_image: str | None = None) -> str:
    """The report as Markdown; ``grid_image`` replaces the grid's file link (e.g. inline)."""
    data = report.to_json()
    fid, con = report.fidelity, report.consistency
    base = report.majority_baseline
    lines = [
        f"# Quality: {report.name}",
        "",
        f"Mask2Former (`{report.validation.rows[0].model}`) trained on each data name, evaluated "
        f"on the **{report.validation.eval_split}** split of `{report.validation.eval_root}` "
        f"({report.validation.eval_samples} tiles). Ori. = {report.train_samples} Train tiles "
        f"({report.train_pixels:,} labelled pixels); Gen. = {fid.samples} generated samples "
        f"({report.generated_pixels:,} pixels).",
        "",
        markdown_table(report.validation),
        "",
        *seeds_lines(report.validation),
        f"Majority-class baseline ({base['class']} everywhere): pixel accuracy "
        f"{base['pixel_accuracy']:.3f}, mIoU {base['miou']:.3f}.",
        "",
        "| figure | value | research / target |",
        "|---|---|---|",
        f"| Gen. / Ori. mIoU | {_fmt(data['gen_over_ori'])} | 0.974 / >= 0.97 |",
        f"| Gen.+Ori. - Ori. | {_fmt(data['both_minus_ori'])} | +0.003 / >= +0.02 |",
        f"| consistency mIoU (Ori. model on generated pairs{_filtered(report)}) | "
        f"{con.miou:.3f} | "
        f">= 0.8 x Ori. = {0.8 * report.row('Ori.'):.3f} |",
        f"| class-fraction TV, generated vs Train | {fid.class_fraction_tv:.3f} | <= 0.05 |",
        f"| off-palette share before snapping (mean / p95) | {fid.off_palette_mean:.4f} / "
        f"{fid.off_palette_p95:.4f} | <= 0.01 |",
        f"| draws / kept / rejected | {fid.attempts} / {fid.samples} / "
        f"{', '.join(f'{k} {v}' for k, v in fid.rejected.items()) or '0'} | |",
        "",
        "| class | " + " | ".join(CLASS_NAMES) + " |",
        "|---|" + "---|" * len(CLASS_NAMES),
        "| Train fraction | "
        + " | ".join(f"{fid.train_fractions.get(c, 0):.3f}" for c in CLASS_NAMES)
        + " |",
        "| generated fraction | "
        + " | ".join(f"{fid.generated_fractions.get(c, 0):.3f}" for c in CLASS_NAMES)
        + " |",
        "| consistency IoU | " + " | ".join(_fmt(con.iou.get(c)) for c in CLASS_NAMES) + " |",
        "",
        "| stage | seconds |",
        "|---|---|",
        *(f"| {k} | {v:.0f} |" for k, v in report.stage_seconds.items()),
        "",
        grid_image or f"![{GRID_ALT}]({QUALITY_GRID})",
        "",
        *_mix_section(report),
    ]
    return "\n".join(lines)


def _mix_section(report: QualityReport) -> list[str]:
    # The plot lies in the validation folder; link it from where quality.md is written.
    plot = report.validation.files.get("mix_plot")
    if report.validation.mix_sweep is None or plot is None:
        return []
    here = Path(report.files.get("markdown", plot)).parent
    link = f"![mIoU against the mixing ratio]({os.path.relpath(plot, here)})"
    return [*mix_sweep_lines(report.validation, link), ""]


def _fmt(value: float | None) -> str:
    return (
        "n/a"
        if value is None or (isinstance(value, float) and math.isnan(value))
        else (f"{value:+.3f}" if value < 0 else f"{value:.3f}")
    )


def quality_grid(
    real_images: np.ndarray,
    real_labels: np.ndarray,
    gen_images: np.ndarray,
    gen_labels: np.ndarray,
    gap: int = 2,
) -> np.ndarray:
    """Rows of real label | real image | generated label | generated image (uint8 RGB)."""
    rows = min(len(real_images), len(gen_images))
    height, width = gen_labels.shape[1:3]
    grid = np.full((rows * (height + gap), 4 * (width + gap), 3), 255, np.uint8)
    for i in range(rows):
        cells = (PALETTE[real_labels[i]], real_images[i], PALETTE[gen_labels[i]], gen_images[i])
        y = i * (height + gap)
        for j, cell in enumerate(cells):
            x = j * (width + gap)
            grid[y : y + height, x : x + width] = cell[:height, :width]
    return grid


def write_quality_report(report: QualityReport, out_dir: Path, grid: np.ndarray) -> QualityReport:
    """Write quality.json, quality.md and quality_grid.png; returns the report with paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {
        "json": str(out_dir / QUALITY_JSON),
        "markdown": str(out_dir / QUALITY_MD),
        "grid": str(out_dir / QUALITY_GRID),
    }
    report = QualityReport(**{**report.__dict__, "files": files})
    write_png(files["grid"], grid)
    Path(files["json"]).write_text(json.dumps(report.to_json(), indent=2) + "\n")
    Path(files["markdown"]).write_text(markdown(report))
    return report
