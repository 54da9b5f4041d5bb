"""The Gen / Ori / Gen+Ori experiment: one model per data name, then one report.

``run_data_name`` trains and scores one row (a Prefect task can run each separately);
``assemble_report`` writes report.json, report.md and iou_bars.png from the rows (and
mix_miou.png over the mixing-ratio rows); ``run_validation`` does both in one call.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from pipeline_lib.config import ValidationConfig
from pipeline_lib.errors import DataError
from pipeline_lib.report.bar_chart import write_iou_bars
from pipeline_lib.report.iou_table import write_json, write_markdown
from pipeline_lib.report.mix_plot import write_mix_plot
from pipeline_lib.report.results import ValidationReport, ValidationResult, mean_over_seeds
from pipeline_lib.validate import mmseg_data
from pipeline_lib.validate.metrics import mean_iou, pixel_accuracy
from pipeline_lib.validate.mixing import mix_sweep
from pipeline_lib.validate.steps import REPORT_FILE

log = logging.getLogger(__name__)

RESULT_FILE = "result.json"
# The ValidationConfig a run dir's model was trained with: enough to rebuild it for scoring.
VALIDATION_FILE = "validation.json"


def slug(name: str) -> str:
    """A folder name for a data name: 'Gen.+Ori.' -> 'gen-ori'."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "data"


def run_data_name(
    name: str,
    sources: Sequence[Path],
    eval_root: Path,
    cfg: ValidationConfig,
    work_dir: Path,
    progress: bool = True,
) -> ValidationResult:
    """Train one model on the Train splits of ``sources`` and score it on ``eval_root``'s Val;
    with ``cfg.repeats`` > 1, one model per seed (``cfg.seed``, ``cfg.seed + 1``, ...) and the
    mean of their scores.

    Each model resumes from the latest checkpoint under ``work_dir/<slug>-<training_key>``
    (the key holds its seed), where it also writes result.json and validation.json (the
    config, to rebuild the model later).
    """
    seeds = range(cfg.seed, cfg.seed + cfg.repeats)
    return mean_over_seeds(
        [
            _train_and_score(
                name,
                sources,
                eval_root,
                cfg.model_copy(update={"seed": seed, "repeats": 1}),
                work_dir,
                progress,
            )
            for seed in seeds
        ]
    )


def _train_and_score(
    name: str,
    sources: Sequence[Path],
    eval_root: Path,
    cfg: ValidationConfig,
    work_dir: Path,
    progress: bool,
) -> ValidationResult:
    from pipeline_lib.validate import runner

    if not sources:
        raise DataError(f"data {name!r} has no source folder; give at least one LoveDA folder")
    work_dir = Path(work_dir)
    cache = work_dir / "data-cache"
    train_roots = [mmseg_data.prepare_split(Path(s), mmseg_data.TRAIN, cache) for s in sources]
    eval_mmseg = mmseg_data.prepare_split(Path(eval_root), mmseg_data.VAL, cache)
    if cfg.mosaic and not mmseg_data.mosaic_applies(train_roots, cfg.crop_size):
        # Tiles this large are never mosaiced: the model is the one trained without it.
        cfg = cfg.model_copy(update={"mosaic": False})
    run_dir = work_dir / f"{slug(name)}-{training_key(sources, cfg)}"
    config = runner.runner_config(train_roots, eval_mmseg, cfg, run_dir, progress)
    log.info(
        "training %s on %s (%s, %d iters) -> %s",
        cfg.model,
        name,
        ", ".join(map(str, sources)),
        cfg.iters,
        run_dir,
    )
    mm_runner = runner.build_runner(config, slug(name))
    previous = _previous_timing(run_dir)
    iters_done, seconds = runner.train(mm_runner)
    per_iter = seconds / iters_done if iters_done else float("nan")
    if iters_done == 0 and previous is not None:
        # Fully cached: keep the timing of the run that actually trained.
        seconds, per_iter = previous
    scores = runner.evaluate(
        mm_runner.model,
        eval_mmseg,
        cfg.crop_size,
        cfg.tta,
        progress,
        native_scale=cfg.scale_factors is not None,
    )
    last = run_dir / "last_checkpoint"
    result = ValidationResult(
        data_name=name,
        model=cfg.model,
        iters=int(mm_runner.iter),
        train_samples=sum(mmseg_data.labelled_count(Path(s), mmseg_data.TRAIN) for s in sources),
        eval_samples=scores.samples,
        eval_root=str(Path(eval_root).resolve()),
        eval_split=mmseg_data.VAL,
        iou=runner.iou_by_class(scores.iou),
        miou=mean_iou(scores.iou),
        pixel_accuracy=pixel_accuracy(scores.confusion),
        mmseg_miou=scores.mmseg_miou,
        tta=cfg.tta,
        checkpoint=last.read_text().strip() if last.is_file() else "",
        work_dir=str(run_dir),
        train_seconds=round(seconds, 3),
        seconds_per_iter=round(per_iter, 4),
        seed=cfg.seed,
        slide=cfg.slide,
    )
    (run_dir / RESULT_FILE).write_text(json.dumps(result.to_json(), indent=2))
    (run_dir / VALIDATION_FILE).write_text(json.dumps(cfg.model_dump(mode="json"), indent=2))
    log.info(
        "%s: mIoU %.4f on %s/%s (%d tiles)",
        name,
        result.miou,
        eval_root,
        mmseg_data.VAL,
        result.eval_samples,
    )
    return result


def _previous_timing(run_dir: Path) -> tuple[float, float] | None:
    """(train seconds, seconds per iteration) of the run that wrote result.json, if any."""
    path = run_dir / RESULT_FILE
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    if data.get("seconds_per_iter") is None:
        return None
    return float(data["train_seconds"]), float(data["seconds_per_iter"])


def training_key(sources: Sequence[Path], cfg: ValidationConfig) -> str:
    """Hash of what makes a model different (data, model, batch, crop, lr, seed; not iters;
    how several sources mix).

    Runs with the same key share a work dir and resume each other; new data never does.
    """
    fields = cfg.model_dump(
        include={
            "model",
            "batch_size",
            "crop_size",
            "lr",
            "seed",
            "pretrained_backbone",
            "scale_factors",
            "class_weights",
            "rot_flip",  # the dump leaves these out when off: keys from before them stay
            "mosaic",
        }
        | ({"mix_by"} if len(sources) > 1 else set()),
        mode="json",
    )
    parts = [json.dumps(fields, sort_keys=True)]
    parts += [mmseg_data.split_fingerprint(Path(s), mmseg_data.TRAIN) for s in sources]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:10]


def assemble_report(
    results: Sequence[ValidationResult], output_dir: Path, mix_ratios: Iterable[float] = ()
) -> ValidationReport:
    """Write report.json, report.md and iou_bars.png for the rows, in the given order;
    with ``mix_ratios``, also the sweep over their rows, its best ratio and mix_miou.png."""
    if not results:
        raise DataError("no validation results to report; run at least one data name first")
    roots = {(r.eval_root, r.eval_split) for r in results}
    if len(roots) != 1:
        raise DataError(
            f"rows were evaluated on different splits {sorted(roots)}; "
            "report rows of one evaluation folder together"
        )
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    files = {
        "json": output_dir / REPORT_FILE,
        "markdown": output_dir / "report.md",
        "bars": output_dir / "iou_bars.png",
    }
    sweep = mix_sweep(results, mix_ratios)
    if sweep is not None:
        files["mix_plot"] = output_dir / "mix_miou.png"
    report = ValidationReport(
        rows=tuple(results),
        eval_root=results[0].eval_root,
        eval_split=results[0].eval_split,
        eval_samples=results[0].eval_samples,
        files={k: str(v) for k, v in files.items()},
        mix_sweep=sweep,
    )
    write_json(report, files["json"])
    write_markdown(report, files["markdown"])
    write_iou_bars(report, files["bars"])
    if sweep is not None:
        write_mix_plot(report, files["mix_plot"])
        log.info("best mixing ratio: %s", sweep.best_ratio)
    log.info("validation report written to %s", files["markdown"])
    return report


def run_validation(
    train_sources: Mapping[str, Sequence[Path]],
    eval_root: Path,
    cfg: ValidationConfig,
    work_dir: Path,
    progress: bool = True,
) -> ValidationReport:
    """Train one model per data name (e.g. Gen./Ori./Gen.+Ori., the mixing ratios' rows) and
    write the report there."""
    results = [
        run_data_name(name, sources, eval_root, cfg, work_dir, progress)
        for name, sources in train_sources.items()
    ]
    return assemble_report(results, Path(work_dir), cfg.mix_ratios)
