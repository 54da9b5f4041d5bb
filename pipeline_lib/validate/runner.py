"""Train one Mask2Former with mmengine's Runner and evaluate it on a Val split.

The final evaluation runs the model once over the split and scores the same predictions
twice, with mmseg's IoUMetric and with the numpy confusion matrix of ``metrics``; a
disagreement above 1e-6 stops the run. Training resumes from the latest checkpoint in its
work dir, so a rerun with more iterations continues instead of starting over.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline_lib.config import ValidationConfig
from pipeline_lib.data.classes import CLASS_NAMES, IGNORE_INDEX, NUM_CLASSES
from pipeline_lib.validate import metrics, mmseg_data
from pipeline_lib.validate.mask2former_configs import model_config, optim_config
from pipeline_lib.validate.mmcv_compat import ensure_mmseg, trust_checkpoint_dir

log = logging.getLogger(__name__)

POLY_POWER = 0.9  # mmseg's Mask2Former schedule


@dataclass(frozen=True)
class EvalScores:
    confusion: np.ndarray
    iou: np.ndarray  # numpy confusion-matrix IoU per class
    mmseg_iou: np.ndarray  # mmseg IoUMetric's unrounded per-class IoU
    mmseg_miou: float  # IoUMetric's reported mIoU (percent, 2 decimals)
    samples: int


def runner_config(
    train_roots: list[Path],
    eval_root: Path,
    cfg: ValidationConfig,
    work_dir: Path,
    progress: bool = True,
) -> dict[str, Any]:
    """The whole mmengine config of one training run (mmseg-layout roots)."""
    pretrained = cfg.pretrained_backbone is not None
    log_interval = max(1, min(50, cfg.iters // 10))
    config: dict[str, Any] = dict(
        default_scope="mmseg",
        work_dir=str(work_dir),
        model=model_config(cfg),
        train_dataloader=mmseg_data.train_dataloader(
            train_roots,
            cfg.crop_size,
            cfg.batch_size,
            cfg.scale_factors,
            cfg.mix_by,
            cfg.rot_flip,
            cfg.mosaic,
        ),
        optim_wrapper=optim_config(cfg.model, cfg.lr, pretrained),
        param_scheduler=[
            dict(type="PolyLR", eta_min=0, power=POLY_POWER, begin=0, end=cfg.iters, by_epoch=False)
        ],
        train_cfg=dict(
            type="IterBasedTrainLoop", max_iters=cfg.iters, val_interval=cfg.val_interval
        ),
        default_hooks=dict(
            timer=dict(type="IterTimerHook"),
            logger=dict(type="LoggerHook", interval=log_interval, log_metric_by_epoch=False),
            param_scheduler=dict(type="ParamSchedulerHook"),
            checkpoint=dict(
                type="CheckpointHook",
                by_epoch=False,
                interval=cfg.checkpoint_interval,
                max_keep_ckpts=2,
                save_last=True,
            ),
            sampler_seed=dict(type="DistSamplerSeedHook"),
        ),
        env_cfg=dict(
            cudnn_benchmark=False,
            dist_cfg=dict(backend="nccl"),
            mp_cfg=dict(mp_start_method="fork", opencv_num_threads=0),
        ),
        log_processor=dict(by_epoch=False),
        log_level="INFO" if progress else "WARNING",
        randomness=dict(seed=cfg.seed),
        resume=True,
    )
    if cfg.val_interval < cfg.iters:
        # Monitoring only; the scores that count come from evaluate() after training.
        config.update(
            val_dataloader=mmseg_data.eval_dataloader(
                eval_root, cfg.crop_size, native_scale=cfg.scale_factors is not None
            ),
            val_evaluator=dict(type="IoUMetric", iou_metrics=["mIoU"]),
            val_cfg=dict(type="ValLoop"),
        )
    return config


def build_runner(config: dict[str, Any], name: str) -> Any:
    ensure_mmseg()
    from mmengine.config import Config
    from mmengine.runner import Runner

    trust_checkpoint_dir(config["work_dir"])
    # A unique name per runner: mmengine keys its logger and visualizer singletons on it.
    experiment = f"{name}-{time.strftime('%Y%m%d_%H%M%S')}-{uuid.uuid4().hex[:6]}"
    # Unformatted: mmengine formats the config with yapf for its log line, its dump and every
    # checkpoint, ~1.3 s each on 2 CPU cores (40% of a 2-iteration run's wall time).
    config = Config(dict(config, experiment_name=experiment), format_python_code=False)
    return Runner.from_cfg(config)


def _timing_hook() -> Any:
    from mmengine.hooks import Hook

    class TrainTiming(Hook):
        """Measures wall time of the iterations this run did (after any resume)."""

        def before_train(self, runner: Any) -> None:
            self.start_iter, self.start = runner.iter, time.perf_counter()

        def after_train(self, runner: Any) -> None:
            self.iters = runner.iter - self.start_iter
            self.seconds = time.perf_counter() - self.start

    return TrainTiming()


def _extend_schedule_hook(max_iters: int, power: float = POLY_POWER) -> Any:
    from mmengine.hooks import Hook

    class ExtendPolySchedule(Hook):
        """Stretch a resumed poly LR schedule to this run's ``max_iters``.

        mmengine restores the old schedule's end, and its PolyLR is recursive, so a run
        resumed with more iterations would go on at the old final LR (0). The closed form
        lr = initial_lr * (1 - iter / end) ** power restarts it on the new end.
        """

        def after_load_checkpoint(self, runner: Any, checkpoint: dict) -> None:
            step = checkpoint.get("meta", {}).get("iter", 0)
            schedulers = checkpoint.get("param_schedulers", [])
            if step >= max_iters or not schedulers or schedulers[0].get("end") == max_iters:
                return
            for state in schedulers:
                state.update(end=max_iters, total_iters=max_iters - state.get("begin", 0) - 1)
            for group in checkpoint["optimizer"]["param_groups"]:
                if "initial_lr" in group:
                    group["lr"] = group["initial_lr"] * (1 - step / max_iters) ** power

    return ExtendPolySchedule()


def train(runner: Any) -> tuple[int, float]:
    """Run (or resume) training; returns (iterations done now, their seconds)."""
    timing = _timing_hook()
    runner.register_hook(timing, priority="VERY_LOW")
    # Registered before train() resumes, so it sees the checkpoint before mmengine applies it.
    runner.register_hook(_extend_schedule_hook(runner.cfg.train_cfg.max_iters))
    runner.train()
    return timing.iters, timing.seconds


def evaluate(
    model: Any,
    eval_root: Path,
    crop_size: int,
    tta: bool = False,
    progress: bool = True,
    native_scale: bool = False,
) -> EvalScores:
    """Predict the Val split once; score it with mmseg's IoUMetric and numpy, and check both."""
    ensure_mmseg()
    import torch
    from mmengine.registry import init_default_scope
    from mmengine.runner import Runner
    from mmseg.evaluation import IoUMetric
    from tqdm import tqdm

    init_default_scope("mmseg")

    loader = Runner.build_dataloader(
        mmseg_data.eval_dataloader(eval_root, crop_size, tta, native_scale)
    )
    predictor = model
    if tta:
        from mmseg.models import SegTTAModel

        predictor = SegTTAModel(module=model)
    metric = IoUMetric(iou_metrics=["mIoU"], ignore_index=IGNORE_INDEX)
    metric.dataset_meta = loader.dataset.metainfo
    confusion = np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64)
    model.eval()
    with torch.no_grad():
        for batch in tqdm(loader, desc="evaluating", unit="tile", disable=not progress):
            outputs = predictor.test_step(batch)
            metric.process(batch, [o.to_dict() for o in outputs])
            for output in outputs:
                pred = output.pred_sem_seg.data.squeeze().cpu().numpy()
                gt = output.gt_sem_seg.data.squeeze().cpu().numpy()
                confusion += metrics.confusion_matrix(pred, gt)
    areas = [torch.stack([torch.as_tensor(r[i]) for r in metric.results]).sum(0) for i in range(4)]
    mmseg_iou = IoUMetric.total_area_to_metrics(*areas, metrics=["mIoU"], nan_to_num=None)["IoU"]
    summary = metric.compute_metrics(metric.results)
    ours = metrics.iou_per_class(confusion)
    metrics.check_agreement(ours, np.asarray(mmseg_iou, np.float64))
    return EvalScores(
        confusion,
        ours,
        np.asarray(mmseg_iou, np.float64),
        float(summary["mIoU"]),
        len(loader.dataset),
    )


def iou_by_class(iou: np.ndarray) -> dict[str, float]:
    return {name: float(v) for name, v in zip(CLASS_NAMES, iou, strict=True)}
