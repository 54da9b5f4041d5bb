"""The factory's batched generator against a naive diffusers loop, label + image pairs/s.

Both sample the same models (the ``tiny`` preset, random weights: the same FLOPs as
trained ones) with the same scheduler, steps and guidance. The factory's
:class:`~pipeline_lib.generate.sampler.Generator` draws a batch: one batched
``sample_labels`` call (SD + label QA), then one batched ``sample_images`` call
(SD + ControlNet on the snapped, colourised labels). The naive loop is what a first
script does: one ``StableDiffusionPipeline`` call per label and one
``StableDiffusionControlNetPipeline`` call per image, batch 1, on the raw label.
Each round times both on the same draws, alternating which goes first; the median
over rounds is reported.

The naive loop runs in float32, as stock diffusers does on a CPU. The factory samples in
``--gen-dtype`` (default: bfloat16 autocast where the CPU computes bfloat16 natively,
else float32); when that is not float32 the factory is timed in float32 too, so the
table also gives the ratio at equal precision.

    python -m bench.generation --gen-batch-size 8 --gen-steps 10 --gen-rounds 3
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from statistics import median
from typing import Any

import numpy as np
import torch

from bench.cli import command_line, positive_int
from bench.report import format_table, write_results

NAME = "generation"
QA_OFF = {"max_off_palette": 1.0, "max_small_fragment_share": 1.0}  # every draw is kept


def generation_config(
    base: Path,
    work_dir: Path,
    *,
    device: str,
    resolution: int,
    batch_size: int,
    steps: int,
    guidance: float,
    dtype: str = "float32",
):
    """A factory config sampling ``base`` (its ControlNet beside it) with these settings."""
    from pipeline_lib.config import config_from_dict

    return config_from_dict(
        {
            "name": "bench-generation",
            "work_dir": str(work_dir),
            "device": device,
            "models": {"base": str(base)},
            "generation": {
                "label_steps": steps,
                "image_steps": steps,
                "label_guidance": guidance,
                "image_guidance": guidance,
                "resolution": resolution,
                "batch_size": batch_size,
                "dtype": dtype,
                "qa": QA_OFF,
            },
        }
    )


@dataclass
class NaiveLoop:
    """Stock diffusers pipelines loaded from the same folders, called once per sample."""

    label_pipe: Any
    image_pipe: Any
    cfg: Any
    device: torch.device

    @classmethod
    def load(cls, cfg, dtype: torch.dtype = torch.float32) -> NaiveLoop:
        from diffusers import StableDiffusionControlNetPipeline, StableDiffusionPipeline

        from pipeline_lib.generate.sampler import SCHEDULERS, controlnet_dir, resolve_device
        from pipeline_lib.models.sd_folder import load_controlnet, load_sd_components

        device = resolve_device(cfg.device)
        parts = load_sd_components(cfg.models.base, dtype=dtype)
        scheduler = SCHEDULERS[cfg.generation.scheduler]
        none = {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}
        shared = {
            "vae": parts.vae,
            "text_encoder": parts.text_encoder,
            "tokenizer": parts.tokenizer,
            "unet": parts.unet,
        }
        label_pipe = StableDiffusionPipeline(
            **shared, scheduler=scheduler.from_config(parts.scheduler.config), **none
        )
        image_pipe = StableDiffusionControlNetPipeline(
            **shared,
            controlnet=load_controlnet(controlnet_dir(cfg), dtype=dtype),
            scheduler=scheduler.from_config(parts.scheduler.config),
            **none,
        )
        for pipe in (label_pipe, image_pipe):
            pipe.to(device)
            pipe.set_progress_bar_config(disable=True)
        return cls(label_pipe, image_pipe, cfg, device)

    def pair(self, draw) -> tuple[np.ndarray, np.ndarray]:
        """One label, then one image conditioned on it: two pipeline calls, batch 1."""
        from pipeline_lib.generate.seeds import image_seed

        gen = self.cfg.generation
        common = {
            "prompt": draw.prompt,
            "negative_prompt": draw.negative_prompt,
            "height": gen.resolution,
            "width": gen.resolution,
            "output_type": "np",
        }
        label = self.label_pipe(
            **common,
            num_inference_steps=gen.label_steps,
            guidance_scale=gen.label_guidance,
            generator=torch.Generator("cpu").manual_seed(draw.seed),
        ).images
        image = self.image_pipe(
            **common,
            image=label,
            num_inference_steps=gen.image_steps,
            guidance_scale=gen.image_guidance,
            generator=torch.Generator("cpu").manual_seed(image_seed(draw.seed)),
        ).images
        return label[0], image[0]

    def pairs(self, draws) -> int:
        for draw in draws:
            self.pair(draw)
        return len(draws)


def factory_pairs(generator, draws) -> int:
    """The factory's way: one batched label call (with QA), one batched image call."""
    labelled = generator.sample_labels(draws)
    kept = [(d, mask) for d, (_, mask, qa) in zip(draws, labelled, strict=True) if qa.kept]
    images = generator.sample_images([d for d, _ in kept], [m for _, m in kept])
    return len(images)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_pairs(fn, draws, device: torch.device) -> tuple[float, int]:
    """Seconds one call takes and the pairs it made."""
    synchronize(device)
    start = time.perf_counter()
    made = fn(draws)
    synchronize(device)
    return time.perf_counter() - start, made


def side_by_side(
    ways: dict[str, tuple[Any, list]],
    rounds: int,
    device: torch.device,
    warm_up_draws: int | None = 2,
) -> dict:
    """Each way's pairs/s per round, alternating which goes first, after a warm-up call.

    ``ways`` maps a name to ``(fn, draws)``; ``fn(draws)`` returns the pairs it made. The
    warm-up (first-call allocations, lazy imports, kernel choices; compilation, which needs
    the timed shapes: ``warm_up_draws=None`` warms up on all of them) is not timed.
    """
    names = list(ways)
    for fn, draws in ways.values():
        fn(draws if warm_up_draws is None else draws[:warm_up_draws])
    per_s: dict[str, list[float]] = {n: [] for n in names}
    seconds: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            fn, draws = ways[name]
            s, made = time_pairs(fn, draws, device)
            if made != len(draws):
                raise RuntimeError(f"{name} made {made} of {len(draws)} pairs")
            seconds[name].append(s)
            per_s[name].append(made / s)
    return {"pairs_per_s": per_s, "seconds": seconds}


def factory_dtype(asked: str) -> str:
    """``auto``: bfloat16 where the CPU computes it natively, else float32."""
    from pipeline_lib.precision import cpu_has_bf16

    if asked != "auto":
        return asked
    return "bfloat16" if cpu_has_bf16() else "float32"


def measure(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    from pipeline_lib.generate.sampler import Generator
    from pipeline_lib.models.build import init_models

    base = init_models(workdir / "models", "tiny")
    dtype = factory_dtype(args.gen_dtype)

    def config(dtype: str):
        return generation_config(
            base,
            workdir,
            device="cpu",
            resolution=args.gen_resolution,
            batch_size=args.gen_batch_size,
            steps=args.gen_steps,
            guidance=args.gen_guidance,
            dtype=dtype,
        )

    generators = {name: Generator(config(d)) for name, d in factory_ways(dtype).items()}
    naive = NaiveLoop.load(config("float32"))
    draws = [generators["factory"].draw(0, a) for a in range(args.gen_batch_size)]
    ways = {name: (partial(factory_pairs, g), draws) for name, g in generators.items()}
    ways["naive"] = (naive.pairs, draws)
    raw = side_by_side(ways, args.gen_rounds, torch.device("cpu"))
    rates = {name: median(per_s) for name, per_s in raw["pairs_per_s"].items()}

    def ratio(name: str) -> float:
        per_round = zip(raw["pairs_per_s"][name], raw["pairs_per_s"]["naive"], strict=True)
        return median(f / n for f, n in per_round)

    fp32 = "factory float32" if "factory float32" in ways else "factory"
    return {
        "factory_dtype": dtype,
        "factory_pairs_per_s": rates["factory"],
        "factory_float32_pairs_per_s": rates[fp32],
        "naive_pairs_per_s": rates["naive"],
        "generation_vs_naive": ratio("factory"),
        "generation_vs_naive_float32": ratio(fp32),
        "torch_threads": torch.get_num_threads(),
        "raw": raw,
    }


def factory_ways(dtype: str) -> dict[str, str]:
    """The factory in ``dtype`` and, when that is not float32, in float32 as well."""
    return {"factory": dtype} | ({"factory float32": "float32"} if dtype != "float32" else {})


def table(results: dict[str, Any], batch: int) -> str:
    rates = [
        (
            f"factory Generator (batch {batch}, {results['factory_dtype']})",
            results["factory_pairs_per_s"],
        ),
    ]
    if results["factory_dtype"] != "float32":
        rates.append(
            (f"factory Generator (batch {batch}, float32)", results["factory_float32_pairs_per_s"])
        )
    rates.append(("naive diffusers loop (batch 1, float32)", results["naive_pairs_per_s"]))
    return format_table(["way", "pairs/s", "s/pair"], [[w, r, 1 / r] for w, r in rates])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--gen-batch-size", type=positive_int, default=8, help="draws per batch (default 8)"
    )
    parser.add_argument(
        "--gen-steps", type=positive_int, default=10, help="label and image steps (default 10)"
    )
    parser.add_argument(
        "--gen-guidance", type=float, default=3.0, help="CFG scale of both stages (default 3)"
    )
    parser.add_argument(
        "--gen-resolution", type=positive_int, default=64, help="sample side in px (default 64)"
    )
    parser.add_argument(
        "--gen-rounds", type=positive_int, default=3, help="timed rounds per way (default 3)"
    )
    parser.add_argument(
        "--gen-dtype",
        choices=("auto", "float32", "bfloat16"),
        default="auto",
        help="the factory's sampling precision (auto: bfloat16 where the CPU computes it "
        "natively); the naive loop is float32",
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Measure in a temporary folder, print the table, write the JSON; return the results."""
    with tempfile.TemporaryDirectory(
        prefix="lfactory-bench-gen-", ignore_cleanup_errors=True
    ) as tmp:
        results = measure(args, Path(tmp))
    parameters = {
        "preset": "tiny",
        "device": "cpu",
        "batch_size": args.gen_batch_size,
        "steps": args.gen_steps,
        "guidance": args.gen_guidance,
        "resolution": args.gen_resolution,
        "rounds": args.gen_rounds,
        "scheduler": "ddim",
        "factory_dtype": results["factory_dtype"],
        "naive_dtype": "float32",
    }
    print(
        f"generation, tiny preset on CPU ({results['torch_threads']} torch thread(s)): "
        f"{args.gen_batch_size} label + image pairs at {args.gen_resolution} px, "
        f"{args.gen_steps} steps each, CFG {args.gen_guidance:g}, median of {args.gen_rounds}"
    )
    print(table(results, args.gen_batch_size))
    print(
        f"factory / naive: {results['generation_vs_naive']:.2f}x, at equal precision (float32) "
        f"{results['generation_vs_naive_float32']:.2f}x (medians of per-round ratios)"
    )
    write_results(NAME, parameters, results)
    return results


def main(argv: Sequence[str] | None = None) -> None:
    parser = command_line(NAME, __doc__)
    add_arguments(parser)
    run(parser.parse_args(argv))


if __name__ == "__main__":
    main()
