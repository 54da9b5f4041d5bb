"""Generation on a GPU: the factory's batched generator against the naive loop, and TFLOP/s.

One command for the device machine. The ``sd15-shape`` preset (Stable Diffusion 1.5's exact
shapes, random weights: the same FLOPs as trained ones) at 512x512, 30 DDIM steps per stage,
CFG 7.5 on both, label + image pairs:

* **naive**: one ``StableDiffusionPipeline`` call per label and one
  ``StableDiffusionControlNetPipeline`` call per image, batch 1, stock diffusers (SDPA
  attention, the same ``--dtype``), no other tuning;
* **factory**: :class:`~pipeline_lib.generate.sampler.Generator`'s ``sample_labels`` +
  ``sample_images`` over a batch of draws, at each of ``--batch-sizes``, with
  ``--channels-last`` and ``--compile`` (``torch.compile`` of the shared UNet) when asked.

FLOPs of one pair are counted with ``torch.utils.flop_counter.FlopCounterMode`` (matmuls,
convolutions, attention; the uncompiled models, batch 1), so achieved TFLOP/s = FLOPs per
pair x pairs/s. The bf16 matmul peak is measured in the same run: a large bf16 matmul
timed with CUDA events. Every configuration alternates with the naive loop round by
round; medians are reported.

    python -m bench.gpu_generation --dtype bf16 --channels-last --batch-sizes 1,2,4,8
    python -m bench.gpu_generation --dtype bf16 --channels-last --compile --batch-sizes 4,8
    python -m bench.gpu_generation --smoke        # CPU: tiny preset, 64 px, 2 steps, batch 2
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from statistics import median
from typing import Any

import torch

from bench.cli import command_line, positive_int
from bench.generation import NaiveLoop, factory_pairs, generation_config, side_by_side
from bench.report import format_table, write_results

NAME = "gpu_generation"
DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
# The keys every run writes under "results" (the smoke test checks them).
RESULT_KEYS = (
    "device_name",
    "peak_bf16_tflops",
    "flops_per_pair",
    "naive",
    "factory",
    "best",
    "generation_vs_naive",
    "best_share_of_peak",
)


def batch_sizes(text: str) -> list[int]:
    sizes = [int(s) for s in text.split(",") if s.strip()]
    if not sizes or min(sizes) < 1:
        raise ValueError(f"{text!r} is not a comma-separated list of positive integers")
    return sizes


def matmul_peak_tflops(device: torch.device, n: int, iters: int) -> float:
    """Achieved TFLOP/s of an ``n`` x ``n`` x ``n`` bf16 matmul (CUDA events; CPU: wall clock)."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            a @ b
        end.record()
        torch.cuda.synchronize(device)
        seconds = start.elapsed_time(end) / 1e3
    else:
        t0 = time.perf_counter()
        for _ in range(iters):
            a @ b
        seconds = time.perf_counter() - t0
    return 2 * n**3 * iters / seconds / 1e12


def flops_of_one_pair(generator, draw) -> int:
    """Matmul, convolution and attention FLOPs of one label + image pair (batch 1)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        factory_pairs(generator, [draw])
    return int(counter.get_total_flops())


def tune(generator, channels_last: bool, compile_unet: bool, compile_mode: str) -> None:
    """Channels-last weights and a compiled UNet (shared by the label and image pipelines)."""
    pipes = (generator.label_pipe, generator.image_pipe)
    if channels_last:
        models = {id(m): m for p in pipes for m in (p.unet, p.vae, getattr(p, "controlnet", None))}
        for model in models.values():
            if model is not None:
                model.to(memory_format=torch.channels_last)
    if compile_unet:
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
        compiled = torch.compile(generator.label_pipe.unet, mode=compile_mode)
        for pipe in pipes:
            pipe.unet = compiled


def settings(args: argparse.Namespace) -> dict[str, Any]:
    """What this run measures (the smoke run overrides preset, size, steps and batches)."""
    if args.smoke:
        return {
            "preset": "tiny",
            "device": "cpu",
            "resolution": 64,
            "steps": 2,
            "guidance": args.guidance,
            "batch_sizes": [2],
            "naive_pairs": 2,
            "rounds": 1,
            "peak_n": 512,
            "peak_iters": 3,
        }
    return {
        "preset": "sd15-shape",
        "device": args.device,
        "resolution": args.resolution,
        "steps": args.steps,
        "guidance": args.guidance,
        "batch_sizes": args.batch_sizes,
        "naive_pairs": args.naive_pairs,
        "rounds": args.rounds,
        "peak_n": args.peak_n,
        "peak_iters": args.peak_iters,
    }


def measure(args: argparse.Namespace, workdir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    from pipeline_lib.generate.sampler import Generator
    from pipeline_lib.models.build import init_models

    s = settings(args)
    device = torch.device(s["device"])
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here; run on the GPU machine or pass --smoke")
    t0 = time.perf_counter()
    base = init_models(workdir / "models", s["preset"])
    init_s = time.perf_counter() - t0
    cfg = generation_config(
        base,
        workdir,
        device=s["device"],
        resolution=s["resolution"],
        batch_size=max(s["batch_sizes"]),
        steps=s["steps"],
        guidance=s["guidance"],
        dtype=DTYPES[args.dtype],
    )
    generator = Generator(cfg)
    naive = NaiveLoop.load(cfg, dtype=generator.dtype)
    draws = [generator.draw(0, a) for a in range(max(max(s["batch_sizes"]), s["naive_pairs"]))]
    peak = matmul_peak_tflops(device, s["peak_n"], s["peak_iters"])
    flops = flops_of_one_pair(generator, draws[0])  # before compiling: eager modules
    tune(generator, args.channels_last, args.compile, args.compile_mode)
    naive_draws = draws[: s["naive_pairs"]]
    factory: dict[str, Any] = {}
    naive_rates: list[float] = []
    for size in s["batch_sizes"]:
        ways = {
            "factory": (lambda d: factory_pairs(generator, d), draws[:size]),
            "naive": (naive.pairs, naive_draws),
        }
        t0 = time.perf_counter()
        raw = side_by_side(ways, s["rounds"], device, warm_up_draws=None)
        rate = median(raw["pairs_per_s"]["factory"])
        naive_rate = median(raw["pairs_per_s"]["naive"])
        naive_rates += raw["pairs_per_s"]["naive"]
        ratios = [
            f / n
            for f, n in zip(raw["pairs_per_s"]["factory"], raw["pairs_per_s"]["naive"], strict=True)
        ]
        factory[str(size)] = {
            "pairs_per_s": rate,
            "tflops": rate * flops / 1e12,
            "share_of_peak": rate * flops / 1e12 / peak,
            "vs_naive": median(ratios),
            "naive_pairs_per_s_alongside": naive_rate,
            "wall_s_with_warm_up": time.perf_counter() - t0,
            "raw": raw,
        }
        if device.type == "cuda":
            factory[str(size)]["max_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    naive_rate = median(naive_rates)
    best_size = max(factory, key=lambda k: factory[k]["pairs_per_s"])
    best = factory[best_size]
    results = {
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "peak_bf16_tflops": peak,
        "flops_per_pair": flops,
        "naive": {
            "pairs_per_s": naive_rate,
            "tflops": naive_rate * flops / 1e12,
            "share_of_peak": naive_rate * flops / 1e12 / peak,
        },
        "factory": factory,
        "best": {"batch_size": int(best_size), **{k: v for k, v in best.items() if k != "raw"}},
        "generation_vs_naive": best["vs_naive"],
        "best_share_of_peak": best["share_of_peak"],
        "model_init_s": init_s,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
    }
    parameters = {
        **s,
        "dtype": args.dtype if device.type == "cuda" else "fp32 (CPU always samples in fp32)",
        "channels_last": args.channels_last,
        "compile": args.compile,
        "compile_mode": args.compile_mode if args.compile else None,
        "attention": "SDPA (diffusers' default AttnProcessor2_0)",
        "scheduler": cfg.generation.scheduler,
        "smoke": args.smoke,
    }
    return parameters, results


def table(results: dict[str, Any]) -> str:
    naive = results["naive"]
    rows = [
        ["naive loop (batch 1)", naive["pairs_per_s"], naive["tflops"], naive["share_of_peak"], 1.0]
    ]
    for size, r in results["factory"].items():
        rows.append(
            [
                f"factory, batch {size}",
                r["pairs_per_s"],
                r["tflops"],
                r["share_of_peak"],
                r["vs_naive"],
            ]
        )
    return format_table(["way", "pairs/s", "TFLOP/s", "share of peak", "vs naive"], rows)


def parser() -> argparse.ArgumentParser:
    p = command_line(NAME, __doc__)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16", help="on CUDA (default bf16)")
    p.add_argument("--channels-last", action="store_true", help="channels-last UNet/ControlNet/VAE")
    p.add_argument("--compile", action="store_true", help="torch.compile the UNet")
    p.add_argument(
        "--compile-mode", default="max-autotune-no-cudagraphs", help="torch.compile mode"
    )
    p.add_argument(
        "--batch-sizes",
        type=batch_sizes,
        default=[1, 2, 4, 8],
        help="factory batch sweep (1,2,4,8)",
    )
    p.add_argument("--naive-pairs", type=positive_int, default=4, help="pairs per naive round (4)")
    p.add_argument("--rounds", type=positive_int, default=3, help="timed rounds per way (3)")
    p.add_argument("--steps", type=positive_int, default=30, help="steps per stage (30)")
    p.add_argument("--guidance", type=float, default=7.5, help="CFG scale of both stages (7.5)")
    p.add_argument("--resolution", type=positive_int, default=512, help="sample side in px (512)")
    p.add_argument("--device", default="cuda", help="torch device (cuda)")
    p.add_argument("--peak-n", type=positive_int, default=8192, help="peak matmul side (8192)")
    p.add_argument("--peak-iters", type=positive_int, default=50, help="peak matmul repeats (50)")
    p.add_argument("--smoke", action="store_true", help="CPU check: tiny, 64 px, 2 steps, batch 2")
    p.add_argument(
        "--out", type=Path, default=None, help="JSON path (bench/results/gpu_generation.json)"
    )
    return p


def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)
    with tempfile.TemporaryDirectory(
        prefix="lfactory-bench-gpu-", ignore_cleanup_errors=True
    ) as tmp:
        parameters, results = measure(args, Path(tmp))
    print(
        f"generation on {results['device_name']}: {parameters['preset']} at "
        f"{parameters['resolution']} px, {parameters['steps']} steps per stage, CFG "
        f"{parameters['guidance']:g}, {parameters['dtype']}, channels_last "
        f"{parameters['channels_last']}, compile {parameters['compile']}; "
        f"{results['flops_per_pair'] / 1e12:.3g} TFLOP per pair; measured bf16 matmul peak "
        f"{results['peak_bf16_tflops']:.3g} TFLOP/s"
    )
    print(table(results))
    best = results["best"]
    print(
        f"best: batch {best['batch_size']}, {best['pairs_per_s']:.2f} pairs/s, "
        f"{results['generation_vs_naive']:.2f}x the naive loop, "
        f"{results['best_share_of_peak']:.0%} of the measured peak"
    )
    write_results(NAME, parameters, results, args.out)


if __name__ == "__main__":
    main()
