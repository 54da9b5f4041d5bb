"""Tasks: generate a shard into the store (staged, invisible) and commit it (visible)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext

from pipeline_lib.config import FactoryConfig
from pipeline_lib.generate.sampler import Generator, controlnet_dir
from pipeline_lib.generate.shards import commit_staged, stage_generated_shard
from pipeline_lib.models.model_hash import model_hash
from pipeline_lib.store.shard_writer import ShardResult, StagedShard
from tasks.options import GPU_TAG, digest, halve_on_oom


@lru_cache(maxsize=8)
def _hash_of(path: Path, mtime_ns: int) -> str:
    return model_hash(path) if path.exists() else "absent"


def _model_identity(config: FactoryConfig) -> list[str]:
    # Hashing an SD 1.5 folder takes seconds: once per folder state, not once per shard.
    dirs = [Path(config.models.base), Path(config.label_lora.output), controlnet_dir(config)]
    return [_hash_of(d, d.stat().st_mtime_ns if d.exists() else 0) for d in dirs]


@lru_cache(maxsize=1)
def _generator(config_json: str) -> Generator:
    # Pipelines stay loaded across the shards a worker process generates.
    return Generator(FactoryConfig.model_validate_json(config_json))


def _shard_key(_: TaskRunContext, params: dict) -> str:
    config: FactoryConfig = params["config"]
    return digest(
        "generate-shard",
        params["shard_id"],
        config.name,
        config.generation,
        str(config.store.path),
        config.store.shard_size,
        _model_identity(config),
    )


@task(name="generate-shard", tags=[GPU_TAG], cache_key_fn=_shard_key)
def generate_shard_task(config: FactoryConfig, shard_id: int) -> StagedShard:
    """Sample one shard and stage its arrays in the store; nothing is visible until commit."""

    def run(batch_size: int) -> StagedShard:
        cfg = config.model_copy(
            update={"generation": config.generation.model_copy(update={"batch_size": batch_size})}
        )
        return stage_generated_shard(cfg, _generator(cfg.model_dump_json()), shard_id)

    return halve_on_oom(run, config.generation.batch_size, f"generation of shard {shard_id}")


@task(name="commit-shard", cache_policy=NO_CACHE)
def commit_shard_task(config: FactoryConfig, staged: StagedShard) -> ShardResult:
    """Check the staged bytes against their checksums and publish the shard's manifest."""
    return commit_staged(config, staged)
