"""Flow: the whole factory: train the generators, generate to the quota (validating at each
quota step), verify the store."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from prefect import flow

from flows.generate import GenerationSummary, generate_shards
from flows.train import train_models
from pipeline_lib.config import FactoryConfig
from pipeline_lib.store.manifest import manifest_dir
from pipeline_lib.store.verify import VerifyReport
from pipeline_lib.validate.steps import step_dir
from tasks.options import configured
from tasks.store import verify_store_task


@dataclass(frozen=True)
class FactoryResult:
    store: Path
    manifests: Path
    generation: GenerationSummary
    verified: VerifyReport
    reports: tuple[Path, ...]


@flow(name="factory")
def factory(config: FactoryConfig) -> FactoryResult:
    train_models(config)
    generation = generate_shards(config)
    verified = configured(verify_store_task, config)(config)
    reports = tuple(
        step_dir(config.validation.output, s) / "report.md" for s in generation.validated_steps
    )
    return FactoryResult(
        config.store.path, manifest_dir(config.store.path), generation, verified, reports
    )
