"""The smallest factory configs, shared by the tests."""

from __future__ import annotations

from pathlib import Path

# QA that keeps every label: the tiny untrained models draw noise.
KEEP_EVERY_LABEL = {"max_off_palette": 1.0, "max_small_fragment_share": 1.0}


def minimal_config(work_dir: Path, name: str = "flowtest", **sections) -> dict:
    """The smallest factory that still goes through every stage; ``sections`` replace
    whole top-level sections."""
    train = {"steps": 2, "batch_size": 2, "resolution": 32, "checkpoint_every": 2, "lr": 1e-3}
    config = {
        "name": name,
        "work_dir": str(work_dir),
        "device": "cpu",
        "data": {"synth": {"tiles": 4, "size": 64, "seed": 0}},
        "models": {"preset": "tiny"},
        "vae": train,
        "label_lora": train,
        "controlnet": train,
        "generation": {
            "label_steps": 2,
            "image_steps": 2,
            "resolution": 32,
            "batch_size": 2,
            "qa": KEEP_EVERY_LABEL,
        },
        "store": {"shard_size": 2},
        "quota": {"samples": 4, "validate_every": 4},
        "validation": {
            "data": ["gen", "ori"],
            "iters": 2,
            "batch_size": 2,
            "crop_size": 32,
            "val_interval": 2,
            "checkpoint_interval": 2,
        },
        "prefect": {"retries": 1, "retry_delay_seconds": 0},
    }
    config.update(sections)
    return config


def generator_config(
    work_dir: Path,
    models: Path,
    *,
    name: str = "t",
    resolution: int = 32,
    batch_size: int = 2,
    shard_size: int = 3,
    **generation,
) -> dict:
    """A factory that only generates, from the models at ``models``, two steps a pass, with
    QA that keeps every label; ``generation`` overrides generation fields."""
    return {
        "name": name,
        "work_dir": str(work_dir),
        "device": "cpu",
        "models": {"base": str(models)},
        "generation": {
            "label_steps": 2,
            "image_steps": 2,
            "resolution": resolution,
            "batch_size": batch_size,
            "qa": KEEP_EVERY_LABEL,
            **generation,
        },
        "store": {"shard_size": shard_size},
    }


def trained_label_model_config(tmp_path: Path, colours: str, **generation) -> Path:
    """A YAML config whose tiny-pixel label model (full fine-tune, 2 steps, on two synthetic
    64 px tiles) is trained: what the label benchmarks read."""
    import yaml

    from pipeline_lib.config import load_config
    from pipeline_lib.data.synth import make_synthetic_loveda
    from pipeline_lib.train import train_label_lora

    make_synthetic_loveda(tmp_path / "synth", tiles=2, size=64, seed=2)
    train = {"steps": 2, "batch_size": 2, "resolution": 32, "checkpoint_every": 2}
    raw = {
        "work_dir": str(tmp_path / "work"),
        "data": {"root": str(tmp_path / "synth")},
        "models": {"preset": "tiny-pixel"},
        "label_lora": {**train, "method": "full", "colours": colours},
        "generation": {"resolution": 32, "batch_size": 2, **generation},
    }
    config = tmp_path / "factory.yaml"
    config.write_text(yaml.safe_dump(raw))
    train_label_lora(load_config(config), progress=False)
    return config
