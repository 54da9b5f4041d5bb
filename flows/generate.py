"""Flow: generate shards until the sample quota, validating at each quota step."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.deployments import run_deployment
from prefect.runtime import deployment

from flows.validate import validate_dataset, validation_deployment
from pipeline_lib.config import FactoryConfig
from pipeline_lib.quota import generate_to_quota, quota_steps_reached
from pipeline_lib.store.shard_writer import ShardResult
from pipeline_lib.store.store import committed_count
from pipeline_lib.validate.steps import is_validated
from tasks.artifacts import publish_shard, report_progress, start_progress
from tasks.fan_out import shard_rounds
from tasks.generation import commit_shard_task, generate_shard_task
from tasks.options import configured, digest


@dataclass(frozen=True)
class GenerationSummary:
    store: Path
    committed: int
    shards_written: int
    rejected: int
    validated_steps: tuple[int, ...]


def start_validation(config: FactoryConfig, step: int) -> None:
    """Validate once per (data set, quota step): a deployment run when this flow is
    deployed (its idempotency key makes a second start a no-op), a subflow otherwise."""
    if is_validated(config.validation.output, step):
        return
    if deployment.get_id():
        key = f"{config.name}:{digest(str(config.store.path))}:step-{step}"
        run_deployment(
            validation_deployment(config),
            timeout=0,
            idempotency_key=key,
            parameters={"config": config.model_dump(mode="json"), "quota_step": step},
        )
        get_run_logger().info("started validation for quota step %d (key %s)", step, key)
    else:
        validate_dataset(config, quota_step=step)


@flow(name="generate-shards")
def generate_shards(
    config: FactoryConfig, style: str | None = None, validate: bool = True
) -> GenerationSummary:
    """Generate shards until the store holds the quota; resumes where a run stopped.

    With ``style``, only that declared style is drawn, into the style's own store. With
    ``prefect.dask``, shards are generated side by side on a Dask cluster. With
    ``validate=False`` no quota step is validated: the caller validates what it needs.
    """
    if style is not None:
        config = config.for_style(style)
    quota, every = config.quota.samples, config.quota.validate_every
    store = config.store.path
    progress = start_progress(config.name, committed_count(store), quota)
    generate = configured(generate_shard_task, config)
    commit = configured(commit_shard_task, config)

    def after_shard(result: ShardResult, committed: int) -> None:
        publish_shard(config.name, result)
        report_progress(progress, committed, quota)
        if validate:
            for step in quota_steps_reached(committed, every, quota):
                start_validation(config, step)

    with shard_rounds(config, generate, commit) as run_round:
        run = generate_to_quota(
            store, quota, config.store.shard_size, on_shard=after_shard, run_round=run_round
        )
    steps = quota_steps_reached(run.committed, every, quota) if validate else []
    for step in steps:  # a run killed between a commit and its validation catches up here
        start_validation(config, step)
    return GenerationSummary(store, run.committed, run.shards_written, run.rejected, tuple(steps))
