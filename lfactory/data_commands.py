"""``lfactory data ...``: check, synthesise, tile and export LoveDA-layout data sets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipeline_lib.data.loveda import check_dataset, export_mmseg
from pipeline_lib.data.synth import MIN_SIZE, MIN_TILES, make_synthetic_loveda
from pipeline_lib.data.tiling import DEFAULT_MAX_NO_DATA, SPLIT_RULE, tile_dataset
from pipeline_lib.errors import ConfigError

data_app = typer.Typer(
    help="Check, synthesise, tile and export LoveDA-layout data sets.", no_args_is_help=True
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


def _val_tiles(value: str | None) -> int | str | None:
    if value is None or value == "all":
        return value
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"--val-tiles {value!r} is neither a number nor 'all'") from None


@data_app.command(
    "tile",
    help="Cut a LoveDA-layout folder into a LoveDA-layout set of SIZE crops, each source tile "
    "whole to Train or to Val, and record each crop's source tile, offset and scale in "
    "OUT/crops.csv (arguments, seed and split in OUT/tiling.json).\n\n"
    f"How --val-tiles K chooses Val: {SPLIT_RULE}.",
)
def tile(
    root: RootArg,
    out: Annotated[Path, typer.Argument(help="new folder for the crops (absent or empty)")],
    size: Annotated[int, typer.Option("--size", "-s", help="crop side in pixels")],
    val_tiles: Annotated[
        str | None,
        typer.Option(
            "--val-tiles",
            help="source tiles to Val: a number K (the rest to Train), or 'all' "
            "(an evaluation-only set)",
        ),
    ] = None,
    val_ids: Annotated[
        str | None,
        typer.Option(
            "--val-ids",
            help="comma-separated source tiles to Val instead of --val-tiles: "
            "id, scene/id or split/scene/id (e.g. 2,11,17)",
        ),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="seed of the Val draw")] = 0,
    resize: Annotated[
        int | None,
        typer.Option(
            "--resize",
            help="first resize each tile so its side is R px (a coarser ground sampling "
            "distance: 1024 -> 256 is 4x coarser)",
        ),
    ] = None,
    max_no_data: Annotated[
        float,
        typer.Option("--max-no-data", help="drop crops with a larger share of no-data pixels"),
    ] = DEFAULT_MAX_NO_DATA,
) -> None:
    ids = [i.strip() for i in val_ids.split(",") if i.strip()] if val_ids is not None else None
    summary = tile_dataset(
        root,
        out,
        size,
        val_tiles=_val_tiles(val_tiles),
        val_ids=ids,
        seed=seed,
        resize=resize,
        max_no_data=max_no_data,
        progress=True,
    )
    typer.echo(f"wrote {out}: {sum(summary.crops.values())} crops of {size}x{size} px")
    for split, count in summary.crops.items():
        missing = summary.missing[split]
        gap = f"; no {', '.join(missing)}" if missing else "; every class present"
        tiles = summary.tiles[split]
        typer.echo(f"  {split}: {count} crops from {len(tiles)} tiles{gap}")
        if split == "Val" and "Train" in summary.tiles:  # with 'all', Val is every tile
            typer.echo(f"    Val tiles: {', '.join(tiles)}")
    typer.echo(f"  dropped {summary.dropped} crop(s) more than {max_no_data:g} no-data")


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
