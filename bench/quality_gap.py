"""Where Gen. loses against Ori.: the sample format, the image model and the label model apart.

Four segmenters, trained with the config's validation settings and scored on its Val split,
each differing from the one before by one thing:

- Ori.: the Train tiles as they are;
- Ori. crops: the same tiles cut into generation-sized crops (real labels, real images);
- rendered: those crops' real labels with images drawn by the image model
  (``pipeline_lib.generate.render``);
- Gen.: the store's generated labels and images, as many samples as there are crops.

Ori. - Ori. crops is what the sample format costs, Ori. crops - rendered what the images cost,
rendered - Gen. what the labels cost. A last table sets each class's colour spread in the
rendered images beside the real crops': between samples (how far the class's mean colour
moves from one sample to the next) and within one (its texture).

``--seeds`` repeats every row with other segmenter seeds, so the steps can be set beside the
seed spread. Needs the config's trained image model, and for Gen. a store (``lfactory quality
CONFIG`` makes both; ``--rows`` leaves Gen. out); writes under ``<work_dir>/quality-gap/``.

    python -m bench.quality_gap configs/quality.yaml --seeds 0 1
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.cli import command_line, positive_int
from bench.report import format_table, write_results

NAME = "quality_gap"
ROWS = ("Ori.", "Ori. crops", "rendered", "Gen.")
# What each step between two rows costs.
COSTS = (
    ("sample format", "Ori.", "Ori. crops"),
    ("image model", "Ori. crops", "rendered"),
    ("label model", "rendered", "Gen."),
)


def image_settings_digest(cfg: Any) -> str:
    """Names a rendered folder after the image model and the settings it is drawn with."""
    from pipeline_lib.generate.sampler import controlnet_dir
    from pipeline_lib.hashing import json_digest
    from pipeline_lib.models.model_hash import model_hash

    gen = cfg.generation
    fields = ("scheduler", "image_steps", "image_guidance", "resolution", "seed", "dtype")
    settings = {f: getattr(gen, f) for f in fields}
    if gen.windowed:  # another image; unwindowed names stay as they were
        settings |= {"window": gen.window, "stride": gen.stride}
    return json_digest(model_hash(controlnet_dir(cfg)), settings, length=10)


def gap_sources(
    cfg: Any, work: Path, store: Path | None, progress: bool, rows: tuple[str, ...] = ROWS
) -> dict[str, Path]:
    """The Train folder of each of ``rows``; crops and renders are made once and reused."""
    from pipeline_lib.data.loveda import labelled_tiles, list_tiles
    from pipeline_lib.data.tiling import tile_dataset
    from pipeline_lib.generate.render import render_split

    root = Path(cfg.data.root)
    res = cfg.generation.resolution
    crops = work / f"crops-{res}"
    if not crops.is_dir():
        # Val tiles go to the crops' Val side, which nothing trains on: no Val pixel leaks.
        val = [f"Val/{t.scene}/{t.tile_id}" for t in list_tiles(root, ["Val"])]
        tile_dataset(root, crops, size=res, val_ids=val, max_no_data=1.0, progress=progress)
    sources = {"Ori.": root, "Ori. crops": crops}
    if "rendered" in rows:
        sources["rendered"] = work / f"rendered-{image_settings_digest(cfg)}"
        if not sources["rendered"].is_dir():
            render_split(cfg, crops, sources["rendered"], "Train", progress)
    if "Gen." in rows:
        count = len(labelled_tiles(crops, ["Train"]))
        sources["Gen."] = _export_gen(cfg, work, store, count)
    return {row: sources[row] for row in rows}


def _export_gen(cfg: Any, work: Path, store: Path | None, count: int) -> Path:
    """As many of the store's samples as there are crops, as a LoveDA-layout folder."""
    from pipeline_lib.quality import for_current_models, matching_quota
    from pipeline_lib.validate.sources import export_generated

    store = store or for_current_models(matching_quota(cfg)).store.path
    gen_cfg = cfg.model_copy(
        update={
            "store": cfg.store.model_copy(update={"path": store}),
            "validation": cfg.validation.model_copy(update={"output": work}),
        }
    )
    return export_generated(gen_cfg, count)


def colour_spread(root: Path, min_pixels: int = 64) -> dict[str, tuple[float, float]]:
    """Per class: how far its mean colour varies between Train samples, and how much
    texture it has within one (std over samples of the mean RGB; mean std within a sample,
    both averaged over R, G, B) over samples holding at least ``min_pixels`` of it."""
    import numpy as np

    from pipeline_lib.data.classes import VALUE_BY_NAME
    from pipeline_lib.data.loveda import labelled_tiles, read_image, read_mask

    means: dict[str, list] = {name: [] for name in VALUE_BY_NAME}
    texture: dict[str, list] = {name: [] for name in VALUE_BY_NAME}
    for tile in labelled_tiles(root, ["Train"]):
        mask, image = read_mask(tile.mask_path), read_image(tile.image_path).astype(np.float32)
        for name, value in VALUE_BY_NAME.items():
            pixels = image[mask == value]
            if len(pixels) >= min_pixels:
                means[name].append(pixels.mean(0))
                texture[name].append(pixels.std(0).mean())
    return {
        name: (float(np.std(means[name], 0).mean()), float(np.mean(texture[name])))
        for name in VALUE_BY_NAME
        if means[name]
    }


def main(argv: list[str] | None = None) -> None:
    parser = command_line(NAME, __doc__)
    parser.add_argument("config", type=Path, help="a factory config whose models are trained")
    parser.add_argument(
        "--store", type=Path, help="the Gen. store (default: the one `lfactory quality` fills)"
    )
    parser.add_argument(
        "--rows",
        nargs="+",
        choices=ROWS,
        default=list(ROWS),
        help="rows to train (Gen. needs the trained label model's store; leave it out without)",
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="segmenter seeds")
    parser.add_argument("--threads", type=positive_int, default=2, help="torch threads")
    parser.add_argument("--out", type=Path, help="JSON path (default bench/results/)")
    args = parser.parse_args(argv)

    import numpy as np
    import torch

    from pipeline_lib.config import load_config
    from pipeline_lib.data.prepare import prepare_dataset
    from pipeline_lib.validate.experiment import run_data_name

    torch.set_num_threads(args.threads)
    cfg = load_config(args.config)
    prepare_dataset(cfg.data, progress=True)  # synthesised if absent, as `lfactory train` does
    rows = tuple(row for row in ROWS if row in args.rows)
    work = Path(cfg.work_dir) / "quality-gap"
    sources = gap_sources(cfg, work, args.store, progress=True, rows=rows)
    miou: dict[str, list[float]] = {row: [] for row in rows}
    samples: dict[str, int] = {}
    for seed in args.seeds:
        validation = cfg.validation.model_copy(update={"seed": seed, "repeats": 1})
        for row in rows:
            result = run_data_name(row, [sources[row]], Path(cfg.data.eval_root), validation, work)
            miou[row].append(result.miou)
            samples[row] = result.train_samples
    means = {row: float(np.mean(v)) for row, v in miou.items()}
    steps = [
        (what, means[before] - means[after])
        for what, before, after in COSTS
        if before in means and after in means
    ]
    print(
        format_table(
            ["row", "train samples", *(f"mIoU seed {s}" for s in args.seeds), "mean"],
            [[row, samples[row], *miou[row], means[row]] for row in rows],
        )
    )
    if steps:  # only where two rows of a step were trained
        print(format_table(["what it costs", "mIoU lost"], steps))
    spread = {row: colour_spread(sources[row]) for row in ("Ori. crops", "rendered") if row in rows}
    if spread:
        classes = list(next(iter(spread.values())))
        print(
            format_table(
                ["class", *(f"{row} between / within" for row in spread)],
                [
                    [name, *(f"{s[name][0]:.1f} / {s[name][1]:.1f}" for s in spread.values())]
                    for name in classes
                ],
            )
        )
    parameters = {
        "config": str(args.config),
        "store": str(args.store) if args.store else None,
        "rows": list(rows),
        "seeds": args.seeds,
        "threads": args.threads,
        "sources": {row: str(path) for row, path in sources.items()},
    }
    results = {
        "miou": miou,
        "mean": means,
        "train_samples": samples,
        "costs": dict(steps),
        "colour_spread": spread,
    }
    write_results(NAME, parameters, results, args.out)


if __name__ == "__main__":
    main()
