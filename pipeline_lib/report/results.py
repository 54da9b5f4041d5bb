"""Small frozen results that cross task boundaries: one trained model's scores, and the report.

They live with the report that renders them; validation produces them.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from pipeline_lib.data.classes import CLASS_NAMES


@dataclass(frozen=True)
class ValidationResult:
    """Scores of one model trained on one data name, evaluated on one split."""

    data_name: str
    model: str
    iters: int
    train_samples: int
    eval_samples: int
    eval_root: str
    eval_split: str
    iou: dict[str, float]  # class name -> IoU in [0, 1]; NaN for a class absent from the split
    miou: float
    pixel_accuracy: float
    mmseg_miou: float  # mmseg IoUMetric's mIoU (percent, rounded as it reports)
    tta: bool
    checkpoint: str
    work_dir: str
    train_seconds: float
    seconds_per_iter: float
    seed: int
    slide: bool = False  # predicted in crop-sized windows (absent from older result.json)
    # mIoU of each seed's model when the row is their mean (validation.repeats); else empty.
    seed_miou: tuple[float, ...] = ()
    # and the folder of each seed's model, so that it can be scored again (lfactory evaluate)
    seed_work_dirs: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["iou"] = {k: _nan_to_none(v) for k, v in self.iou.items()}
        data["miou"] = _nan_to_none(self.miou)
        data["seconds_per_iter"] = _nan_to_none(self.seconds_per_iter)
        data["seed_miou"] = [_nan_to_none(m) for m in self.seed_miou]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ValidationResult:
        data = dict(data)
        data["iou"] = {k: _none_to_nan(v) for k, v in data["iou"].items()}
        data["miou"] = _none_to_nan(data["miou"])
        data["seconds_per_iter"] = _none_to_nan(data["seconds_per_iter"])
        data["seed_miou"] = tuple(_none_to_nan(m) for m in data.get("seed_miou", ()))
        data["seed_work_dirs"] = tuple(data.get("seed_work_dirs", ()))
        return cls(**data)


def mean_over_seeds(runs: Sequence[ValidationResult]) -> ValidationResult:
    """One row from models trained on the same data with different seeds: the mean of their
    scores and the sum of their training time. Checkpoint, work dir and seed stay the first
    seed's, the model that later steps (consistency, the agreement filter) use; every seed's
    work dir is kept in ``seed_work_dirs``."""
    first = runs[0]
    if len(runs) == 1:
        return first
    mean = statistics.fmean  # NaN (a class absent from Val) stays NaN
    return replace(
        first,
        iou={name: mean(r.iou[name] for r in runs) for name in first.iou},
        miou=mean(r.miou for r in runs),
        pixel_accuracy=mean(r.pixel_accuracy for r in runs),
        mmseg_miou=mean(r.mmseg_miou for r in runs),
        train_seconds=round(sum(r.train_seconds for r in runs), 3),
        seconds_per_iter=mean(r.seconds_per_iter for r in runs),
        seed_miou=tuple(r.miou for r in runs),
        seed_work_dirs=tuple(r.work_dir for r in runs),
    )


@dataclass(frozen=True)
class MixSweep:
    """Gen.+Ori. mIoU at each mixing ratio (validation.mix_ratios), in ascending ratio."""

    ratios: tuple[float, ...]  # those with a row
    rows: tuple[str, ...]  # their data names, e.g. "Gen.+Ori. x0.5"
    miou: tuple[float, ...]
    skipped: tuple[float, ...] = ()  # configured ratios this round had too few samples for

    @property
    def best_ratio(self) -> float | None:
        """The ratio of the highest mIoU; a tie goes to the smaller ratio (fewer samples)."""
        scored = [(m, -r) for r, m in zip(self.ratios, self.miou, strict=True) if not math.isnan(m)]
        return -max(scored)[1] if scored else None

    @property
    def best_miou(self) -> float:
        best = self.best_ratio
        return math.nan if best is None else self.miou[self.ratios.index(best)]

    def to_json(self) -> dict[str, Any]:
        return {
            "ratios": list(self.ratios),
            "rows": list(self.rows),
            "miou": [_nan_to_none(m) for m in self.miou],
            "skipped": list(self.skipped),
            "best_ratio": self.best_ratio,
        }


@dataclass(frozen=True)
class ValidationReport:
    """Gen./Ori./Gen.+Ori. rows of per-class IoU and mIoU, and where they were written."""

    rows: tuple[ValidationResult, ...]
    eval_root: str
    eval_split: str
    eval_samples: int
    classes: tuple[str, ...] = CLASS_NAMES
    files: dict[str, str] = field(default_factory=dict)
    mix_sweep: MixSweep | None = None

    def to_json(self) -> dict[str, Any]:
        data = {
            "eval_root": self.eval_root,
            "eval_split": self.eval_split,
            "eval_samples": self.eval_samples,
            "classes": list(self.classes),
            "columns": [*self.classes, "mIoU"],
            "rows": [r.to_json() for r in self.rows],
            "files": dict(self.files),
        }
        if self.mix_sweep is not None:
            data["mix_sweep"] = self.mix_sweep.to_json()
            data["best_mix_ratio"] = self.mix_sweep.best_ratio
        return data


def _nan_to_none(value: float) -> float | None:
    # JSON has no NaN; null marks a class absent from the evaluation split.
    return None if value is None or math.isnan(value) else float(value)


def _none_to_nan(value: float | None) -> float:
    return float("nan") if value is None else float(value)
