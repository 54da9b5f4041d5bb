"""``lfactory run``, ``serve`` and ``server``: the factory under Prefect."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from pipeline_lib.config import FactoryConfig, load_config

ConfigArg = Annotated[
    Path, typer.Argument(help="factory config (YAML)", exists=True, dir_okay=False)
]


def prefect_home(config: FactoryConfig) -> Path:
    # A user's own PREFECT_HOME wins; otherwise the factory keeps its database beside its data.
    return Path(os.environ.get("PREFECT_HOME") or config.work_dir / "prefect")


def run(config_path: ConfigArg) -> None:
    """Run the whole factory once: data, both trainings, generation to the quota, validation.

    Uses the Prefect API in PREFECT_API_URL when set, else a local server on SQLite for the
    duration of the run (watch it in the UI at the address printed).
    """
    from deployments.local_server import api_or_local_server, ui_url
    from deployments.serve import ensure_gpu_limit
    from flows.factory import factory
    from pipeline_lib.data.prepare import check_data_paths

    config = load_config(config_path)
    check_data_paths(config.data)  # a wrong folder fails now, not after a server start
    with api_or_local_server(prefect_home(config)) as api:
        typer.echo(f"Prefect UI: {ui_url(api)}  (flow runs; artifacts: progress, shards, mIoU)")
        ensure_gpu_limit(config.prefect.gpu_concurrency)
        result = factory(config)
    generation = result.generation
    typer.echo(
        f"store:     {result.store}  ({generation.committed} samples; "
        f"{generation.shards_written} shards and {generation.rejected} rejects in this run)"
    )
    typer.echo(f"manifests: {result.manifests}/*.parquet")
    verified = result.verified
    typer.echo(
        f"verified:  {verified.samples} samples in {verified.shards} shards match their "
        f"checksums ({len(verified.orphans)} orphan(s))"
    )
    for report in result.reports:
        typer.echo(f"report:    {report}")
    typer.echo(f"UI again:  lfactory server {config_path}")


def serve(config_path: ConfigArg) -> None:
    """Serve the nightly, per-style and validation deployments (Ctrl-C stops).

    Starts a local Prefect server on 127.0.0.1 when PREFECT_API_URL is not set.
    """
    from deployments.local_server import api_or_local_server, ui_url
    from deployments.serve import serve_factory

    config = load_config(config_path)
    with api_or_local_server(prefect_home(config)) as api:
        typer.echo(f"Prefect UI: {ui_url(api)}")
        serve_factory(config)


def server(
    config_path: ConfigArg,
    port: Annotated[int, typer.Option(help="port on 127.0.0.1")] = 4200,
) -> None:
    """Start the local Prefect server (UI) on this config's database and wait (Ctrl-C stops)."""
    import time

    from deployments.local_server import local_server, ui_url

    config = load_config(config_path)
    with local_server(prefect_home(config), port=port) as api:
        typer.echo(f"Prefect UI: {ui_url(api)}  (Ctrl-C stops)")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


def register(app: typer.Typer) -> None:
    app.command("run")(run)
    app.command("serve")(serve)
    app.command("server")(server)
