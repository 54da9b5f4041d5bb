"""Sampling label maps and images, label QA, and the shard-sized units a flow calls.

Names load lazily: importing ``pipeline_lib.generate.seeds`` or ``.qa`` must not pull in
torch and diffusers (the store's kill-test child and light tools use them).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Generator": "sampler",
    "resolve_device": "sampler",
    "LabelQA": "qa",
    "score_label": "qa",
    "Regenerated": "replay",
    "regenerate": "replay",
    "sample_id": "seeds",
    "sample_seed": "seeds",
    "generate_and_commit_shard": "shards",
    "open_store_for": "shards",
    "stage_generated_shard": "shards",
    "commit_staged": "shards",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
