"""``lfactory data ...``: check, synthesise and export LoveDA-layout data sets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipeline_lib.data.loveda import check_dataset, export_mmseg
from pipeline_lib.data.synth import MIN_SIZE, MIN_TILES, make_synthetic_loveda

data_app = typer.Typer(
    help="Check, synthesise and export LoveDA-layout data sets.", no_args_is_help=True
)


RootArg = Annotated[Path, typer.Argument(help="LoveDA release-layout folder")]


@data_app.command("check")
def check(root: RootArg) -> None:
    """Check every tile; print tiles per split/scene and class pixel fractions.

    Exits 2 and lists the offending paths on bad input.
    """
    report = check_dataset(root, progress=True)
    typer.echo(f"{root}: {report.total_tiles} tiles")
    for (split, scene), count in report.tiles.items():
        typer.echo(f"  {split}/{scene}: {count}")
    typer.echo(f"class pixel fractions (no-data {report.no_data_fraction():.4f} of all pixels):")
    for name, share in report.class_fractions().items():
        typer.echo(f"  {name:<12} {share:.4f}")


@data_app.command("synth")
def synth(
    out: Annotated[Path, typer.Argument(help="new folder for the data set (absent or empty)")],
    tiles: Annotated[
        int,
        typer.Option(
            "--tiles",
            "-n",
            min=MIN_TILES,
            help="tiles per split (Train and Val), half of them Urban",
        ),
    ] = 24,
    size: Annotated[
        int, typer.Option("--size", "-s", min=MIN_SIZE, help="tile side in pixels (LoveDA: 1024)")
    ] = 128,
    seed: Annotated[
        int, typer.Option("--seed", help="random seed; the same seed gives identical files")
    ] = 0,
) -> None:
    """Make a synthetic data set in LoveDA's release layout (Train/Val x Urban/Rural)."""
    summary = make_synthetic_loveda(out, tiles=tiles, size=size, seed=seed, progress=True)
    typer.echo(f"wrote {out}: {summary.total_tiles} tiles of {size}x{size} px, seed {seed}")
    for (split, scene), count in summary.tiles.items():
        typer.echo(f"  {split}/{scene}: {count}")
    for scene, fractions in summary.class_fractions.items():
        mix = ", ".join(f"{name} {share:.3f}" for name, share in fractions.items())
        typer.echo(f"  {scene} class mix: {mix}")


@data_app.command("export-mmseg")
def export(
    root: RootArg,
    out: Annotated[Path, typer.Argument(help="new folder for img_dir/ and ann_dir/")],
) -> None:
    """Export Train/Val to mmsegmentation's layout (img_dir/{train,val}, ann_dir/{train,val})."""
    check_dataset(root)
    counts = export_mmseg(root, out)
    typer.echo(f"wrote {out}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")
