"""Stable Diffusion components: presets, local tokenizer, checkpoint I/O and hashes."""

from __future__ import annotations

import os

# No hub on the factory's machines: diffusers/transformers must never try the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
