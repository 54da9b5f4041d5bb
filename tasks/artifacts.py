"""What the Prefect UI shows while the factory runs: progress, per-shard tables, reports."""

from __future__ import annotations

import base64
import math
from pathlib import Path
from uuid import UUID

from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

from pipeline_lib.report.iou_table import markdown_table, mix_sweep_lines
from pipeline_lib.report.quality import GRID_ALT, QualityReport
from pipeline_lib.report.quality import markdown as quality_markdown
from pipeline_lib.store.shard_writer import ShardResult
from pipeline_lib.validate import ValidationReport


def _key(*parts: object) -> str:
    # Artifact keys allow lowercase letters, digits and dashes only.
    text = "-".join(str(p) for p in parts).lower()
    return "".join(c if c.isalnum() else "-" for c in text).strip("-")


def start_progress(name: str, committed: int, quota: int) -> UUID:
    return create_progress_artifact(
        progress=100.0 * min(committed, quota) / quota,
        key=_key(name, "generation-progress"),
        description=f"{name}: committed samples toward the quota of {quota}",
    )


def report_progress(artifact_id: UUID, committed: int, quota: int) -> None:
    update_progress_artifact(artifact_id, progress=100.0 * min(committed, quota) / quota)


def publish_shard(name: str, result: ShardResult) -> None:
    row = {
        "shard": result.shard_id,
        "samples": result.kept,
        "rejects": result.rejected,
        "reject reasons": ", ".join(f"{k}: {v}" for k, v in result.reasons.items()) or "-",
    }
    row.update({k: round(v, 4) for k, v in result.class_fractions.items()})
    row.update({f"{k} target": round(v, 4) for k, v in result.class_targets.items()})
    create_table_artifact(
        table=[row],
        key=_key(name, "shard", f"{result.shard_id:05d}"),
        description=f"{name}: shard {result.shard_id} (samples, rejects, class fractions "
        "and their targets)",
    )


def _png_inline(path: Path, alt: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f"![{alt}](data:image/png;base64,{data})"


def publish_validation(
    name: str, report: ValidationReport, step: int | None, grid: Path | None
) -> None:
    label = f"step {step}" if step is not None else "ad hoc"
    rows = [
        {
            "data": r.data_name,
            **{c: _round(r.iou[c]) for c in report.classes},
            "mIoU": _round(r.miou),
            "train samples": r.train_samples,
        }
        for r in report.rows
    ]
    create_table_artifact(
        table=rows,
        key=_key(name, "miou"),
        description=f"{name}: Mask2Former mIoU ({label}) on {report.eval_split} "
        f"of {report.eval_root}, {report.eval_samples} tiles",
    )
    parts = [f"# {name}: validation at {label}", "", markdown_table(report), ""]
    if grid is not None:
        parts += ["## Generated samples (label | image)", "", _png_inline(grid, "samples"), ""]
    parts += ["## Per-class IoU", "", _png_inline(Path(report.files["bars"]), "IoU bars"), ""]
    if "mix_plot" in report.files:
        plot = _png_inline(Path(report.files["mix_plot"]), "mIoU against the mixing ratio")
        parts += [*mix_sweep_lines(report, plot), ""]
    create_markdown_artifact(
        markdown="\n".join(parts),
        key=_key(name, "validation-report"),
        description=f"{name}: validation report ({label})",
    )


def _round(value: float) -> float | None:
    return None if value is None or math.isnan(value) else round(value, 4)


def publish_quality(name: str, report: QualityReport) -> None:
    """The quality table and the real/generated grid, as artifacts of the quality run."""
    data = report.to_json()
    rows = [
        {"data": r.data_name, **{c: _round(r.iou[c]) for c in r.iou}, "mIoU": _round(r.miou)}
        for r in report.validation.rows
    ]
    create_table_artifact(
        table=rows,
        key=_key(name, "quality-miou"),
        description=f"{name}: Gen. / Ori. / Gen.+Ori. mIoU on {report.validation.eval_split}; "
        f"Gen./Ori. {data['gen_over_ori']}, consistency {report.consistency.miou:.3f}",
    )
    grid = _png_inline(Path(report.files["grid"]), GRID_ALT)
    create_markdown_artifact(
        markdown=quality_markdown(report, grid_image=grid),
        key=_key(name, "quality-report"),
        description=f"{name}: quality report",
    )
