"""Flow: the quality proof. Train every stage, generate as many labelled pixels as Train,
validate Gen. / Ori. / Gen.+Ori., score consistency, write quality.json / quality.md."""

from __future__ import annotations

import time

from prefect import flow

from flows.generate import generate_shards
from flows.train import train_models
from flows.validate import validate_dataset, validate_original
from pipeline_lib.config import FactoryConfig
from pipeline_lib.quality import filtered_by, for_current_models, matching_quota
from pipeline_lib.report.quality import QualityReport
from tasks.artifacts import publish_quality
from tasks.options import configured
from tasks.quality import consistency_task, write_quality_task


@flow(name="quality")
def quality(config: FactoryConfig) -> QualityReport:
    seconds: dict[str, float] = {}
    began = time.perf_counter()
    for name, summary in train_models(config).items():
        seconds[f"train {name} (when trained)"] = summary.wall_time_s if summary else 0.0
    seconds["train (this run)"] = time.perf_counter() - began
    # Counts the Train pixels that train_models prepared.
    config = matching_quota(config)

    began = time.perf_counter()
    # Ori. first: the agreement filter (when on) and the consistency score both use it. It
    # depends on Train and the validation settings only, so it is trained outside the
    # store's folder and serves every store that retrained generators draw.
    ori = validate_original(config, quota_step=config.quota.samples)
    config = filtered_by(for_current_models(config), ori.checkpoint)
    generate_shards(config, validate=False)
    validation = validate_dataset(config, quota_step=config.quota.samples, trained=[ori])
    seconds["generate + validate (this run)"] = time.perf_counter() - began
    for row in validation.rows:
        seconds[f"validate {row.data_name} (when trained)"] = row.train_seconds

    began = time.perf_counter()
    result = configured(consistency_task, config)(config, ori.checkpoint)
    seconds["consistency (this run)"] = time.perf_counter() - began
    report = write_quality_task(config, validation, result, seconds)
    publish_quality(config.name, report)
    return report
