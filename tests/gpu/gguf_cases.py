"""The dequantizing GGUF GEMM (``pagellm.ops.triton.gguf_gemm``) against its torch twin on
fresh random blocks of each kept type, for any device: tests/gpu (CUDA, bf16/fp16) and
tests/unit/test_gguf_triton.py (CPU under TRITON_INTERPRET=1, float32)."""

from __future__ import annotations

import torch
from gguf import GGMLQuantizationType as T

from pagellm.layers.gguf_linear import CODE_BITS
from pagellm.ops.gguf import gguf_linear_torch, pack_gguf
from tests.helpers.gguf_blocks import random_gguf_weight


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    if not torch.isfinite(out).all():
        return float("inf")
    return ((out.float() - ref.float()).norm() / ref.float().norm().clamp_min(1e-30)).item()


def check_gguf_gemm(qtype: T, M: int, N: int, K: int, *, dtype: torch.dtype, device: str,
                    bias: bool = False, seed: int = 0) -> float:
    """Relative error of the kernel vs the twin (the twin in float32 on the same inputs)."""
    from pagellm.ops.triton import gguf_gemm

    codes, scale, offset, _ = random_gguf_weight(qtype, N, K, seed)
    packed = pack_gguf(codes.to(device), scale.to(device), offset.to(device), CODE_BITS[qtype])
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(M, K, generator=gen).to(device, dtype)
    b = torch.randn(N, generator=gen).to(device, dtype) if bias else None
    ref = gguf_linear_torch(x.float(), packed, None if b is None else b.float())
    out = gguf_gemm.gguf_gemm_triton(x, packed, b)
    assert out.shape == (M, N) and out.dtype == dtype
    return relative_error(out, ref)
