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
from tasks.options import GPU_TAG, digest, halve_on_oom


@task(name="gather-sources", cache_policy=NO_CACHE)
def gather_sources(config: FactoryConfig, samples: int | None) -> dict[str, list[Path]]:
    """Each data name's LoveDA folders; Gen. is the store's first ``samples`` samples."""
    return train_sources(config.validation.data, config, samples)


def _validate_key(_: TaskRunContext, params: dict) -> str:
    config: FactoryConfig = params["config"]
    sources = [fingerprint(p) for p in params["sources"]]
    return digest(
        "validate",
        config.validation,
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
    return halve_on_oom(
        lambda b: run_data_name(
            name,
            sources,
            config.data.eval_root,
            cfg.model_copy(update={"batch_size": b}),
            work_dir,
            progress=False,
        ),
        cfg.batch_size,
        f"validation on {name}",
    )


@task(name="write-report", cache_policy=NO_CACHE)
def write_report(results: list[ValidationResult], work_dir: Path) -> ValidationReport:
    return assemble_report(results, work_dir)
