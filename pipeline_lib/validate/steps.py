"""Where each validation round writes: one folder per quota step, so reports never overwrite."""

from __future__ import annotations

from pathlib import Path


def step_dir(output: str | Path, quota_step: int | None) -> Path:
    """``output/step-000064`` for the round at 64 committed samples; ``output/all`` for None."""
    if quota_step is None:
        return Path(output) / "all"
    if quota_step < 0:
        raise ValueError(f"quota_step must be >= 0, got {quota_step}")
    return Path(output) / f"step-{quota_step:06d}"


REPORT_FILE = "report.json"


def is_validated(output: str | Path, quota_step: int) -> bool:
    """A step's report on disk is its record of completion: validate once per step."""
    return (step_dir(output, quota_step) / REPORT_FILE).is_file()
