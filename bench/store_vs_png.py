"""The factory's Zarr sample store against a plain folder of PNGs.

Writes the same samples three ways (the store through ``commit_shard``, PNGs through
the factory's rasterio ``write_png``, PNGs through Pillow), then measures write throughput,
random single-sample read throughput and bytes on disk, each side by side in one run.
Store reads are timed twice: through ``SampleStore.read_rows`` and with the arrays kept
open, as the training ``StoreDataset`` reads.

Both kinds of samples are measured: synthetic landscapes (as ``lfactory data synth`` draws
them) and crops of the genuine LoveDA tiles (where ``../shared/data/loveda-real`` is present).

    python -m bench.store_vs_png --samples 256 --size 256
"""

from __future__ import annotations

import argparse
import tempfile
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from statistics import median
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage

from bench.cli import command_line, positive_int
from bench.report import format_table, write_results
from bench.samples import KINDS, real_tiles, samples
from bench.timing import timed
from pipeline_lib.data.loveda import read_image, read_mask, write_png
from pipeline_lib.generate.seeds import sample_id
from pipeline_lib.store import SampleStore, ShardData, commit_shard, create_or_open_store

NAME = "store_vs_png"
Reader = Callable[[int], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class Backend:
    """One way of keeping samples: how to write them all and how to read one back."""

    name: str
    write: Callable[[Path, np.ndarray, np.ndarray, argparse.Namespace], None]
    reader: Callable[[Path], Reader]
    # How a long-lived reader (the training StoreDataset) reads; the same as ``reader`` if None.
    open_reader: Callable[[Path], Reader] | None = None


# ------------------------------------------------------------------------------ samples


def smooth_noise(rng: np.random.Generator, size: int, feature: int) -> np.ndarray:
    """(size, size, 3) float noise whose blobs are about ``feature`` pixels across."""
    cells = -(-size // feature) + 1
    coarse = rng.standard_normal((cells, cells, 3), dtype=np.float32)
    fine = ndimage.zoom(coarse, (feature, feature, 1), order=1, grid_mode=True, mode="nearest")
    return fine[:size, :size]


def make_samples(n: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded images (three octaves of smooth noise) and blocky labels (16 px, values 1-7)."""
    rng = np.random.default_rng(seed)
    images = np.empty((n, size, size, 3), np.uint8)
    labels = np.empty((n, size, size), np.uint8)
    block = 16
    for i in range(n):
        octaves = sum(smooth_noise(rng, size, f) * w for f, w in ((32, 1.0), (8, 0.5), (2, 0.25)))
        images[i] = np.clip(128 + 40 * octaves, 0, 255).astype(np.uint8)
        coarse = rng.integers(1, 8, (-(-size // block),) * 2, dtype=np.uint8)
        labels[i] = coarse.repeat(block, 0).repeat(block, 1)[:size, :size]
    return images, labels


# ------------------------------------------------------------------------------ backends


def write_store(
    root: Path, images: np.ndarray, labels: np.ndarray, args: argparse.Namespace
) -> None:
    """Commit the samples shard by shard, as the factory's generate task does."""
    n, height, width = labels.shape
    store = create_or_open_store(root, shard_size=args.shard_size, height=height, width=width)
    for shard_id, start in enumerate(range(0, n, args.shard_size)):
        stop = min(start + args.shard_size, n)
        rows = tuple(
            {"sample_id": sample_id("bench", args.seed, shard_id, i)} for i in range(start, stop)
        )
        commit_shard(store, ShardData(shard_id, images[start:stop], labels[start:stop], rows))


def store_reader(root: Path) -> Reader:
    store = SampleStore(root)

    def read(index: int) -> tuple[np.ndarray, np.ndarray]:
        images, labels = store.read_rows([index])
        return images[0], labels[0]

    return read


def open_arrays_reader(root: Path) -> Reader:
    """Reads as ``StoreDataset`` does: arrays opened once, then plain row indexing."""
    images, labels = SampleStore(root).arrays()

    def read(index: int) -> tuple[np.ndarray, np.ndarray]:
        return images[index], labels[index]

    return read


def png_paths(root: Path, index: int) -> tuple[Path, Path]:
    return root / f"{index:06d}_image.png", root / f"{index:06d}_label.png"


def write_png_rasterio(
    root: Path, images: np.ndarray, labels: np.ndarray, _: argparse.Namespace
) -> None:
    """One image PNG and one label PNG per sample through the factory's ``write_png``."""
    root.mkdir(parents=True)
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        image_path, label_path = png_paths(root, i)
        write_png(image_path, image)
        write_png(label_path, label)


def rasterio_reader(root: Path) -> Reader:
    def read(index: int) -> tuple[np.ndarray, np.ndarray]:
        image_path, label_path = png_paths(root, index)
        return read_image(image_path), read_mask(label_path)

    return read


def write_png_pillow(
    root: Path, images: np.ndarray, labels: np.ndarray, _: argparse.Namespace
) -> None:
    """The same PNG folder written by Pillow (zlib level 6, like GDAL's default)."""
    root.mkdir(parents=True)
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        image_path, label_path = png_paths(root, i)
        Image.fromarray(image).save(image_path)
        Image.fromarray(label).save(label_path)


def pillow_reader(root: Path) -> Reader:
    def read(index: int) -> tuple[np.ndarray, np.ndarray]:
        image_path, label_path = png_paths(root, index)
        with Image.open(image_path) as image, Image.open(label_path) as label:
            return np.asarray(image), np.asarray(label)

    return read


BACKENDS = (
    Backend("store", write_store, store_reader, open_arrays_reader),
    Backend("png-rasterio", write_png_rasterio, rasterio_reader),
    Backend("png-pillow", write_png_pillow, pillow_reader),
)


# ------------------------------------------------------------------------------ measuring


def disk_usage(root: Path) -> dict[str, Any]:
    """Allocated bytes (what ``du`` counts), apparent bytes and file count under ``root``.

    Allocated bytes are also split by top-level folder (``.`` for files at the top).
    """
    stats = {p: p.stat() for p in root.rglob("*") if p.is_file()}
    by_folder: dict[str, int] = {}
    for path, stat in stats.items():
        parts = path.relative_to(root).parts
        folder = parts[0] if len(parts) > 1 else "."
        by_folder[folder] = by_folder.get(folder, 0) + stat.st_blocks * 512
    return {
        "bytes_on_disk": sum(s.st_blocks * 512 for s in stats.values()),
        "apparent_bytes": sum(s.st_size for s in stats.values()),
        "files": len(stats),
        "bytes_on_disk_by_folder": by_folder,
    }


def check_round_trip(read: Reader, images: np.ndarray, labels: np.ndarray, name: str) -> None:
    """Refuse to report numbers for a backend that does not give the samples back."""
    for index in (0, len(images) - 1):
        image, label = read(index)
        if not (np.array_equal(image, images[index]) and np.array_equal(label, labels[index])):
            raise RuntimeError(f"{name}: sample {index} does not read back as written")


def read_all(read: Reader, indices: np.ndarray) -> float:
    """Seconds to read the samples at ``indices`` one at a time."""
    return timed(lambda: [read(int(i)) for i in indices])


def measure(
    args: argparse.Namespace, workdir: Path, kind: str = "synth"
) -> dict[str, dict[str, Any]]:
    """Write, read and size every backend, interleaved repeat by repeat."""
    images, labels = samples(kind, args.samples, args.size, args.seed)
    indices = np.random.default_rng(args.seed + 1).integers(0, args.samples, args.reads)
    writes: dict[str, list[float]] = {b.name: [] for b in BACKENDS}
    reads: dict[str, list[float]] = {b.name: [] for b in BACKENDS}
    open_reads: dict[str, list[float]] = {b.name: [] for b in BACKENDS}
    for repeat in range(args.repeats):
        for backend in BACKENDS:
            root = workdir / f"{backend.name}-{repeat}"
            writes[backend.name].append(
                timed(lambda b=backend, r=root: b.write(r, images, labels, args))
            )
        for backend in BACKENDS:
            read = backend.reader(workdir / f"{backend.name}-{repeat}")
            if repeat == 0:
                check_round_trip(read, images, labels, backend.name)
            reads[backend.name].append(read_all(read, indices))
            if backend.open_reader is None:
                open_reads[backend.name].append(reads[backend.name][-1])
            else:
                read = backend.open_reader(workdir / f"{backend.name}-{repeat}")
                if repeat == 0:
                    check_round_trip(read, images, labels, backend.name)
                open_reads[backend.name].append(read_all(read, indices))
    return {
        b.name: {
            "write_seconds": writes[b.name],
            "read_seconds": reads[b.name],
            "write_samples_per_s": args.samples / median(writes[b.name]),
            "read_samples_per_s": args.reads / median(reads[b.name]),
            "open_read_seconds": open_reads[b.name],
            "open_read_samples_per_s": args.reads / median(open_reads[b.name]),
            **disk_usage(workdir / f"{b.name}-0"),
        }
        for b in BACKENDS
    }


# ------------------------------------------------------------------------------ report


METRICS = (
    ("write samples/s", "write_samples_per_s"),
    ("random read samples/s (read_rows)", "read_samples_per_s"),
    ("random read samples/s (open arrays)", "open_read_samples_per_s"),
    ("bytes on disk", "bytes_on_disk"),
    ("files", "files"),
)


FOOTNOTE = (
    "read_rows: SampleStore.read_rows([i]) per sample (the public reader, as StoreDataset "
    "reads); open arrays: zarr.Array row indexing with the arrays opened once. PNG reads are "
    "the same in both rows. Store writes include commit_shard's checksums, read-back, fsyncs "
    "and Parquet manifest; the PNG folders are neither checksummed nor fsynced."
)


def table(results: dict[str, dict[str, Any]]) -> str:
    """One row per metric: each backend, then store/png ratios."""
    pngs = [b.name for b in BACKENDS if b.name != "store"]
    headers = ["metric", "store", *pngs, *(f"store/{p.removeprefix('png-')}" for p in pngs)]
    rows = []
    for label, key in METRICS:
        store = results["store"][key]
        ratios = [store / results[p][key] for p in pngs]
        rows.append([label, store, *(results[p][key] for p in pngs), *ratios])
    return format_table(headers, rows)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--samples", type=positive_int, default=256, help="samples written (default 256)"
    )
    parser.add_argument(
        "--size", type=positive_int, default=256, help="sample height = width (default 256)"
    )
    parser.add_argument(
        "--shard-size", type=positive_int, default=64, help="store samples per shard (default 64)"
    )
    parser.add_argument(
        "--reads", type=positive_int, default=256, help="random single-sample reads (default 256)"
    )
    parser.add_argument(
        "--repeats", type=positive_int, default=3, help="rounds; the median is reported (default 3)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the samples (default 0)")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Measure in a temporary folder, print the table, write the JSON; return the results."""
    kinds = [k for k in KINDS if k != "real" or real_tiles()]
    results = {}
    for kind in kinds:
        with tempfile.TemporaryDirectory(
            prefix="lfactory-bench-store-", ignore_cleanup_errors=True
        ) as tmp:
            results[kind] = measure(args, Path(tmp), kind)
    parameters = {
        k: getattr(args, k) for k in ("samples", "size", "shard_size", "reads", "repeats", "seed")
    }
    parameters["kinds"] = kinds
    parameters["raw_bytes"] = args.samples * args.size * args.size * 4
    for kind in kinds:
        print(
            f"store vs PNG folder, {kind}: {args.samples} samples of {args.size}x{args.size} "
            f"(raw {parameters['raw_bytes'] / 2**20:.1f} MiB), {args.reads} random reads, "
            f"median of {args.repeats}"
        )
        print(table(results[kind]))
        print()
    print(textwrap.fill(FOOTNOTE, width=100))
    write_results(NAME, parameters, results)
    return results


def main(argv: Sequence[str] | None = None) -> None:
    parser = command_line(NAME, __doc__)
    add_arguments(parser)
    run(parser.parse_args(argv))


if __name__ == "__main__":
    main()
