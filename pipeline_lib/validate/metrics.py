"""Segmentation scores from a confusion matrix over a whole split, in plain numpy.

Kept independent of mmseg so that every validation run cross-checks mmseg's IoUMetric.
Ignored pixels (255, LoveDA's no-data after ``reduce_zero_label``) count nowhere; a class
absent from both prediction and ground truth has IoU NaN, and mIoU is the NaN-mean.
"""

from __future__ import annotations

import numpy as np

from pipeline_lib.data.classes import IGNORE_INDEX, NUM_CLASSES


class MetricMismatchError(AssertionError):
    """The numpy confusion-matrix IoU and mmseg's IoUMetric disagree: a bug in one of them,
    never the user's doing, so not a ``FactoryError``: the CLI shows its traceback."""


def confusion_matrix(
    pred: np.ndarray,
    target: np.ndarray,
    num_classes: int = NUM_CLASSES,
    ignore_index: int = IGNORE_INDEX,
) -> np.ndarray:
    """(num_classes, num_classes) int64 counts, rows = ground truth, columns = prediction."""
    pred = np.asarray(pred).ravel().astype(np.int64)
    target = np.asarray(target).ravel().astype(np.int64)
    if pred.shape != target.shape:
        raise ValueError(f"prediction has {pred.size} pixels, ground truth {target.size}")
    keep = target != ignore_index
    index = target[keep] * num_classes + pred[keep]
    return np.bincount(index, minlength=num_classes**2).reshape(num_classes, num_classes)


def iou_per_class(cm: np.ndarray) -> np.ndarray:
    """IoU of each class; NaN where the class is in neither prediction nor ground truth."""
    cm = np.asarray(cm, dtype=np.float64)
    intersect = np.diag(cm)
    union = cm.sum(0) + cm.sum(1) - intersect
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, intersect / np.where(union > 0, union, 1), np.nan)


def mean_iou(iou: np.ndarray) -> float:
    """NaN-mean of per-class IoU (NaN if every class is absent)."""
    iou = np.asarray(iou, dtype=np.float64)
    return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")


def pixel_accuracy(cm: np.ndarray) -> float:
    total = cm.sum()
    return float(np.trace(cm) / total) if total else float("nan")


def check_agreement(ours: np.ndarray, theirs: np.ndarray, tolerance: float = 1e-6) -> None:
    """Raise MetricMismatchError unless both per-class IoU vectors agree (NaN where NaN)."""
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    same_nan = np.array_equal(np.isnan(ours), np.isnan(theirs))
    close = np.allclose(np.nan_to_num(ours), np.nan_to_num(theirs), rtol=0, atol=tolerance)
    if not (same_nan and close):
        raise MetricMismatchError(
            f"numpy IoU {np.round(ours, 6).tolist()} != "
            f"mmseg IoUMetric {np.round(theirs, 6).tolist()}; "
            "report this as a bug with the evaluation folder"
        )
