"""Stable Diffusion components: presets, local tokenizer, checkpoint I/O and hashes.

Every load is ``local_files_only``; the entry points (``lfactory``, the worker image) also
set ``HF_HUB_OFFLINE``, so nothing here needs to touch the environment.
"""
