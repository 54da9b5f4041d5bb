"""Task: re-read every committed sample of the store against its manifest checksums."""

from __future__ import annotations

from prefect import task
from prefect.context import TaskRunContext

from pipeline_lib.config import FactoryConfig
from pipeline_lib.store.manifest import manifest_dir, manifest_files
from pipeline_lib.store.verify import VerifyReport, verify_store
from tasks.options import digest


def _manifests_key(_: TaskRunContext, params: dict) -> str:
    # A store is re-verified whenever its set of committed shards changes.
    store = params["config"].store.path
    return digest("verify-store", str(manifest_dir(store)), manifest_files(store))


@task(name="verify-store", cache_key_fn=_manifests_key)
def verify_store_task(config: FactoryConfig) -> VerifyReport:
    return verify_store(config.store.path).require_ok()
