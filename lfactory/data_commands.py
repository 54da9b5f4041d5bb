"""``lfactory data ...``: check, synthesise and export LoveDA-layout data sets."""

from __future__ import annotations

from pathlib import Path

import typer

from pipeline_lib.data.loveda import check_dataset, export_mmseg

data_app = typer.Typer(help="Check, synthesise and export LoveDA-layout data sets.", no_args_is_help=True)


@data_app.command("check")
def check(root: Path = typer.Argument(..., help="LoveDA release-layout folder")) -> None:
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


@data_app.command("export-mmseg")
def export(
    root: Path = typer.Argument(..., help="LoveDA release-layout folder"),
    out: Path = typer.Argument(..., help="new folder for img_dir/ and ann_dir/"),
) -> None:
    """Export Train/Val to mmsegmentation's layout (img_dir/{train,val}, ann_dir/{train,val})."""
    check_dataset(root)
    counts = export_mmseg(root, out)
    typer.echo(f"wrote {out}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")
