"""The units a flow calls: generate a shard, stage its arrays, commit it exactly once.

Staging and committing are separate so that an orchestrator can cache the expensive
generation and retry the cheap commit; :func:`generate_and_commit_shard` does both.
"""

from __future__ import annotations

import logging

from pipeline_lib.config import FactoryConfig
from pipeline_lib.generate.sampler import Generator
from pipeline_lib.store.claims import claim_uncommitted, release_claim
from pipeline_lib.store.manifest import is_committed, read_manifest, read_shard_meta
from pipeline_lib.store.shard_writer import (
    ShardResult,
    StagedShard,
    commit_staged_shard,
    shard_result,
    stage_shard,
)
from pipeline_lib.store.store import SampleStore, create_or_open_store

log = logging.getLogger(__name__)


def open_store_for(cfg: FactoryConfig) -> SampleStore:
    """The store of ``cfg`` (created on first use) with its configured geometry."""
    res = cfg.generation.resolution
    return create_or_open_store(
        cfg.store.path,
        shard_size=cfg.store.shard_size,
        height=res,
        width=res,
        compression_level=cfg.store.compression_level,
        image_codec=cfg.store.image_codec,
    )


def stage_generated_shard(cfg: FactoryConfig, generator: Generator, shard_id: int) -> StagedShard:
    """Generate shard ``shard_id`` and write its arrays, uncommitted.

    The shard is claimed before it is generated: while another live writer holds it,
    ShardClaimedError, and nothing is generated twice. For a shard that is already
    committed nothing is generated or written: its manifest rows come back, and
    committing them is a no-op.
    """
    store = open_store_for(cfg)
    claim = claim_uncommitted(store.path, shard_id)
    if claim is not None:
        try:
            data = generator.generate_shard(shard_id, store.shard_size, store)
        except BaseException:
            release_claim(store.path, shard_id, claim.token)
            raise
        return stage_shard(store, data, claim)
    log.info("shard %d of %s is already committed; not generated", shard_id, store.path)
    meta = read_shard_meta(store.path, shard_id)
    rows = tuple(read_manifest(store.path, shard_id).to_pylist())
    return StagedShard(
        shard_id,
        rows,
        int(meta.get("attempts", len(rows))),
        dict(meta.get("rejected", {})),
        dict(meta.get("config", {})),
    )


def commit_staged(cfg: FactoryConfig, staged: StagedShard) -> ShardResult:
    """Publish a staged shard's manifest after checking its bytes; idempotent."""
    return commit_staged_shard(open_store_for(cfg), staged)


def generate_and_commit_shard(
    cfg: FactoryConfig, generator: Generator, shard_id: int
) -> ShardResult:
    """Generate shard ``shard_id`` and commit it; an already committed shard is only read."""
    store = open_store_for(cfg)
    if is_committed(store.path, shard_id):
        return shard_result(store, shard_id, already_committed=True)
    return commit_staged(cfg, stage_generated_shard(cfg, generator, shard_id))
