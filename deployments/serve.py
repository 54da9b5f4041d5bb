"""The factory's deployments, built from a config, and the loop that serves them.

- ``<name>-nightly``: the generation flow on the config's cron (overnight runs);
- ``<name>-style-<style>``: one on-demand generation deployment per declared style
  (a new style is a new config entry, no code);
- ``<name>-validate``: the validation flow, started by generation at each quota step.
"""

from __future__ import annotations

from prefect import serve
from prefect.client.orchestration import get_client
from prefect.deployments.runner import RunnerDeployment
from prefect.schedules import Cron

from deployments.specs import GENERATE, VALIDATE, deployment_specs
from flows.generate import generate_shards
from flows.validate import validate_dataset
from pipeline_lib.config import FactoryConfig
from tasks.options import GPU_TAG


def build_deployments(config: FactoryConfig) -> list[RunnerDeployment]:
    flows = {GENERATE: generate_shards, VALIDATE: validate_dataset}
    return [
        flows[spec.entrypoint].to_deployment(
            name=spec.name,
            parameters=spec.parameters,
            schedule=Cron(spec.cron, timezone=spec.timezone) if spec.cron else None,
            tags=list(spec.tags),
            description=spec.description,
        )
        for spec in deployment_specs(config, config.model_dump(mode="json"))
    ]


def ensure_gpu_limit(limit: int) -> None:
    """Tasks tagged ``gpu`` run at most ``limit`` at a time across all workers."""
    with get_client(sync_client=True) as client:
        client.create_concurrency_limit(tag=GPU_TAG, concurrency_limit=limit)


def serve_factory(config: FactoryConfig) -> None:
    """Register the deployments and run their flows as they are scheduled or started."""
    ensure_gpu_limit(config.prefect.gpu_concurrency)
    serve(*build_deployments(config), limit=config.prefect.gpu_concurrency + 1)
