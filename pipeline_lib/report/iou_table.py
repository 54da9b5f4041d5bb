"""The research's table: one row per training data, per-class IoU and mIoU, as JSON and Markdown."""

from __future__ import annotations

import json
import math
from pathlib import Path

from pipeline_lib.report.results import ValidationReport


def _cell(value: float) -> str:
    # Absent classes have no IoU; "n/a" keeps the column aligned and honest.
    return "n/a" if value is None or math.isnan(value) else f"{value:.3f}"


def markdown_table(report: ValidationReport) -> str:
    """Rows Gen./Ori./Gen.+Ori. x columns background..agriculture, mIoU (IoU in [0, 1])."""
    header = ["data", *report.classes, "mIoU"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in report.rows:
        cells = [row.data_name, *(_cell(row.iou[c]) for c in report.classes), _cell(row.miou)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def seeds_lines(report: ValidationReport) -> list[str]:
    """What a row is when it averages several segmenter seeds (validation.repeats), and each
    seed's mIoU: their spread says how far one seed's figure can be trusted. Empty otherwise."""
    rows = [r for r in report.rows if r.seed_miou]
    if not rows:
        return []
    count = len(rows[0].seed_miou)
    seeds = ", ".join(str(rows[0].seed + i) for i in range(count))
    by_seed = "; ".join(f"{r.data_name} " + " / ".join(_cell(m) for m in r.seed_miou) for r in rows)
    return [
        f"Each row is the mean of {count} segmenters trained on the same data (seeds {seeds}). "
        f"mIoU by seed: {by_seed}.",
        "",
    ]


def markdown(report: ValidationReport) -> str:
    """The whole report page: what was evaluated, the table, and per-row training facts."""
    first = report.rows[0]
    parts = [
        "# Validation: per-class IoU",
        "",
        f"Evaluated on the **{report.eval_split}** split of `{report.eval_root}` "
        f"({report.eval_samples} tiles), model `{first.model}`"
        f"{' with test-time augmentation' if first.tta else ''}"
        f"{', predicting in crop-sized windows' if first.slide else ''}.",
        "",
        markdown_table(report),
        "",
        *seeds_lines(report),
        "| data | train samples | iters | s/iter | mmseg mIoU (%) | checkpoint |",
        "|---|---|---|---|---|---|",
    ]
    for row in report.rows:
        parts.append(
            f"| {row.data_name} | {row.train_samples} | {row.iters} | "
            f"{_cell(row.seconds_per_iter)} | {row.mmseg_miou:.2f} | `{row.checkpoint}` |"
        )
    parts += [
        "",
        "IoU from a confusion matrix over the whole split (no-data ignored); "
        "n/a marks a class absent from both prediction and ground truth. "
        "mIoU is the mean over present classes and matches mmseg's IoUMetric.",
        "",
    ]
    if report.mix_sweep is not None:
        parts += [*mix_sweep_lines(report), ""]
    return "\n".join(parts)


def mix_sweep_lines(report: ValidationReport, plot_image: str | None = None) -> list[str]:
    """The mixing-ratio section: mIoU per ratio, the best one, what was left out, the plot
    (``plot_image`` replaces the plot's file link, e.g. inline)."""
    sweep = report.mix_sweep
    if sweep is None:
        return []
    rows = {r.data_name: r for r in report.rows}
    best = sweep.best_ratio
    lines = [
        "## Mixing ratios",
        "",
        "Gen.+Ori. on every Ori. tile plus the store's first generated samples holding "
        "ratio x Ori.'s labelled pixels.",
        "",
        "| ratio | data | train samples | mIoU |",
        "|---|---|---|---|",
        *(
            f"| {ratio:g} | {name} | {rows[name].train_samples} | {_cell(miou)} |"
            for ratio, name, miou in zip(sweep.ratios, sweep.rows, sweep.miou, strict=True)
        ),
        "",
        "Best ratio: "
        + ("none scored" if best is None else f"**{best:g}** (mIoU {_cell(sweep.best_miou)})")
        + ".",
    ]
    if sweep.skipped:
        lines += [
            "",
            "Left out (this round had too few generated samples): "
            + ", ".join(f"{r:g}" for r in sweep.skipped)
            + ".",
        ]
    if plot_image is None and "mix_plot" in report.files:
        plot_image = f"![mIoU against the mixing ratio]({Path(report.files['mix_plot']).name})"
    if plot_image is not None:
        lines += ["", plot_image]
    return lines


def write_markdown(report: ValidationReport, path: Path) -> Path:
    Path(path).write_text(markdown(report))
    return Path(path)


def write_json(report: ValidationReport, path: Path) -> Path:
    Path(path).write_text(json.dumps(report.to_json(), indent=2, allow_nan=False))
    return Path(path)
