"""Does the label model draw sharp edges? Its clean-label estimate from real Train labels.

Drawn labels are off the colour code almost only along class boundaries (soft edges one or
two pixels wide). This asks the trained label model where that comes from, without sampling:
real Train label crops, in the colours the model draws, are noised to timestep t and the
model's estimate of the clean label is scored: the share of pixels off the code (beyond
``generation.qa.palette_tolerance``) and the share whose nearest code corner is wrong. The
same crops blurred by one pixel (``train.objective.soft_edges``) ask whether the model
sharpens a soft edge (its estimate less off the code than its input) or carries it on,
which is what a sampling trajectory needs at the low-noise steps. One batched UNet call per
timestep: seconds on a CPU. It needs the config's trained label model, so ``make bench``
does not run it.

    python -m bench.label_sharpness configs/quality-scenes.yaml
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from bench.cli import command_line, positive_int
from bench.report import format_table, write_results

NAME = "label_sharpness"
TIMESTEPS = (19, 59, 99, 199, 399, 599)


def train_crops(root: Path, size: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` label crops of ``size`` px from the Train tiles (a fixed grid, tile by tile)
    and each crop's whole tile mask."""
    from pipeline_lib.data.loveda import labelled_tiles, read_mask

    crops, tiles = [], []
    for tile in labelled_tiles(root, ["Train"]):
        mask = read_mask(tile.mask_path)
        for y in range(0, mask.shape[0] - size + 1, size):
            for x in range(0, mask.shape[1] - size + 1, size):
                crops.append(mask[y : y + size, x : x + size])
                tiles.append(mask)
                if len(crops) == count:
                    return np.stack(crops), np.stack(tiles)
    return np.stack(crops), np.stack(tiles)


def code_scores(pixels: Any, truth: Any, code: Any, tolerance: float) -> tuple[float, float]:
    """Shares of the pixels of (B, 3, H, W) ``pixels`` in [-1, 1] that are off the colour
    ``code`` (K, 3) (further than ``tolerance`` from every colour, the QA's test) and whose
    nearest colour is not the one of ``truth`` (the sharp labels, in the same layout)."""

    def distances(x: Any) -> Any:
        return (x.permute(0, 2, 3, 1)[..., None, :] - code).abs().amax(-1)

    distance = distances(pixels)
    wrong = distance.argmin(-1) != distances(truth).argmin(-1)
    off = distance.amin(-1) > tolerance
    return off.float().mean().item(), wrong.float().mean().item()


def main(argv: list[str] | None = None) -> None:
    parser = command_line(NAME, __doc__)
    parser.add_argument("config", type=Path, help="a factory config whose label model is trained")
    parser.add_argument("--crops", type=positive_int, default=32, help="Train label crops")
    parser.add_argument("--seed", type=int, default=0, help="noise seed")
    parser.add_argument("--threads", type=positive_int, default=2, help="torch threads")
    parser.add_argument("--out", type=Path, help="JSON path (default bench/results/)")
    args = parser.parse_args(argv)

    import torch

    from pipeline_lib.config import load_config
    from pipeline_lib.data.classes import LABEL_COLOURS
    from pipeline_lib.data.palette import colourise
    from pipeline_lib.generate.sampler import Generator
    from pipeline_lib.models.class_mix import class_mix
    from pipeline_lib.models.unet_input import is_self_conditioned, is_vector_conditioned
    from pipeline_lib.train.objective import encode_prompts, soft_edges

    torch.set_num_threads(args.threads)
    cfg = load_config(args.config)
    generator = Generator(cfg, with_images=False)
    pipe = generator.label_pipe
    unet, vae, scheduler = pipe.unet, pipe.vae, pipe.scheduler
    size = cfg.label_lora.resolution
    crops, tiles = train_crops(Path(cfg.data.root), size, args.crops)
    colours = LABEL_COLOURS[cfg.label_lora.colours]
    rgb = np.stack([colourise(c, colours) for c in crops]).astype(np.float32) / 127.5 - 1
    sharp = torch.from_numpy(rgb).permute(0, 3, 1, 2)
    tolerance = cfg.generation.qa.palette_tolerance / 127.5
    code = torch.from_numpy(colours.astype(np.float32) / 127.5 - 1)

    # Either label pipeline (diffusers' for a plain label model, ours for a widened or
    # mix-conditioned one) holds the tokenizer and text encoder training encodes with.
    text = [generator.draw(0, 0).prompt] * len(crops)
    prompt = encode_prompts(pipe, text, unet.device, unet.dtype)
    masks = torch.from_numpy(tiles if cfg.label_lora.mix_of == "tile" else crops).long()
    mix = class_mix(masks) if is_vector_conditioned(unet) else None
    soft = soft_edges(sharp)
    # Each input encoded once; every timestep noises it with the same seeded draw.
    with torch.no_grad():
        latents = {
            "sharp": vae.encode(sharp).latent_dist.mean * vae.config.scaling_factor,
            "blurred": vae.encode(soft).latent_dist.mean * vae.config.scaling_factor,
        }
    noise = torch.randn(latents["sharp"].shape, generator=torch.Generator().manual_seed(args.seed))

    def estimate(clean: torch.Tensor, t: int) -> torch.Tensor:
        steps = torch.full((len(crops),), t)
        noisy = scheduler.add_noise(clean, noise, steps)
        model_in = scheduler.scale_model_input(noisy, t)
        if is_self_conditioned(unet):
            model_in = torch.cat([model_in, torch.zeros_like(noisy)], 1)
        out = unet(model_in, steps, encoder_hidden_states=prompt, class_labels=mix).sample
        alpha = scheduler.alphas_cumprod[t]
        if scheduler.config.prediction_type == "v_prediction":
            x0 = alpha.sqrt() * noisy - (1 - alpha).sqrt() * out
        else:
            x0 = (noisy - (1 - alpha).sqrt() * out) / alpha.sqrt()
        return vae.decode(x0 / vae.config.scaling_factor).sample.clamp(-1, 1)

    rows = []
    with torch.no_grad():
        for t in TIMESTEPS:
            sharp_off, sharp_wrong = code_scores(
                estimate(latents["sharp"], t), sharp, code, tolerance
            )
            soft_off, soft_wrong = code_scores(
                estimate(latents["blurred"], t), sharp, code, tolerance
            )
            sigma = float((1 - scheduler.alphas_cumprod[t]).sqrt())
            rows.append(
                {
                    "timestep": t,
                    "noise_sigma": sigma,
                    "sharp_estimate_off": sharp_off,
                    "sharp_estimate_wrong": sharp_wrong,
                    "blurred_estimate_off": soft_off,
                    "blurred_estimate_wrong": soft_wrong,
                }
            )
    blurred_off, _ = code_scores(soft, sharp, code, tolerance)
    columns = list(rows[0])
    print(format_table(columns, [[row[c] for c in columns] for row in rows]))
    print(f"blurred input: {blurred_off:.4f} of pixels off the code (sharp input: 0)")
    parameters = {"config": str(args.config), "crops": len(crops), "crop_size": size}
    parameters |= {"seed": args.seed, "threads": args.threads}
    results = {"rows": rows, "blurred_input_off": blurred_off}
    write_results(NAME, parameters, results, args.out)


if __name__ == "__main__":
    main()
