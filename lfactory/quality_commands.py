"""``lfactory quality``: the quality proof as one cached Prefect flow."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

ConfigArg = Annotated[Path, typer.Argument(help="factory config (YAML), e.g. configs/quality.yaml")]


def quality(config_path: ConfigArg) -> None:
    """Train every stage, generate as many labelled pixels as Train, validate Gen. / Ori. /
    Gen.+Ori., score consistency; writes quality.json, quality.md and quality_grid.png in
    the config's work_dir. Every stage is a cached task: a re-run repeats nothing.

    Uses the Prefect API in PREFECT_API_URL when set, else a local server for the run.
    """
    from deployments.local_server import api_or_local_server, ui_url
    from deployments.serve import ensure_gpu_limit
    from flows.quality import quality as quality_flow
    from lfactory.factory_commands import prefect_home
    from pipeline_lib.config import load_config
    from pipeline_lib.data.prepare import check_data_paths

    config = load_config(config_path)
    check_data_paths(config.data)
    with api_or_local_server(prefect_home(config)) as api:
        typer.echo(f"Prefect UI: {ui_url(api)}  (artifacts: quality table and grid)")
        ensure_gpu_limit(config.prefect.gpu_concurrency)
        report = quality_flow(config)
    typer.echo(Path(report.files["markdown"]).read_text())
    for kind, path in report.files.items():
        typer.echo(f"{kind}: {path}")


def register(app: typer.Typer) -> None:
    app.command("quality")(quality)
