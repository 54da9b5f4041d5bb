"""The factory's deployments as plain data: one list that ``lfactory serve`` builds runner
deployments from and that ``deployments/prefect.yaml`` is generated from, so the two
never disagree on names, schedules or parameters."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from flows.validate import validation_deployment
from pipeline_lib.config import FactoryConfig

GENERATE = "flows/generate.py:generate_shards"
VALIDATE = "flows/validate.py:validate_dataset"


@dataclass(frozen=True)
class DeploymentSpec:
    name: str
    entrypoint: str
    description: str
    tags: tuple[str, ...]
    parameters: dict[str, Any] = field(default_factory=dict)
    cron: str | None = None
    timezone: str | None = None


def deployment_specs(config: FactoryConfig, config_parameter: Any) -> list[DeploymentSpec]:
    """Nightly generation, validation and one on-demand generation per declared style;
    ``config_parameter`` is the ``config`` parameter each deployment passes its flow."""
    tags = ("label-freedom", config.name)
    specs = [
        DeploymentSpec(
            name=f"{config.name}-nightly",
            entrypoint=GENERATE,
            description="Overnight generation up to the sample quota, validation at each "
            "quota step.",
            tags=(*tags, "nightly"),
            parameters={"config": config_parameter},
            cron=config.prefect.nightly_cron,
            timezone=config.prefect.timezone,
        ),
        DeploymentSpec(
            # generate_shards starts this one by name at each quota step.
            name=validation_deployment(config).split("/")[1],
            entrypoint=VALIDATE,
            description="Mask2Former on Gen / Ori / Gen+Ori at a quota step.",
            tags=(*tags, "validation"),
            parameters={"config": config_parameter},
        ),
    ]
    for style in config.generation.styles:
        specs.append(
            DeploymentSpec(
                name=f"{config.name}-style-{style}",
                entrypoint=GENERATE,
                description=f"On demand: generate style {style!r} into its own store "
                f"{config.for_style(style).store.path}.",
                tags=(*tags, "on-demand", f"style:{style}"),
                parameters={"config": config_parameter, "style": style},
            )
        )
    return specs
