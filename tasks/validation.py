"""Tasks: gather the training folders of a quota step, train and score one data name, report."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext

from pipeline_lib.config import FactoryConfig
from pipeline_lib.data.loveda import fingerprint
from pipeline_lib.validate import (
    ValidationReport,
    ValidationResult,
    assemble_report,
    run_data_name,
    train_sources,
)
from tasks.options import GPU_TAG, digest, refuse_on_oom


@task(name="gather-sources", cache_policy=NO_CACHE)
def gather_sources(
    config: FactoryConfig, samples: int | None, data: list[str] | None = None
) -> dict[str, list[Path]]:
    """Each data name's LoveDA folders (then each mixing ratio's); Gen. is the store's first
    ``samples`` samples. ``data``: these choices instead of ``validation.data``."""
    return train_sources(config.validation.data if data is None else data, config, samples)


def _validate_key(_: TaskRunContext, params: dict) -> str:
    config: FactoryConfig = params["config"]
    sources = [fingerprint(p) for p in params["sources"]]
    # A row's model does not depend on which other ratios the sweep lists, nor a
    # one-source row's on how mixed sets draw.
    unused = {"mix_ratios"} | ({"mix_by"} if len(sources) == 1 else set())
    return digest(
        "validate",
        config.validation.model_dump(mode="json", exclude=unused),
        params["name"],
        str(params["work_dir"]),
        sources,
        fingerprint(config.data.eval_root),
    )


@task(name="validate-data", tags=[GPU_TAG], cache_key_fn=_validate_key)
def validate_data(
    config: FactoryConfig, name: str, sources: list[Path], work_dir: Path
) -> ValidationResult:
    """Mask2Former on one data name (Gen. / Ori. / Gen.+Ori.), scored on the eval Val split."""
    cfg = config.validation
    # Mask2Former trains without gradient accumulation here: a smaller batch would be
    # another experiment than the one the report names, so an OOM is the user's to settle.
    return refuse_on_oom(
        lambda: run_data_name(name, sources, config.data.eval_root, cfg, work_dir, progress=False),
        f"validation on {name} at batch size {cfg.batch_size}",
        "lower validation.batch_size or validation.crop_size in the config",
    )


@task(name="write-report", cache_policy=NO_CACHE)
def write_report(
    results: list[ValidationResult], work_dir: Path, mix_ratios: list[float]
) -> ValidationReport:
    return assemble_report(results, work_dir, mix_ratios)
