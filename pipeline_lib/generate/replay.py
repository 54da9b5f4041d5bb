"""Rebuild one stored sample from its manifest row and compare it with the stored bytes."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.compute as pc

from pipeline_lib.config import FactoryConfig, config_from_dict
from pipeline_lib.errors import StoreError
from pipeline_lib.generate.agreement import rejected_after_image
from pipeline_lib.generate.sampler import Generator
from pipeline_lib.store.manifest import read_manifest, read_shard_meta, sha256
from pipeline_lib.store.store import SampleStore

log = logging.getLogger(__name__)

_HASH_COLUMNS = ("label_model_hash", "lora_hash", "image_model_hash", "controlnet_hash")


@dataclass(frozen=True)
class Regenerated:
    """A rebuilt sample and whether it matches the store (bit-identical expected on CPU)."""

    sample_id: str
    label: np.ndarray
    image: np.ndarray
    label_matches: bool
    image_matches: bool
    models_match: bool

    @property
    def identical(self) -> bool:
        return self.label_matches and self.image_matches


def recorded_config(store: str | Path, shard_id: int, cfg: FactoryConfig | None) -> FactoryConfig:
    """The shard's recorded generation settings, with models from ``cfg`` when given."""
    meta = read_shard_meta(store, shard_id).get("config") or {}
    if "generation" not in meta:
        raise StoreError(
            f"{store}: shard {shard_id} records no generation config; "
            "it was not written by the generator"
        )
    if cfg is not None:
        return cfg.model_copy(
            update={"generation": cfg.generation.model_validate(meta["generation"])}
        )
    return config_from_dict(
        {
            "name": meta["name"],
            "generation": meta["generation"],
            "models": {"base": meta["models_base"]},
            # Stores written before label colours were recorded drew mmseg's palette.
            "label_lora": {
                "output": meta["label_lora"],
                "colours": meta.get("label_colours", "palette"),
            },
            "controlnet": {"output": meta["controlnet"]},
        },
        source=f"{store} shard {shard_id}",
    )


def regenerate(
    store: str | Path,
    sample_id: str,
    cfg: FactoryConfig | None = None,
    generator: Generator | None = None,
) -> Regenerated:
    """Replay the label batch and the image batch that produced ``sample_id``.

    Replaying whole batches (not the sample alone) keeps the result bit-identical on CPU
    even where batched kernels round differently from single-sample ones. The image batch
    held the batch's kept attempts and those the agreement filter rejected after drawing
    (the shard's config lists them); the filter itself does not run again.
    """
    sample_store = SampleStore(store)
    _, _, row = sample_store.read_sample(sample_id)
    shard_id = row["shard_id"]
    if generator is None:
        generator = Generator(recorded_config(sample_store.path, shard_id, cfg))
    models_match = all(generator.hashes[c] == row[c] for c in _HASH_COLUMNS)
    if not models_match:
        log.warning(
            "models differ from those that made %s: %s vs %s",
            sample_id,
            generator.hashes,
            {c: row[c] for c in _HASH_COLUMNS},
        )
    size = row["batch_size"]
    start = row["attempt"] // size * size
    batch = range(start, start + size)
    draws = [generator.draw(shard_id, a) for a in batch]
    labels = generator.sample_labels(draws)
    shard = read_manifest(sample_store.path, shard_id)
    in_batch = shard.filter(
        pc.and_(pc.greater_equal(shard["attempt"], start), pc.less(shard["attempt"], start + size))
    )
    rejected = rejected_after_image(read_shard_meta(sample_store.path, shard_id).get("config", {}))
    drawn = sorted({*in_batch["attempt"].to_pylist(), *rejected.intersection(batch)})
    position = drawn.index(row["attempt"])
    masks = [labels[a - start][1] for a in drawn]
    images = generator.sample_images([draws[a - start] for a in drawn], masks)
    label, image = masks[position], images[position]
    return Regenerated(
        sample_id,
        label,
        image,
        sha256(label) == row["label_sha256"],
        sha256(image) == row["image_sha256"],
        models_match,
    )
