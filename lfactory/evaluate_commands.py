"""``lfactory evaluate``: score what a validation run trained on any LoveDA-layout folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer


def evaluate(
    run_dir: Annotated[
        Path,
        typer.Argument(help="a validation step folder: <validation.output>/all or .../step-000384"),
    ],
    eval_root: Annotated[
        Path,
        typer.Option("--eval-root", help="LoveDA-layout folder whose Val split is scored"),
    ],
    name: Annotated[
        str | None,
        typer.Option("--name", help="report folder under RUN_DIR/eval (default: from --eval-root)"),
    ] = None,
    device: Annotated[
        Literal["auto", "cpu", "cuda"], typer.Option("--device", help="auto: cuda when present")
    ] = "auto",
    slide: Annotated[
        bool | None,
        typer.Option(
            "--slide/--whole",
            help="predict in crop-sized windows, or whole tiles (default: as each row was "
            "validated, validation.slide)",
        ),
    ] = None,
) -> None:
    """Score the segmenters RUN_DIR trained (Gen., Ori., Gen.+Ori.) on another evaluation
    set without training again; write report.json, report.md and iou_bars.png under
    RUN_DIR/eval/NAME."""
    import logging

    from pipeline_lib.validate.evaluate import evaluate_run

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    report = evaluate_run(run_dir, eval_root, name, device=device, progress=True, slide=slide)
    typer.echo(Path(report.files["markdown"]).read_text())
    for kind, path in report.files.items():
        typer.echo(f"{kind}: {path}")


def register(app: typer.Typer) -> None:
    """Add ``lfactory evaluate`` to the main app."""
    app.command("evaluate")(evaluate)
