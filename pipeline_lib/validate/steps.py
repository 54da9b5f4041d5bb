"""Where each validation round writes: one folder per quota step, so reports never overwrite.

A step's report on disk is its record of completion: validation runs once per
(data set, quota step), however often generation passes the step.
"""

from __future__ import annotations

from pathlib import Path

REPORT_FILE = "report.json"


def step_dir(output: str | Path, quota_step: int | None) -> Path:
    """``output/step-000064`` for the round at 64 committed samples; ``output/all`` for None."""
    if quota_step is None:
        return Path(output) / "all"
    if quota_step < 0:
        raise ValueError(f"quota_step must be >= 0, got {quota_step}")
    return Path(output) / f"step-{quota_step:06d}"


def is_validated(output: str | Path, quota_step: int) -> bool:
    return (step_dir(output, quota_step) / REPORT_FILE).is_file()
