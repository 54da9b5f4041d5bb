"""Flow: train Mask2Former on Gen. / Ori. / Gen.+Ori. (and each mixing ratio) and publish the
research's table."""

from __future__ import annotations

from collections.abc import Sequence

from prefect import flow

from pipeline_lib.choices import DATA_LABELS
from pipeline_lib.config import FactoryConfig
from pipeline_lib.report.sample_grid import write_sample_grid
from pipeline_lib.validate import ValidationReport, ValidationResult
from pipeline_lib.validate.steps import step_dir
from tasks.artifacts import publish_validation
from tasks.options import configured
from tasks.validation import gather_sources, validate_data, write_report


def validation_deployment(config: FactoryConfig) -> str:
    """The ``flow/deployment`` name that ``lfactory serve`` registers for this config."""
    return f"validate-dataset/{config.name}-validate"


@flow(name="validate-dataset")
def validate_dataset(
    config: FactoryConfig,
    quota_step: int | None = None,
    trained: Sequence[ValidationResult] = (),
) -> ValidationReport:
    """``quota_step`` limits Gen. to the store's first that-many samples (None: all of them).
    ``trained``: rows already validated elsewhere (by data name), reported as they are."""
    work_dir = step_dir(config.validation.output, quota_step)
    done = {row.data_name: row for row in trained}
    sources = gather_sources(config, quota_step)
    validate = configured(validate_data, config)
    results = [
        done[name] if name in done else validate(config, name, folders, work_dir)
        for name, folders in sources.items()
    ]
    report = write_report(results, work_dir, config.validation.mix_ratios)
    uses_gen = bool(config.validation.mix_ratios) or any(
        d in ("gen", "both") for d in config.validation.data
    )
    grid = write_sample_grid(config.store.path, work_dir / "samples.png") if uses_gen else None
    publish_validation(config.name, report, quota_step, grid)
    return report


def validate_original(config: FactoryConfig, quota_step: int | None = None) -> ValidationResult:
    """The Ori. row of ``validate_dataset(config, quota_step)`` trained ahead of it, for the
    steps that need it before anything is generated: pass it to ``validate_dataset`` as
    ``trained`` (with the same config it would also find it cached)."""
    work_dir = step_dir(config.validation.output, quota_step)
    # Without the mixing rows, which need generated samples; the row's cache key omits them.
    alone = config.validation.model_copy(update={"mix_ratios": []})
    sources = gather_sources(config.model_copy(update={"validation": alone}), quota_step, ["ori"])
    ori = DATA_LABELS["ori"]
    return configured(validate_data, config)(config, ori, sources[ori], work_dir)
