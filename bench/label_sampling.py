"""Label sampler settings against label fidelity, on a config's trained label model.

For each combination of label scheduler, step count, guidance scale, time shift and the
timestep below which it applies, the factory's ``Generator`` draws the same ``--samples``
labels (the attempts of shard 0, so every setting sees the same seeds and prompts) and
scores them as generation does: the share of pixels off-palette before snapping (mean and
p95), the share QA would reject, the class-fraction total-variation distance of the snapped
maps against the Train split, classes per map, and labels per second; a second table gives
each setting's drawn class shares beside Train's (and, for a mix-conditioned label model,
the mean of the mixes it was asked for). Nothing is written to a store. It needs the
config's trained models (the label model at least: ``lfactory train base`` and
``label-lora``, or ``lfactory quality``), so ``make bench`` does not run it.

    python -m bench.label_sampling configs/quality.yaml --steps 50 100 --guidance 1 2
    python -m bench.label_sampling configs/quality.yaml --time-shifts 0 400 --shift-below 300 1000
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.cli import command_line, positive_int
from bench.report import format_table, write_results
from pipeline_lib.choices import SCHEDULER_CLASSES

NAME = "label_sampling"


def score_setting(
    cfg: Any, samples: int, train: dict[str, float]
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Draw ``samples`` labels with ``cfg.generation`` and score them against Train's class
    shares ``train``; the drawn shares (and the asked mixes' mean, for a mix-conditioned
    model) beside."""
    from tqdm import tqdm

    from pipeline_lib.data.classes import CLASS_NAMES, MAX_VALUE, fractions_from_counts
    from pipeline_lib.generate.sampler import Generator
    from pipeline_lib.models.class_mix import draw_mixes
    from pipeline_lib.report.fidelity import total_variation

    generator = Generator(cfg, with_images=False)
    draws = [generator.draw(0, attempt) for attempt in range(samples)]
    size = cfg.generation.batch_size
    start = time.perf_counter()
    labels = []
    # A windowed 256 px setting takes minutes: show its labels as they come.
    with tqdm(total=samples, desc="labels", unit="label", leave=False) as bar:
        for first in range(0, samples, size):
            batch = draws[first : first + size]
            labels += generator.sample_labels(batch)
            bar.update(len(batch))
    seconds = time.perf_counter() - start
    off = np.array([qa.off_palette_share for _, _, qa in labels])
    counts = sum(np.bincount(m.ravel(), minlength=MAX_VALUE + 1) for _, m, _ in labels)
    drawn = fractions_from_counts(counts)
    shares = {"drawn": drawn}
    if generator.mix_bank is not None:
        asked = draw_mixes(generator.mix_bank, [d.seed for d in draws]).mean(0)
        shares["asked"] = {name: float(v) for name, v in zip(CLASS_NAMES, asked, strict=True)}
    row = {
        "off_palette_mean": float(off.mean()),
        "off_palette_p95": float(np.quantile(off, 0.95)),
        "rejected_share": float(np.mean([not qa.kept for _, _, qa in labels])),
        "class_fraction_tv": total_variation(drawn, train),
        "classes_per_label": float(np.mean([len(np.unique(m[m > 0])) for _, m, _ in labels])),
        "labels_per_s": samples / seconds,
    }
    return row, shares


def main(argv: list[str] | None = None) -> None:
    parser = command_line(NAME, __doc__)
    parser.add_argument("config", type=Path, help="a factory config whose models are trained")
    parser.add_argument("--samples", type=positive_int, default=64, help="labels per setting")
    parser.add_argument("--steps", type=positive_int, nargs="+", help="label step counts")
    parser.add_argument("--guidance", type=float, nargs="+", help="label guidance scales")
    parser.add_argument(
        "--time-shifts", type=int, nargs="+", help="label_time_shift values (training steps)"
    )
    parser.add_argument(
        "--shift-below",
        type=int,
        nargs="+",
        help="label_time_shift_below values: shift only the steps under this timestep",
    )
    parser.add_argument(
        "--schedulers", nargs="+", choices=list(SCHEDULER_CLASSES), help="label schedulers"
    )
    parser.add_argument("--threads", type=positive_int, default=2, help="torch threads")
    parser.add_argument("--out", type=Path, help="JSON path (default bench/results/)")
    args = parser.parse_args(argv)

    import torch
    from tqdm import tqdm

    from pipeline_lib.config import load_config
    from pipeline_lib.data.loveda import split_stats

    torch.set_num_threads(args.threads)
    cfg = load_config(args.config)
    gen = cfg.generation
    settings = [
        {
            "label_scheduler": scheduler,
            "label_steps": steps,
            "label_guidance": guidance,
            "label_time_shift": shift,
            # Without a shift the threshold changes nothing: one row, not one per threshold.
            "label_time_shift_below": below if shift else gen.label_time_shift_below,
        }
        for scheduler in args.schedulers or [gen.label_scheduler or gen.scheduler]
        for steps in args.steps or [gen.label_steps]
        for guidance in args.guidance or [gen.label_guidance]
        for shift in args.time_shifts or [gen.label_time_shift]
        for below in args.shift_below or [gen.label_time_shift_below]
    ]
    settings = list({tuple(s.items()): s for s in settings}.values())
    train = split_stats(Path(cfg.data.root), "Train").fractions
    rows, shares = [], []
    for setting in tqdm(settings, desc="label settings", unit="setting"):
        update = {"generation": gen.model_copy(update=setting)}
        row, setting_shares = score_setting(cfg.model_copy(update=update), args.samples, train)
        rows.append({**setting, **row})
        shares.append(setting_shares)
    columns = list(rows[0])
    print(format_table(columns, [[row[c] for c in columns] for row in rows]))
    share_rows = [["Train", *train.values()]]
    for number, setting_shares in enumerate(shares, 1):
        share_rows += [
            [f"setting {number} {kind}", *by_class.values()]
            for kind, by_class in setting_shares.items()
        ]
    print(format_table(["class shares", *train], share_rows))
    parameters = {"config": str(args.config), "samples": args.samples, "threads": args.threads}
    results = {"rows": rows, "train_shares": train, "class_shares": shares}
    write_results(NAME, parameters, results, args.out)


if __name__ == "__main__":
    main()
