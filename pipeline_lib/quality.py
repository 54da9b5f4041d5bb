"""The quality proof's own steps: how many samples to generate, and the report that puts
the research's table beside label fidelity, consistency and what each stage cost.

Training, generation and validation are the factory's ordinary steps; ``lfactory quality``
(flows/quality.py) runs them with a quota that gives Gen. as many labelled pixels as Ori.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline_lib.config import FactoryConfig
from pipeline_lib.data.loveda import labelled_tiles, read_image, read_mask, split_stats
from pipeline_lib.errors import DataError
from pipeline_lib.generate.sampler import controlnet_dir
from pipeline_lib.hashing import json_digest
from pipeline_lib.models.model_hash import model_hash
from pipeline_lib.report.fidelity import label_fidelity
from pipeline_lib.report.quality import (
    QualityReport,
    majority_baseline,
    quality_grid,
    write_quality_report,
)
from pipeline_lib.report.results import ValidationReport
from pipeline_lib.store.store import SampleStore
from pipeline_lib.validate.consistency import ConsistencyResult
from pipeline_lib.validate.mixing import mix_samples

GRID_ROWS = 8


def matching_quota(cfg: FactoryConfig) -> FactoryConfig:
    """``cfg`` with a quota of as many generated labelled pixels as its Train split has,
    validated once when the quota is reached."""
    train = split_stats(Path(cfg.data.root), "Train")
    if train.pixels == 0:
        raise DataError(f"{cfg.data.root}: no labelled Train pixels to match")
    samples = mix_samples(1, train.pixels, cfg.generation.resolution)
    quota = cfg.quota.model_copy(update={"samples": samples, "validate_every": samples})
    validation = cfg.validation.model_copy(update={"data": ["gen", "ori", "both"]})
    return cfg.model_copy(update={"quota": quota, "validation": validation})


def for_current_models(cfg: FactoryConfig) -> FactoryConfig:
    """``cfg`` whose store and validation folders are named after the models and sampling
    settings that fill the store.

    A committed store is never topped up by other models: after a stage retrains, the
    quality run draws a new store beside the old one (which stays, with its report) rather
    than report on samples the old models drew.
    """
    digest = json_digest(
        model_hash(cfg.models.base),
        model_hash(cfg.label_lora.output),
        model_hash(controlnet_dir(cfg)),
        cfg.generation.model_dump(mode="json"),
        length=10,
    )
    store = cfg.store.path
    return cfg.model_copy(
        update={
            "store": cfg.store.model_copy(
                update={"path": store.with_name(f"{store.stem}-{digest}{store.suffix}")}
            ),
            "validation": cfg.validation.model_copy(
                update={"output": cfg.validation.output / f"models-{digest}"}
            ),
        }
    )


def filtered_by(cfg: FactoryConfig, ori_checkpoint: Path) -> FactoryConfig:
    """``cfg`` whose agreement filter, when on and naming no segmenter, uses the run's own
    Ori. model: trained on Train alone, so no Val tile reaches the generation."""
    qa = cfg.generation.qa
    if not qa.min_agreement or qa.agreement_model is not None:
        return cfg
    qa = qa.model_copy(update={"agreement_model": Path(ori_checkpoint).absolute()})
    return cfg.model_copy(update={"generation": cfg.generation.model_copy(update={"qa": qa})})


def _real_crops(root: Path, size: int, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    tiles = labelled_tiles(root, ["Train"])
    images, labels = [], []
    for index in rng.permutation(len(tiles))[:count]:
        image, mask = read_image(tiles[index].image_path), read_mask(tiles[index].mask_path)
        y = int(rng.integers(0, mask.shape[0] - size + 1))
        x = int(rng.integers(0, mask.shape[1] - size + 1))
        images.append(image[y : y + size, x : x + size])
        labels.append(mask[y : y + size, x : x + size])
    return np.stack(images), np.stack(labels)


def write_quality(
    cfg: FactoryConfig,
    validation: ValidationReport,
    consistency: ConsistencyResult,
    stage_seconds: dict[str, float],
    out_dir: Path,
) -> QualityReport:
    """Assemble and write quality.json, quality.md and quality_grid.png under ``out_dir``."""
    root = Path(cfg.data.root)
    train = split_stats(root, "Train")
    evaluated = split_stats(Path(cfg.data.eval_root), "Val")
    fidelity = label_fidelity(cfg.store.path, train.fractions)
    store = SampleStore(cfg.store.path)
    rows = store.manifest().column("index").to_pylist()[:GRID_ROWS]
    gen_images, gen_labels = (np.asarray(a) for a in store.read_rows(rows))
    real_images, real_labels = _real_crops(
        root, gen_labels.shape[1], len(rows), cfg.generation.seed
    )
    report = QualityReport(
        name=cfg.name,
        validation=validation,
        fidelity=fidelity,
        consistency=consistency,
        majority_baseline=majority_baseline(train.fractions, evaluated.fractions),
        stage_seconds=stage_seconds,
        train_samples=train.tiles,
        train_pixels=train.pixels,
        generated_pixels=int(fidelity.samples * gen_labels.shape[1] * gen_labels.shape[2]),
        min_agreement=cfg.generation.qa.min_agreement,
    )
    grid = quality_grid(real_images, real_labels, gen_images, gen_labels)
    return write_quality_report(report, out_dir, grid)
