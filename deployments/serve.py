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

from flows.generate import generate_shards
from flows.validate import validate_dataset, validation_deployment
from pipeline_lib.config import FactoryConfig
from tasks.options import GPU_TAG


def build_deployments(config: FactoryConfig) -> list[RunnerDeployment]:
    params = {"config": config.model_dump(mode="json")}
    tags = ["label-freedom", config.name]
    deployments = [
        generate_shards.to_deployment(
            name=f"{config.name}-nightly",
            parameters=params,
            schedule=Cron(config.prefect.nightly_cron, timezone=config.prefect.timezone),
            tags=[*tags, "nightly"],
            description="Overnight generation up to the sample quota.",
        ),
        validate_dataset.to_deployment(
            name=validation_deployment(config).split("/")[1],
            parameters=params,
            tags=[*tags, "validation"],
            description="Mask2Former on Gen / Ori / Gen+Ori at a quota step.",
        ),
    ]
    for style in config.generation.styles:
        deployments.append(
            generate_shards.to_deployment(
                name=f"{config.name}-style-{style}",
                parameters={**params, "style": style},
                tags=[*tags, "on-demand", f"style:{style}"],
                description=f"On demand: generate style {style!r} into its own store "
                f"{config.for_style(style).store.path}.",
            )
        )
    return deployments


def ensure_gpu_limit(limit: int) -> None:
    """Tasks tagged ``gpu`` run at most ``limit`` at a time across all workers."""
    with get_client(sync_client=True) as client:
        client.create_concurrency_limit(tag=GPU_TAG, concurrency_limit=limit)


def serve_factory(config: FactoryConfig) -> None:
    """Register the deployments and run their flows as they are scheduled or started."""
    ensure_gpu_limit(config.prefect.gpu_concurrency)
    serve(*build_deployments(config), limit=config.prefect.gpu_concurrency + 1)
