"""Task: make the Original data set ready (synthesise when configured, then check)."""

from __future__ import annotations

from prefect import task
from prefect.context import TaskRunContext

from pipeline_lib.config import FactoryConfig
from pipeline_lib.data.loveda import fingerprint
from pipeline_lib.data.prepare import DatasetSummary, prepare_dataset
from tasks.options import digest


def _data_key(_: TaskRunContext, params: dict) -> str:
    data = params["config"].data
    # A synthetic set is a function of its settings; a real one is known by its files.
    files = None if data.synth else [fingerprint(p) for p in (data.root, data.eval_root)]
    return digest("prepare-data", data, files)


@task(name="prepare-data", cache_key_fn=_data_key)
def prepare_data(config: FactoryConfig) -> DatasetSummary:
    return prepare_dataset(config.data)
