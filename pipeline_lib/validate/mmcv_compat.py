"""Make mmsegmentation importable and resumable on mmcv-lite and torch >= 2.6.

mmcv-lite ships no compiled ops (``mmcv._ext``), yet mmcv's ext loader imports that
module and checks ``hasattr`` for every op at import time. Mask2Former needs none of them:
deformable attention and point sampling have pure-PyTorch forms. ``ensure_mmseg()``
installs a stand-in ``mmcv._ext`` whose ops raise ``BackendUnavailableError`` when called,
forces the pure-PyTorch deformable attention on CUDA, and makes mmengine's checkpoint
loading work with torch's ``weights_only`` default.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import logging
import pickle
import sys
import threading
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline_lib.errors import BackendUnavailableError, CheckpointError

log = logging.getLogger(__name__)

EXT_NAME = "mmcv._ext"
_lock = threading.Lock()
_done = False
_trusted_dirs: list[Path] = []


def _missing_op(name: str) -> Callable[..., Any]:
    def op(*args: Any, **kwargs: Any) -> Any:
        raise BackendUnavailableError(
            f"mmcv op {name} is compiled-only; mmcv-lite lacks it. Use a model that needs no "
            "compiled mmcv op (the mask2former-* presets do not), or install the full mmcv "
            "built for this torch/CUDA."
        )

    op.__name__ = name
    return op


def make_ext_stub() -> types.ModuleType:
    """A stand-in ``mmcv._ext``: every op name resolves to a callable that raises."""
    module = types.ModuleType(EXT_NAME, "Stand-in for mmcv's compiled ops (absent in mmcv-lite).")
    module.__spec__ = importlib.machinery.ModuleSpec(EXT_NAME, loader=None)
    module.__package__ = "mmcv"
    module.IS_STANDIN = True  # type: ignore[attr-defined]

    def __getattr__(name: str) -> Any:
        # inspect and pickle probe dunders such as __file__: those must look absent.
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        return _missing_op(name)

    module.__getattr__ = __getattr__  # type: ignore[method-assign]
    return module


def _has_compiled_ext() -> bool:
    if isinstance(sys.modules.get(EXT_NAME), types.ModuleType):
        return not getattr(sys.modules[EXT_NAME], "IS_STANDIN", False)
    try:
        return importlib.util.find_spec(EXT_NAME) is not None
    except (ImportError, ValueError):
        return False


def _force_pytorch_deform_attn() -> None:
    # MultiScaleDeformableAttention.forward takes the compiled CUDA kernel when the module
    # global IS_CUDA_AVAILABLE is true and the input is on CUDA; the stand-in has no kernel.
    from mmcv.ops import multi_scale_deform_attn

    multi_scale_deform_attn.IS_CUDA_AVAILABLE = False
    multi_scale_deform_attn.IS_MLU_AVAILABLE = False


def trust_checkpoint_dir(path: str | Path) -> None:
    """Allow pickled (full) checkpoints below ``path``: the runner's own work dir."""
    resolved = Path(path).resolve()
    with _lock:
        if resolved not in _trusted_dirs:
            _trusted_dirs.append(resolved)


def _is_trusted(filename: str) -> bool:
    path = Path(filename).resolve()
    return any(path.is_relative_to(d) for d in _trusted_dirs)


def _load_from_local(filename: str, map_location: Any = None) -> Any:
    """mmengine's local loader with an explicit ``weights_only`` policy.

    torch >= 2.6 defaults to ``weights_only=True``, which refuses mmengine's own training
    checkpoints (they pickle the message hub and optimizer state). Plain weights load safely;
    a full pickle loads only from a directory the factory's runner wrote (``trust_checkpoint_dir``).
    """
    import torch

    path = Path(filename).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{path} can not be found.")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        if not _is_trusted(str(path)):
            raise CheckpointError(
                f"{path}: not a plain weights file (it needs pickle to load) and it lies outside "
                "the validation work dir; save it as a state dict of tensors, "
                "or load it from there."
            ) from None
        return torch.load(path, map_location=map_location, weights_only=False)


def _patch_checkpoint_loader() -> None:
    from mmengine.runner.checkpoint import CheckpointLoader

    CheckpointLoader.register_scheme(prefixes="", loader=_load_from_local, force=True)


def ensure_mmseg() -> None:
    """Prepare mmcv/mmengine so that ``import mmseg`` and Mask2Former work; idempotent."""
    global _done
    with _lock:
        if _done:
            return
        standin = not _has_compiled_ext()
        if standin:
            import mmcv

            stub = make_ext_stub()
            sys.modules[EXT_NAME] = stub
            # As the import system would: ``import mmcv._ext`` then finds ``mmcv._ext``.
            mmcv._ext = stub  # type: ignore[attr-defined]
            log.debug("installed a stand-in %s (mmcv-lite has no compiled ops)", EXT_NAME)
            _force_pytorch_deform_attn()
        _patch_checkpoint_loader()
        import mmdet.models  # noqa: F401  (registers Mask2Former's head parts)
        import mmseg.models  # noqa: F401

        _done = True
