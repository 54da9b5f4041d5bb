"""Line plot of Gen.+Ori. mIoU against the mixing ratio, with the fixed rows for reference."""

from __future__ import annotations

import math
from pathlib import Path

from pipeline_lib.report.results import ValidationReport


def write_mix_plot(report: ValidationReport, path: Path) -> Path:
    """Save a PNG: ratio (log scale) on x, mIoU on y, the best ratio marked; the report's
    Gen. / Ori. / Gen.+Ori. rows, where present, as dashed horizontal lines."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on workers
    import matplotlib.pyplot as plt

    sweep = report.mix_sweep
    if sweep is None:
        raise ValueError("the report has no mixing-ratio sweep to plot")
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    references = [r for r in report.rows if r.data_name not in sweep.rows]
    for i, row in enumerate(references):
        if not math.isnan(row.miou):
            ax.axhline(row.miou, color=f"C{i + 1}", linestyle="--", label=row.data_name)
    ax.plot(sweep.ratios, sweep.miou, "o-", color="C0", label="Gen.+Ori. at ratio")
    best = sweep.best_ratio
    if best is not None:
        ax.plot(
            [best],
            [sweep.best_miou],
            "*",
            color="C0",
            markersize=16,
            label=f"best: x{best:g}",
        )
    if sweep.ratios:
        # Ratios usually double (0.25, 0.5, 1, 2): a log axis spaces them evenly.
        ax.set_xscale("log", base=2)
        ax.set_xticks(sweep.ratios, [f"{r:g}" for r in sweep.ratios])
        ax.minorticks_off()
    ax.set_xlabel("generated pixels per Ori. labelled pixel")
    ax.set_ylabel("mIoU")
    ax.set_title(f"Gen.+Ori. mIoU on {report.eval_split} of {Path(report.eval_root).name}")
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
