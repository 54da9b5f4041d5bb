"""Which lossless array codecs the store should use: each candidate against a PNG folder.

For each data kind (synthetic landscapes, crops of the genuine LoveDA tiles) and each candidate,
writes the images (or labels) as one zarr v3 array, one chunk per sample, whole shards, then
reads random single samples with the array opened once, and counts bytes on disk. The PNG
row is the same samples as one Pillow PNG file each. Every candidate must read back exact.

    python -m bench.store_codecs --samples 128 --size 256
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from statistics import median
from typing import Any

import numpy as np
import zarr
from PIL import Image
from zarr.codecs import BloscCodec, BytesCodec, ZstdCodec

from bench.cli import command_line, positive_int
from bench.report import format_table, write_results
from bench.samples import KINDS, real_tiles, samples
from bench.timing import timed
from pipeline_lib.store.codecs import IMAGE_CODECS, image_codecs, label_codecs

NAME = "store_codecs"
PNG = "png folder (Pillow)"

LABEL_CANDIDATES: dict[str, Any] = {
    "zstd 3 (default)": lambda: label_codecs(3),
    "zstd 9": lambda: label_codecs(9),
    "blosc zstd bitshuffle": lambda: {
        "serializer": BytesCodec(),
        "compressors": BloscCodec(cname="zstd", clevel=5, shuffle="bitshuffle", typesize=1),
    },
    "imagecodecs png": lambda: {**image_codecs("png"), "compressors": None},
    "plain zstd 1": lambda: {"serializer": BytesCodec(), "compressors": ZstdCodec(level=1)},
}


def image_candidates() -> dict[str, Any]:
    return {name: (lambda n=name: image_codecs(n)) for name in IMAGE_CODECS}


def allocated(root: Path) -> int:
    return sum(p.stat().st_blocks * 512 for p in root.rglob("*") if p.is_file())


def write_zarr(root: Path, data: np.ndarray, shard: int, codecs: dict[str, Any]) -> zarr.Array:
    array = zarr.create_array(
        root,
        shape=data.shape,
        dtype="uint8",
        chunks=(1, *data.shape[1:]),
        shards=(shard, *data.shape[1:]),
        fill_value=0,
        **codecs,
    )
    for start in range(0, len(data), shard):
        array[start : start + shard] = data[start : start + shard]
    return array


def write_pngs(root: Path, data: np.ndarray) -> None:
    root.mkdir(parents=True)
    for i, sample in enumerate(data):
        Image.fromarray(sample).save(root / f"{i:06d}.png")


def read_png(root: Path, index: int) -> np.ndarray:
    with Image.open(root / f"{index:06d}.png") as image:
        return np.asarray(image)


def measure_one(
    name: str, data: np.ndarray, make: Any, indices: np.ndarray, args, workdir: Path
) -> dict[str, Any]:
    """Write seconds, random read seconds and bytes of one candidate (median of repeats)."""
    writes, reads = [], []
    for _ in range(args.repeats):
        root = workdir / f"{len(list(workdir.iterdir()))}"
        if make is None:
            writes.append(timed(lambda r=root: write_pngs(r, data)))
            reads.append(timed(lambda r=root: [read_png(r, int(i)) for i in indices]))
            back = np.stack([read_png(root, i) for i in (0, len(data) - 1)])
        else:
            codecs = make()
            writes.append(timed(lambda r=root, c=codecs: write_zarr(r, data, args.shard_size, c)))
            array = zarr.open_array(root, mode="r")
            reads.append(timed(lambda a=array: [a[int(i)] for i in indices]))
            back = array[[0, len(data) - 1]]
            codecs_json = [
                c["name"] for c in array.metadata.to_dict()["codecs"][0]["configuration"]["codecs"]
            ]
        if not np.array_equal(back, data[[0, len(data) - 1]]):
            raise RuntimeError(f"{name}: samples do not read back exactly")
        size = allocated(root)
        shutil.rmtree(root)
    raw = data.nbytes
    return {
        "codec": name,
        "write_mb_per_s": raw / median(writes) / 1e6,
        "read_samples_per_s": len(indices) / median(reads),
        "bytes_on_disk": size,
        "bytes_vs_raw": size / raw,
        "zarr_codecs": None if make is None else codecs_json,
        "write_seconds": writes,
        "read_seconds": reads,
    }


def measure(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    kinds = [k for k in KINDS if k != "real" or real_tiles()]
    results: dict[str, Any] = {}
    for kind in kinds:
        images, labels = samples(kind, args.samples, args.size, args.seed)
        indices = np.random.default_rng(args.seed + 1).integers(0, args.samples, args.reads)
        for what, data, candidates in (
            ("images", images, image_candidates()),
            ("labels", labels, LABEL_CANDIDATES),
        ):
            rows = [measure_one(PNG, data, None, indices, args, workdir)]
            for name, make in candidates.items():
                rows.append(measure_one(name, data, make, indices, args, workdir))
            png = rows[0]
            for row in rows:
                row["write_vs_png"] = row["write_mb_per_s"] / png["write_mb_per_s"]
                row["read_vs_png"] = row["read_samples_per_s"] / png["read_samples_per_s"]
                row["png_bytes_vs_this"] = png["bytes_on_disk"] / row["bytes_on_disk"]
            results[f"{kind}/{what}"] = rows
    return results


def table(rows: list[dict[str, Any]]) -> str:
    headers = [
        "codec",
        "write MB/s",
        "read samples/s",
        "bytes/raw",
        "write/png",
        "read/png",
        "png bytes/this",
    ]
    keys = [
        "write_mb_per_s",
        "read_samples_per_s",
        "bytes_vs_raw",
        "write_vs_png",
        "read_vs_png",
        "png_bytes_vs_this",
    ]
    return format_table(headers, [[r["codec"], *(r[k] for k in keys)] for r in rows])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--samples", type=positive_int, default=128, help="samples (default 128)")
    parser.add_argument("--size", type=positive_int, default=256, help="sample size (default 256)")
    parser.add_argument("--shard-size", type=positive_int, default=64, help="samples per shard")
    parser.add_argument(
        "--reads", type=positive_int, default=256, help="random reads (default 256)"
    )
    parser.add_argument(
        "--repeats", type=positive_int, default=3, help="rounds (median; default 3)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the samples (default 0)")


def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(
        prefix="lfactory-bench-codecs-", ignore_cleanup_errors=True
    ) as tmp:
        results = measure(args, Path(tmp))
    for key, rows in results.items():
        print(f"{key}: {args.samples} samples of {args.size}x{args.size}, median of {args.repeats}")
        print(table(rows))
        print()
    parameters = {
        k: getattr(args, k) for k in ("samples", "size", "shard_size", "reads", "repeats", "seed")
    }
    write_results(NAME, parameters, results)
    return results


def main(argv: Sequence[str] | None = None) -> None:
    parser = command_line(NAME, __doc__)
    add_arguments(parser)
    run(parser.parse_args(argv))


if __name__ == "__main__":
    main()
