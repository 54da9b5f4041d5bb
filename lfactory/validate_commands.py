"""``lfactory validate``: train Mask2Former on Gen./Ori./Gen.+Ori. data and report per-class IoU."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipeline_lib.config import load_config


def validate(
    config: Annotated[Path, typer.Argument(help="factory YAML config")],
    data: Annotated[
        str,
        typer.Option(
            "--data",
            "-d",
            help="gen | ori | both | all (all = gen, ori, both and validation.mix_ratios)",
        ),
    ] = "all",
    iters: Annotated[
        int | None, typer.Option("--iters", min=1, help="training iterations (overrides config)")
    ] = None,
    samples: Annotated[
        int | None,
        typer.Option(
            "--samples",
            "-n",
            min=1,
            help="Gen. trains on the store's first N committed samples (default: all of them)",
        ),
    ] = None,
    eval_root: Annotated[
        Path | None,
        typer.Option(
            "--eval-root",
            help="LoveDA-layout folder whose Val split is scored (overrides data.eval_root)",
        ),
    ] = None,
    store: Annotated[
        str | None,
        typer.Option(
            "--store",
            help="store path or URL that Gen. trains on (overrides store.path; a quality "
            "run's store is work_dir/store-<digest>.zarr)",
        ),
    ] = None,
    seed: Annotated[
        int | None,
        typer.Option("--seed", min=0, help="segmenter seed (overrides validation.seed)"),
    ] = None,
) -> None:
    """Train one model per data choice, evaluate on data.eval_root's Val, write the report.

    Progress: mmengine logs each interval with an ETA; evaluation shows a progress bar.
    """
    import logging

    from pipeline_lib.data.prepare import prepare_dataset
    from pipeline_lib.errors import ConfigError
    from pipeline_lib.validate import DATA_LABELS, run_validation, train_sources
    from pipeline_lib.validate.evaluate import require_eval_split
    from pipeline_lib.validate.steps import step_dir

    options = (*DATA_LABELS, "all")
    if data not in options:
        raise ConfigError(f"--data {data!r} is unknown; choose one of {', '.join(options)}")
    overrides: dict = {"validation": {}}
    if iters is not None:
        overrides["validation"]["iters"] = iters
    if data != "all":
        overrides["validation"]["mix_ratios"] = []  # one data name trains that row alone
    if eval_root is not None:
        overrides["data"] = {"eval_root": str(eval_root)}
    if store is not None:
        overrides["store"] = {"path": store}
    if seed is not None:
        overrides["validation"]["seed"] = seed
    cfg = load_config(config, overrides)
    if eval_root is not None:
        # Before preparing data or training anything: a wrong folder fails in a second.
        require_eval_split(cfg.data.eval_root)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    choices = list(DATA_LABELS) if data == "all" else [data]
    prepare_dataset(cfg.data, progress=True)
    sources = train_sources(choices, cfg, samples)
    report = run_validation(
        sources,
        Path(cfg.data.eval_root),
        cfg.validation,
        step_dir(cfg.validation.output, None),  # where the flow writes an ad hoc round
        progress=True,
    )
    typer.echo(Path(report.files["markdown"]).read_text())
    for kind, path in report.files.items():
        typer.echo(f"{kind}: {path}")


def register(app: typer.Typer) -> None:
    """Add ``lfactory validate`` to the main app."""
    app.command("validate")(validate)
