"""Score an already trained Mask2Former on any LoveDA-layout folder, without training again.

Used for consistency (the Ori. model on generated images, against the labels they were
drawn from), for validating trained segmenters on a user's own tiles, and for predicting
on images in memory (generation's agreement filter).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from pipeline_lib.config import ValidationConfig
from pipeline_lib.errors import CheckpointError, ConfigError, DataError
from pipeline_lib.report.results import ValidationReport, ValidationResult, mean_over_seeds
from pipeline_lib.validate import mmseg_data, runner
from pipeline_lib.validate.experiment import RESULT_FILE, VALIDATION_FILE, assemble_report, slug
from pipeline_lib.validate.mask2former_configs import model_config
from pipeline_lib.validate.metrics import mean_iou, pixel_accuracy
from pipeline_lib.validate.mmcv_compat import ensure_mmseg, trust_checkpoint_dir
from pipeline_lib.validate.steps import REPORT_FILE

EVAL_DIR = "eval"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")

log = logging.getLogger(__name__)


def load_segmenter(cfg: ValidationConfig, checkpoint: Path) -> Any:
    """The Mask2Former of ``cfg`` with the weights of a checkpoint its runner wrote."""
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise CheckpointError(f"{checkpoint}: no such segmenter checkpoint; validate first")
    ensure_mmseg()
    from mmengine.config import ConfigDict
    from mmengine.registry import init_default_scope
    from mmengine.runner import load_checkpoint
    from mmseg.registry import MODELS

    init_default_scope("mmseg")
    model = MODELS.build(ConfigDict(model_config(cfg)))
    trust_checkpoint_dir(checkpoint.parent)
    load_checkpoint(model, str(checkpoint), map_location="cpu", logger="silent")
    return model


def predict_masks(model: Any, images: np.ndarray, cfg: ValidationConfig) -> np.ndarray:
    """Raw LoveDA masks (N, H, W) uint8 that ``model`` predicts for RGB images (N, H, W, 3).

    The images go through evaluation's own test pipeline (without TTA), so a prediction
    here is the one scoring the same image from a PNG file would make.
    """
    if not len(images):
        return np.zeros(images.shape[:3], np.uint8)
    ensure_mmseg()
    import torch
    from mmcv.transforms import Compose
    from mmengine.registry import init_default_scope

    init_default_scope("mmseg")
    steps = mmseg_data.test_pipeline(cfg.crop_size, native_scale=cfg.scale_factors is not None)
    steps = [
        dict(step, type="LoadImageFromNDArray") if step["type"] == "LoadImageFromFile" else step
        for step in steps
        if step["type"] != "LoadAnnotations"
    ]
    pipeline = Compose(steps)
    # A PNG loads as BGR (mmcv's default order); the model's preprocessor expects that.
    packed = [pipeline(dict(img=np.ascontiguousarray(image[..., ::-1]))) for image in images]
    batch = {key: [p[key] for p in packed] for key in ("inputs", "data_samples")}
    model.eval()
    with torch.no_grad():
        outputs = model.test_step(batch)
    # Train index 0..6 is raw value 1..7 (mmseg's reduce_zero_label).
    return np.stack(
        [o.pred_sem_seg.data.squeeze(0).cpu().numpy().astype(np.uint8) + 1 for o in outputs]
    )


def score_checkpoint(
    cfg: ValidationConfig,
    checkpoint: Path,
    eval_root: Path,
    cache_dir: Path,
    progress: bool = True,
    device: str = "cpu",
) -> runner.EvalScores:
    """IoU of the checkpoint's model on the Val split of the LoveDA-layout ``eval_root``."""
    model = load_segmenter(cfg, checkpoint).to(device)
    prepared = mmseg_data.prepare_split(Path(eval_root), mmseg_data.VAL, Path(cache_dir))
    return runner.evaluate(
        model,
        prepared,
        cfg.crop_size,
        cfg.tta,
        progress,
        native_scale=cfg.scale_factors is not None,
    )


def require_eval_split(root: str | Path) -> int:
    """The labelled Val tiles of an evaluation folder; a DataError that says how to make one
    when there are none."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: evaluation folder does not exist")
    count = mmseg_data.labelled_count(root, mmseg_data.VAL)
    if count == 0:
        raise DataError(
            f"{root}: no labelled tiles in Val; an evaluation folder holds "
            "Val/<scene>/{images_png,masks_png}/<id>.png (lfactory data tile ROOT OUT "
            "--size S --val-tiles all makes one from any LoveDA-layout folder)"
        )
    return count


@dataclasses.dataclass(frozen=True)
class TrainedSegmenter:
    """One row of a validation step: its scores there, its config and its weights."""

    result: ValidationResult
    cfg: ValidationConfig
    checkpoint: Path


def trained_segmenters(run_dir: str | Path) -> list[tuple[TrainedSegmenter, ...]]:
    """The segmenters a finished validation step folder trained, in its report's row order:
    per row, the model of each seed the row is the mean of (``validation.repeats``; one
    model otherwise), the first seed first.

    The report is the step's record of completion; each model's folder must still hold
    result.json, validation.json and the checkpoint.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DataError(
            f"{run_dir}: no such run folder; give a validation step folder such as "
            "<validation.output>/all or <validation.output>/step-000384"
        )
    report_path = run_dir / REPORT_FILE
    if not report_path.is_file():
        raise DataError(
            f"{run_dir}: no {REPORT_FILE}, so no finished validation here; give the step "
            "folder of a validation or quality run that completed"
        )
    try:
        report = json.loads(report_path.read_text())
        rows = [ValidationResult.from_json(row) for row in report["rows"]]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise DataError(f"{report_path}: not a validation report ({error!r})") from None
    if not rows:
        raise DataError(f"{report_path}: the report has no rows")
    return [_row_segmenters(run_dir, row) for row in rows]


def _row_segmenters(run_dir: Path, row: ValidationResult) -> tuple[TrainedSegmenter, ...]:
    work_dirs = row.seed_work_dirs or (row.work_dir,)
    if len(row.seed_miou) > 1 and not row.seed_work_dirs:
        log.warning(
            "%s: the report's row %r is the mean of %d seeds but names only the first seed's "
            "model (written before seed folders were recorded): scoring seed %d alone",
            run_dir,
            row.data_name,
            len(row.seed_miou),
            row.seed,
        )
    return tuple(_trained_segmenter(_model_folder(run_dir, Path(d))) for d in work_dirs)


def _model_folder(run_dir: Path, recorded: Path) -> Path:
    """A row's model folder: inside the step folder when it is there (so a run folder that
    was moved still works), else where the report recorded it (a quality run's Ori. model,
    trained once for every store)."""
    inside = run_dir / recorded.name
    return inside if inside.is_dir() or not recorded.is_dir() else recorded


def _trained_segmenter(folder: Path) -> TrainedSegmenter:
    result_path, cfg_path = folder / RESULT_FILE, folder / VALIDATION_FILE
    if not result_path.is_file():
        raise DataError(f"{result_path}: missing; the run folder is incomplete")
    if not cfg_path.is_file():
        raise DataError(
            f"{cfg_path}: missing; the model was trained before its config was recorded. "
            "Rerun the validation that made it (it resumes the trained model, no training) "
            "to write it"
        )
    try:
        result = ValidationResult.from_json(json.loads(result_path.read_text()))
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise DataError(f"{result_path}: not a validation result ({error!r})") from None
    try:
        cfg = ValidationConfig.model_validate(json.loads(cfg_path.read_text()))
    except (json.JSONDecodeError, ValidationError) as error:
        raise ConfigError(f"{cfg_path}: not a validation config ({error})") from None
    checkpoint = folder / Path(result.checkpoint).name if result.checkpoint else None
    if checkpoint is None or not checkpoint.is_file():
        raise CheckpointError(
            f"{folder}: no checkpoint {result.checkpoint or '(none recorded)'}; "
            "the run folder is incomplete"
        )
    return TrainedSegmenter(result, cfg, checkpoint)


def evaluate_run(
    run_dir: str | Path,
    eval_root: str | Path,
    name: str | None = None,
    device: str = "auto",
    progress: bool = True,
    slide: bool | None = None,
) -> ValidationReport:
    """Score every segmenter of a validation step on the Val split of ``eval_root``, without
    training, and write the report (report.json, report.md, iou_bars.png) under
    ``run_dir/eval/<name>`` (``name``: the evaluation folder's name by default).

    ``slide`` predicts in crop-sized windows (True) or whole tiles (False) whatever each row
    was validated with; None keeps each row's own ``validation.slide``."""
    run_dir, eval_root = Path(run_dir), Path(eval_root).resolve()
    require_eval_split(eval_root)
    name = slug(eval_root.name) if name is None else name
    if not _NAME.fullmatch(name):
        raise ConfigError(
            f"evaluation name {name!r} must be one folder name (letters, digits, '.', '_', '-')"
        )
    trained = trained_segmenters(run_dir)
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    rows = [
        mean_over_seeds(
            [
                _rescore(segmenter, eval_root, run_dir / "data-cache", slide, progress, device)
                for segmenter in seeds
            ]
        )
        for seeds in trained
    ]
    return assemble_report(rows, run_dir / EVAL_DIR / name)


def _rescore(
    segmenter: TrainedSegmenter,
    eval_root: Path,
    cache_dir: Path,
    slide: bool | None,
    progress: bool,
    device: str,
) -> ValidationResult:
    """The segmenter's result row, scored on ``eval_root``'s Val instead."""
    cfg = segmenter.cfg if slide is None else segmenter.cfg.model_copy(update={"slide": slide})
    scores = score_checkpoint(cfg, segmenter.checkpoint, eval_root, cache_dir, progress, device)
    return dataclasses.replace(
        segmenter.result,
        eval_samples=scores.samples,
        eval_root=str(eval_root),
        eval_split=mmseg_data.VAL,
        iou=runner.iou_by_class(scores.iou),
        miou=mean_iou(scores.iou),
        pixel_accuracy=pixel_accuracy(scores.confusion),
        mmseg_miou=scores.mmseg_miou,
        checkpoint=str(segmenter.checkpoint),
        work_dir=str(segmenter.checkpoint.parent),
        slide=cfg.slide,
    )
