"""Where reduced precision pays: CUDA, and CPUs that compute bfloat16 natively."""

from __future__ import annotations

import torch


def cpu_has_bf16() -> bool:
    """True on CPUs with native bfloat16 (AVX512-BF16 or AMX), where oneDNN runs bf16
    convolutions and matmuls faster than fp32; elsewhere bf16 is emulated and slower."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
