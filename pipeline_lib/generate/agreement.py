"""The agreement filter: a segmenter trained on Ori. predicts on each drawn image, and a pair
whose prediction disagrees with its label is rejected (reason ``disagreement``).

Agreement is the mIoU, over the classes present in the label, of the prediction against
the label (no-data pixels ignored). Only the label's classes count: a class the segmenter
invents already lowers the IoU of the label class whose pixels it took, and counting it
again would punish a weak segmenter's stray specks twice. ``generation.qa.min_agreement``
0 turns the filter off and loads nothing.

The segmenter is ``generation.qa.agreement_model``: a validation step folder (its Ori.
row), a checkpoint file (built with the ``validation.json`` beside it, else with the
config's ``validation``), or unset: the Ori. row of the newest finished validation step
under ``validation.output``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from pipeline_lib.choices import DATA_LABELS
from pipeline_lib.config import FactoryConfig, ValidationConfig
from pipeline_lib.data.classes import IGNORE_INDEX, NO_DATA
from pipeline_lib.errors import ConfigError
from pipeline_lib.validate.metrics import confusion_matrix, iou_per_class
from pipeline_lib.validate.steps import REPORT_FILE

log = logging.getLogger(__name__)

DISAGREEMENT = "disagreement"
MODEL_KEY = "generation.qa.agreement_model"
ORI = DATA_LABELS["ori"]
# Key of a shard's recorded config: the segmenter used and the attempts it rejected.
SHARD_KEY = "agreement"

# RGB images (N, H, W, 3) uint8 -> predicted raw masks (N, H, W) uint8.
Predictor = Callable[[np.ndarray], np.ndarray]


def agreement_miou(label: np.ndarray, prediction: np.ndarray) -> float:
    """mIoU of ``prediction`` against ``label`` (raw masks) over the label's classes;
    0 for a label without a labelled pixel, which nothing can agree with."""
    label = np.asarray(label, np.int64)
    target = np.where(label == NO_DATA, IGNORE_INDEX, label - 1)
    cm = confusion_matrix(np.asarray(prediction, np.int64) - 1, target)
    present = cm.sum(axis=1) > 0
    return float(iou_per_class(cm)[present].mean()) if present.any() else 0.0


@dataclass(frozen=True)
class AgreementSegmenter:
    """Where the filter's segmenter comes from: its weights and the config that builds it."""

    checkpoint: Path
    cfg: ValidationConfig


def _step_segmenter(step: Path) -> AgreementSegmenter | None:
    from pipeline_lib.validate.evaluate import trained_segmenters

    for first, *_ in trained_segmenters(step):
        if first.result.data_name == ORI:
            return AgreementSegmenter(first.checkpoint, first.cfg)
    return None


def _checkpoint_segmenter(checkpoint: Path, fallback: ValidationConfig) -> AgreementSegmenter:
    from pipeline_lib.validate.experiment import VALIDATION_FILE

    saved = checkpoint.parent / VALIDATION_FILE
    if not saved.is_file():
        return AgreementSegmenter(checkpoint, fallback)
    try:
        return AgreementSegmenter(
            checkpoint, ValidationConfig.model_validate(json.loads(saved.read_text()))
        )
    except (json.JSONDecodeError, ValidationError) as error:
        raise ConfigError(f"{saved}: not a validation config ({error})") from None


def resolve_segmenter(cfg: FactoryConfig) -> AgreementSegmenter:
    """The segmenter ``generation.qa.agreement_model`` names (see the module docstring)."""
    named = cfg.generation.qa.agreement_model
    if named is not None:
        if named.is_file():
            return _checkpoint_segmenter(named, cfg.validation)
        if not named.is_dir():
            raise ConfigError(
                f"{MODEL_KEY}: {named} does not exist; give a validation step folder "
                "(<validation.output>/step-000384) or a segmenter checkpoint file"
            )
        found = _step_segmenter(named)
        if found is None:
            raise ConfigError(f"{MODEL_KEY}: {named} trained no {ORI} model; name another step")
        return found
    output = Path(cfg.validation.output)
    reports = sorted(output.glob(f"*/{REPORT_FILE}"), key=lambda p: p.stat().st_mtime_ns)
    for report in reversed(reports):
        found = _step_segmenter(report.parent)
        if found is not None:
            return found
    raise ConfigError(
        f"generation.qa.min_agreement is {cfg.generation.qa.min_agreement} but no finished "
        f"validation under {output} trained an {ORI} model; run `lfactory validate CONFIG "
        f"--data ori` first, or set {MODEL_KEY} to a step folder or checkpoint"
    )


def segmenter_predictor(segmenter: AgreementSegmenter, device: str) -> Predictor:
    """Load the segmenter once; the predictor segments a batch of images with it."""
    from pipeline_lib.validate.evaluate import load_segmenter, predict_masks

    model = load_segmenter(segmenter.cfg, segmenter.checkpoint).to(device)
    return lambda images: predict_masks(model, images, segmenter.cfg)


class AgreementFilter:
    """Scores drawn pairs with a predictor and rejects those below ``min_agreement``."""

    def __init__(self, min_agreement: float, predict: Predictor | None = None, source: str = ""):
        if min_agreement > 0 and predict is None:
            raise ValueError("an agreement filter that is on needs a predictor")
        self.min_agreement = min_agreement
        self.predict = predict if min_agreement > 0 else None
        self.source = source

    @classmethod
    def for_config(cls, cfg: FactoryConfig, device: str = "cpu") -> AgreementFilter:
        """The filter of ``cfg``; off (nothing loaded) when qa.min_agreement is 0."""
        threshold = cfg.generation.qa.min_agreement
        if not threshold:
            return cls(0.0)
        segmenter = resolve_segmenter(cfg)
        log.info("agreement filter: %s (min mIoU %g)", segmenter.checkpoint, threshold)
        return cls(threshold, segmenter_predictor(segmenter, device), str(segmenter.checkpoint))

    @property
    def enabled(self) -> bool:
        return self.predict is not None

    def scores(self, images: np.ndarray, masks: list[np.ndarray]) -> list[float | None]:
        """Each pair's agreement; None for every pair when the filter is off."""
        if self.predict is None or not masks:
            return [None] * len(masks)
        predictions = self.predict(images)
        return [agreement_miou(m, p) for m, p in zip(masks, predictions, strict=True)]

    def rejects(self, score: float | None) -> bool:
        return score is not None and score < self.min_agreement

    def shard_record(self, rejected_attempts: list[int]) -> dict[str, Any]:
        """What a shard's config keeps of the filter (nothing when off): regenerate replays
        the rejected attempts in their image batches, as they were drawn there."""
        if not self.enabled:
            return {}
        return {SHARD_KEY: {"segmenter": self.source, "rejected": sorted(rejected_attempts)}}


def rejected_after_image(shard_config: Mapping[str, Any]) -> set[int]:
    """The attempts of a shard whose image was drawn, then rejected by the filter."""
    return set(shard_config.get(SHARD_KEY, {}).get("rejected", ()))
