"""Grouped bar chart of per-class IoU and mIoU, one bar colour per training data."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from pipeline_lib.report.results import ValidationReport


def write_iou_bars(report: ValidationReport, path: Path) -> Path:
    """Save a PNG: classes (and mIoU) on x, one bar per data row; absent classes left empty."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on workers
    import matplotlib.pyplot as plt

    columns = [*report.classes, "mIoU"]
    x = np.arange(len(columns))
    width = 0.8 / max(len(report.rows), 1)
    fig, ax = plt.subplots(figsize=(10, 4), dpi=100)
    for i, row in enumerate(report.rows):
        values = [row.iou[c] for c in report.classes] + [row.miou]
        heights = [0.0 if v is None or math.isnan(v) else v for v in values]
        ax.bar(x + (i - (len(report.rows) - 1) / 2) * width, heights, width, label=row.data_name)
    ax.set_xticks(x, columns, rotation=20)
    ax.set_ylim(0, 1)
    ax.set_ylabel("IoU")
    ax.set_title(
        f"IoU on {report.eval_split} of {Path(report.eval_root).name} ({report.eval_samples} tiles)"
    )
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
