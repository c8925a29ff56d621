"""Dynamic per-token fp8 quantization of activations in Triton: one program per row reads
the row twice (its max, then the scaled values) and writes fp8 values and a float32 scale.

Torch twin and oracle: ``pagellm.ops.quant.quantize_fp8_per_token`` (same scale floor, same
float32 division and clamp); the torch version takes about six passes over the activations,
this one two reads and one write.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pagellm.ops.quant import FP8_DTYPE, FP8_MAX, FP8_MIN_SCALE


@triton.jit
def _fp8_per_token_kernel(x_ptr, out_ptr, scale_ptr, K, stride_x, stride_out,
                          FP8_MAX_VALUE: tl.constexpr, MIN_SCALE: tl.constexpr,
                          BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    amax = tl.zeros((BLOCK,), dtype=tl.float32)
    for start in range(0, K, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        x = tl.load(x_ptr + row * stride_x + cols, mask=cols < K, other=0.0).to(tl.float32)
        amax = tl.maximum(amax, tl.abs(x))
    scale = tl.maximum(tl.max(amax, axis=0) / FP8_MAX_VALUE, MIN_SCALE)
    tl.store(scale_ptr + row, scale)
    for start in range(0, K, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        x = tl.load(x_ptr + row * stride_x + cols, mask=cols < K, other=0.0).to(tl.float32)
        q = tl.clamp(tl.math.div_rn(x, scale), -FP8_MAX_VALUE, FP8_MAX_VALUE)   # IEEE, as torch
        tl.store(out_ptr + row * stride_out + cols, q.to(out_ptr.dtype.element_ty), mask=cols < K)


def quantize_fp8_per_token_triton(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] (CUDA) -> (float8_e4m3fn [M, K], float32 scales [M, 1]), as the twin."""
    if x.stride(-1) != 1:
        x = x.contiguous()
    M, K = x.shape
    out = torch.empty((M, K), dtype=FP8_DTYPE, device=x.device)
    scales = torch.empty((M, 1), dtype=torch.float32, device=x.device)
    if M > 0:
        block = min(4096, triton.next_power_of_2(K))
        _fp8_per_token_kernel[(M,)](x, out, scales, K, x.stride(0), out.stride(0),
                                    FP8_MAX_VALUE=FP8_MAX, MIN_SCALE=FP8_MIN_SCALE, BLOCK=block,
                                    num_warps=8 if block >= 2048 else 4)
    return out, scales
