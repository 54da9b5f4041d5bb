"""The sample store: Zarr v3 arrays of images and labels plus per-shard Parquet manifests."""

from pipeline_lib.store.export import export_store
from pipeline_lib.store.manifest import (
    MANIFEST_SCHEMA,
    SCHEMA_VERSION,
    committed_shard_ids,
    manifest_dataset,
    read_manifests,
)
from pipeline_lib.store.shard_writer import (
    ShardData,
    ShardResult,
    StagedShard,
    commit_shard,
    commit_staged_shard,
    stage_shard,
)
from pipeline_lib.store.store import (
    SampleStore,
    committed_count,
    create_or_open_store,
    plan_shards,
)
from pipeline_lib.store.verify import (
    StoreStats,
    VerifyReport,
    repair_store,
    store_stats,
    verify_store,
)


def __getattr__(name: str):
    # The torch Dataset loads lazily: writing a store must not import torch.
    if name == "StoreDataset":
        from pipeline_lib.store.torch_dataset import StoreDataset

        return StoreDataset
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "MANIFEST_SCHEMA",
    "SCHEMA_VERSION",
    "SampleStore",
    "ShardData",
    "ShardResult",
    "StagedShard",
    "StoreDataset",
    "StoreStats",
    "VerifyReport",
    "commit_shard",
    "commit_staged_shard",
    "committed_count",
    "committed_shard_ids",
    "create_or_open_store",
    "export_store",
    "manifest_dataset",
    "plan_shards",
    "read_manifests",
    "repair_store",
    "stage_shard",
    "store_stats",
    "verify_store",
]
