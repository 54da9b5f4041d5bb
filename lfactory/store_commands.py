"""``lfactory generate``, ``render``, ``regenerate`` and ``store ...``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from pipeline_lib.config import FactoryConfig, load_config
from pipeline_lib.data.loveda import write_png
from pipeline_lib.data.palette import colourise
from pipeline_lib.store import (
    committed_count,
    export_store,
    plan_shards,
    repair_store,
    store_stats,
    verify_store,
)
from pipeline_lib.store.export import FORMATS

STORE_HELP = "sample store: a folder, or a URL such as s3://bucket/prefix/store.zarr"

store_app = typer.Typer(help="Verify, summarise and export a sample store.", no_args_is_help=True)


def _config(path: Path | None, store: str | None = None) -> FactoryConfig | None:
    if path is None:
        return None
    overrides = {"store": {"path": str(store)}} if store is not None else None
    return load_config(path, overrides)


def generate(
    config: Annotated[Path, typer.Argument(help="factory config YAML")],
    samples: Annotated[
        int | None, typer.Option("--samples", "-n", help="samples wanted (default: quota)")
    ] = None,
    store: Annotated[
        str | None, typer.Option("--store", help="store path or URL (default: store.path)")
    ] = None,
) -> None:
    """Generate shards until the store holds SAMPLES; a re-run fills only missing shards.

    Rejected draws are made up with further shards, as in the factory's flow.
    """
    from tqdm import tqdm

    from pipeline_lib.generate import Generator, generate_and_commit_shard
    from pipeline_lib.quota import generate_to_quota

    cfg = _config(config, store)
    wanted = samples or cfg.quota.samples
    size = cfg.store.shard_size
    committed = committed_count(cfg.store.path)
    plan = plan_shards(cfg.store.path, wanted, size, top_up=True)
    typer.echo(
        f"{cfg.store.path}: {committed} samples committed, "
        f"{len(plan)} shard(s) of {size} to generate"
    )
    if not plan:
        return
    generator = Generator(cfg)
    start = time.perf_counter()
    kept = rejected = 0
    bar = tqdm(total=wanted, initial=min(committed, wanted), unit="sample", desc="generating")
    with bar:

        def after_shard(result, now_committed: int) -> None:
            nonlocal kept, rejected
            kept, rejected = kept + result.kept, rejected + result.rejected
            bar.update(min(now_committed, wanted) - bar.n)
            bar.set_postfix(
                kept_per_s=f"{kept / (time.perf_counter() - start):.2f}",
                reject=f"{rejected / max(kept + rejected, 1):.1%}",
            )

        run = generate_to_quota(
            cfg.store.path,
            wanted,
            size,
            lambda shard_id: generate_and_commit_shard(cfg, generator, shard_id),
            after_shard,
        )
    typer.echo(
        f"committed {kept} samples in {run.shards_written} shard(s), rejected {run.rejected}; "
        f"store now holds {run.committed}"
    )


def render(
    config: Annotated[Path, typer.Argument(help="factory config YAML (its image model)")],
    root: Annotated[Path, typer.Argument(help="LoveDA-layout folder whose masks are drawn")],
    out: Annotated[Path, typer.Argument(help="new folder for the pairs (absent or empty)")],
    split: Annotated[str, typer.Option("--split", help="which split of ROOT to render")] = "Train",
) -> None:
    """Draw an image for every label map of ROOT's SPLIT with the config's image model and
    write the pairs (masks unchanged) as a LoveDA-layout folder OUT.

    Masks must be generation.resolution px square: cut larger tiles first with
    `lfactory data tile ROOT CROPS --size N`.
    """
    from pipeline_lib.generate.render import render_split

    count = render_split(load_config(config), root, out, split)
    typer.echo(f"rendered {count} label maps of {root}/{split} into {out}")


def regenerate(
    store: Annotated[str, typer.Argument(help=STORE_HELP)],
    sample_id: Annotated[str, typer.Argument(help="sample id from the manifest")],
    config: Annotated[
        Path | None, typer.Option("--config", help="use this config's models")
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="folder for label.png, label_colour.png, image.png")
    ] = None,
) -> None:
    """Rebuild one sample from its manifest row; exit 1 when it differs from the stored bytes."""
    from pipeline_lib.generate import regenerate as rebuild

    result = rebuild(store, sample_id, _config(config))
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        write_png(out / "label.png", result.label)
        write_png(out / "label_colour.png", colourise(result.label))
        write_png(out / "image.png", result.image)
        typer.echo(f"wrote {out}/label.png, label_colour.png, image.png")
    typer.echo(
        f"{sample_id}: label {'matches' if result.label_matches else 'DIFFERS'}, "
        f"image {'matches' if result.image_matches else 'DIFFERS'}"
        + ("" if result.models_match else " (models differ from the recorded hashes)")
    )
    if not result.identical:
        raise typer.Exit(1)


@store_app.command("verify")
def verify(store: Annotated[str, typer.Argument(help=STORE_HELP)]) -> None:
    """Re-read every committed sample against its sha256; list every problem and exit 2
    on any; orphans (`store repair` removes them) and shards live writers hold do not fail it."""
    report = verify_store(store)
    typer.echo(f"{store}: {report.shards} shard(s), {report.samples} sample(s)")
    for line in report.in_progress:
        typer.echo(f"  in progress: {line}")
    for line in report.orphans:
        typer.echo(f"  orphan: {line}")
    report.require_ok()
    typer.echo("ok")


@store_app.command("repair")
def repair(store: Annotated[str, typer.Argument(help=STORE_HELP)]) -> None:
    """Delete what `store verify` lists as orphans (temp files, data of shards that never
    committed, claims of dead writers); committed shards and shards live writers hold are
    never touched."""
    removed = repair_store(store)
    for leftover in removed:
        typer.echo(f"  removed {leftover}")
    typer.echo(f"{store}: removed {len(removed)} leftover(s)")


@store_app.command("stats")
def stats(store: Annotated[str, typer.Argument(help=STORE_HELP)]) -> None:
    """Counts, class fractions (against generation.class_targets), QA and reject rates,
    from the manifests."""
    s = store_stats(store)
    typer.echo(
        f"{store}: {s.samples} samples in {s.shards} shard(s), {s.attempts} draws, "
        f"reject rate {s.reject_rate:.1%}"
    )
    for reason, count in sorted(s.reject_reasons.items()):
        typer.echo(f"  rejected {reason}: {count}")
    typer.echo(
        f"  mean off-palette share {s.mean_off_palette_share:.4f}, "
        f"small-fragment share {s.mean_small_fragment_share:.4f}"
    )
    typer.echo("  styles: " + ", ".join(f"{k} {v}" for k, v in sorted(s.styles.items())))
    typer.echo("  class fractions:")
    for name, share in s.class_fractions.items():
        target = s.class_targets.get(name)
        against = "" if target is None else f"  target {target:.4f} ({share - target:+.4f})"
        typer.echo(f"    {name:<12} {share:.4f}{against}")


@store_app.command("export")
def export(
    store: Annotated[str, typer.Argument(help=STORE_HELP)],
    out: Annotated[Path, typer.Argument(help="new folder")],
    format: Annotated[str, typer.Option("--format", help=" | ".join(FORMATS))] = "loveda",
    config: Annotated[
        Path | None, typer.Option("--config", help="config whose store.geo georeferences")
    ] = None,
) -> None:
    """Export committed samples as LoveDA layout (Train/<scene>), mmseg layout or GeoTIFFs."""
    cfg = _config(config)
    counts = export_store(store, out, format, geo=cfg.store.geo if cfg else None)
    typer.echo(f"wrote {out}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))


def register(app: typer.Typer) -> None:
    app.command("generate")(generate)
    app.command("render")(render)
    app.command("regenerate")(regenerate)
    app.add_typer(store_app, name="store")
