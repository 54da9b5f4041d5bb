"""Consistency: does each generated image show its label? A segmenter trained on Ori.
predicts on the generated images and is scored against the labels they were drawn from.

An image model that ignores its condition scores like chance here however pretty its
images are; one that follows it scores near the segmenter's own mIoU on real data.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pipeline_lib.config import ValidationConfig
from pipeline_lib.validate.evaluate import score_checkpoint
from pipeline_lib.validate.metrics import mean_iou, pixel_accuracy
from pipeline_lib.validate.runner import iou_by_class

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ConsistencyResult:
    samples: int
    miou: float
    pixel_accuracy: float
    iou: dict[str, float]
    segmenter: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def export_for_scoring(store: Path | str, out: Path, limit: int | None = None) -> Path:
    """The store's committed samples as a LoveDA Val split at ``out`` (once)."""
    from pipeline_lib.store.export import export_store

    if not out.is_dir():
        export_store(store, out, format="loveda", split="Val", limit=limit)
    return out


def consistency(
    cfg: ValidationConfig,
    segmenter_checkpoint: Path,
    store: Path | str,
    work_dir: Path,
    progress: bool = True,
) -> ConsistencyResult:
    """mIoU of the Ori. segmenter on the store's images against the store's labels."""
    from pipeline_lib.store.object_store import location

    work_dir = Path(work_dir)
    folder = export_for_scoring(location(store), work_dir / "generated-as-val")
    scores = score_checkpoint(
        cfg, Path(segmenter_checkpoint), folder, work_dir / "data-cache", progress=progress
    )
    result = ConsistencyResult(
        samples=scores.samples,
        miou=mean_iou(scores.iou),
        pixel_accuracy=pixel_accuracy(scores.confusion),
        iou=iou_by_class(scores.iou),
        segmenter=str(segmenter_checkpoint),
    )
    log.info("consistency mIoU %.4f on %d generated samples", result.miou, result.samples)
    return result
