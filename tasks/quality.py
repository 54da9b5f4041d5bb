"""Tasks of the quality proof: consistency of the generated pairs, and the report."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext

from pipeline_lib.config import FactoryConfig
from pipeline_lib.quality import write_quality
from pipeline_lib.report.quality import QualityReport
from pipeline_lib.report.results import ValidationReport
from pipeline_lib.store.manifest import manifest_files
from pipeline_lib.validate.consistency import ConsistencyResult, consistency
from tasks.options import GPU_TAG, digest


def _consistency_key(_: TaskRunContext, params: dict) -> str:
    config: FactoryConfig = params["config"]
    checkpoint = Path(params["checkpoint"])
    shards = manifest_files(config.store.path)
    stamp = checkpoint.stat().st_mtime_ns if checkpoint.is_file() else 0
    return digest("consistency", config.validation, str(checkpoint), stamp, shards)


@task(name="consistency", tags=[GPU_TAG], cache_key_fn=_consistency_key)
def consistency_task(config: FactoryConfig, checkpoint: str) -> ConsistencyResult:
    """The Ori. segmenter scored on the generated pairs (image against its own label)."""
    work = Path(config.validation.output) / "consistency"
    return consistency(config.validation, Path(checkpoint), config.store.path, work)


@task(name="write-quality-report", cache_policy=NO_CACHE)
def write_quality_task(
    config: FactoryConfig,
    validation: ValidationReport,
    result: ConsistencyResult,
    stage_seconds: dict[str, float],
) -> QualityReport:
    return write_quality(config, validation, result, stage_seconds, config.work_dir)
