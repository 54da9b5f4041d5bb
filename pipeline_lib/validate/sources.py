"""Which LoveDA-layout folders each data name trains on: Gen. (the exported store), Ori., both."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

from pipeline_lib.choices import DATA_LABELS
from pipeline_lib.config import FactoryConfig
from pipeline_lib.errors import StoreError
from pipeline_lib.validate.mixing import mix_sources

log = logging.getLogger(__name__)


def usable_samples(cfg: FactoryConfig, samples: int | None = None) -> int:
    """How many committed samples a round may train on: the store's, at most ``samples``."""
    from pipeline_lib.store.object_store import location
    from pipeline_lib.store.store import committed_count, store_exists

    store = location(cfg.store.path)
    if not store_exists(store):
        raise StoreError(
            f"{store}: no generated store yet; run `lfactory generate CONFIG` "
            "(or `lfactory run CONFIG`) first, name an existing store with `lfactory validate "
            "--store`, or validate with --data ori"
        )
    count = committed_count(store)
    return count if samples is None else min(count, samples)


def export_generated(cfg: FactoryConfig, samples: int | None = None) -> Path:
    """Export the store's first ``samples`` committed samples (all when None) to a LoveDA
    Train folder, once per sample count: a quota step validates exactly its own samples."""
    from pipeline_lib.store.object_store import location

    count = usable_samples(cfg, samples)
    store = location(cfg.store.path)
    if count == 0:
        raise StoreError(f"{store}: no committed samples yet; generate some before validating gen")
    from pipeline_lib.store.export import export_store

    out = Path(cfg.validation.output) / "generated" / f"{Path(str(store)).name}-{count}"
    if not out.is_dir():
        log.info("exporting %d generated samples from %s to %s", count, store, out)
        export_store(store, out, format="loveda", split="Train", limit=count)
    return out


def train_sources(
    choices: Iterable[str], cfg: FactoryConfig, samples: int | None = None
) -> dict[str, list[Path]]:
    """Map each chosen data name to its release-layout folders, e.g. {"Gen.+Ori.": [gen, ori]},
    then each of ``validation.mix_ratios`` the round's samples can fill ("Gen.+Ori. x0.5")."""
    choices = list(dict.fromkeys(choices))
    generated = export_generated(cfg, samples) if {"gen", "both"} & set(choices) else None
    original = Path(cfg.data.root)
    folders = {"gen": [generated], "ori": [original], "both": [generated, original]}
    sources = {DATA_LABELS[c]: folders[c] for c in choices}
    ratios = cfg.validation.mix_ratios
    if ratios:
        available = usable_samples(cfg, samples)
        sources |= mix_sources(ratios, cfg, available, lambda n: export_generated(cfg, n))
    return sources
