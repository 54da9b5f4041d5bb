"""One way to hash settings: sha256 of their sorted-key JSON (pydantic models dumped first).

Resume checkpoints (``train.resumable.config_hash``) and Prefect cache keys
(``tasks.options.digest``) both use it; only their lengths differ.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import BaseModel


def json_digest(*parts: Any, length: int = 16) -> str:
    """Short sha256 of JSON-able parts; equal settings give equal digests on any machine."""
    plain = [p.model_dump(mode="json") if isinstance(p, BaseModel) else p for p in parts]
    text = json.dumps(plain, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]
