"""Dequantizing GGUF GEMM in Triton: x [M, K] @ a GGUF weight [N, K].T in the GPU layout of
``pagellm.ops.gguf`` (4-bit low plane, optional 1/2/4-bit high plane, per-group float scale
and offset) -> [M, N] in x.dtype. Torch twin and oracle: ``pagellm.ops.gguf.gguf_linear_torch``.

Per K tile, the packed words of a [BLOCK_K, BLOCK_N] tile are loaded once ([BLOCK_K / 8, BLOCK_N]
low words, [BLOCK_K * H / 32, BLOCK_N] high words) and unpacked in registers; the group scales
and offsets ([BLOCK_K / G, BLOCK_N]) are loaded once and broadcast over their G rows; the tile
is dequantized (``scale * code + offset`` in float32, then x's dtype) and goes into one
``tl.dot``. Launch shapes as the W4A16 GEMM (``pagellm.ops.triton.gemm_launch``): decode
(M <= 32) a 16/32-row tile with split-K (float32 atomics) so every SM streams weights;
prefill 64/128-row tiles without split. BLOCK_K is a multiple of 32 (of every group and of
the 8 / 32-per-word packing), so a tile never splits a word or a group.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pagellm.ops.gguf import GGUFPacked
from pagellm.ops.triton.gemm_launch import split_k_config, split_k_gemm


@triton.jit
def _unpack(words, BITS: tl.constexpr, ROWS: tl.constexpr, BLOCK_N: tl.constexpr):
    """[ROWS * BITS / 32, BLOCK_N] int32 words -> [ROWS, BLOCK_N] int32 values."""
    PER_WORD: tl.constexpr = 32 // BITS
    shifts = tl.arange(0, PER_WORD) * BITS                                   # [PER_WORD]
    values = (words[:, None, :] >> shifts[None, :, None]) & ((1 << BITS) - 1)
    return tl.reshape(values, (ROWS, BLOCK_N))


@triton.jit
def _gguf_gemm_kernel(x_ptr, qweight_ptr, qhigh_ptr, scales_ptr, offsets_ptr, out_ptr,
                      M, N, K, k_per_split, stride_xm, stride_om,
                      HIGH_BITS: tl.constexpr, GROUP: tl.constexpr, ATOMIC: tl.constexpr,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_k = tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    mask_n = offs_n < N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    k_begin = pid_k * k_per_split
    k_end = tl.minimum(k_begin + k_per_split, K)        # K and k_per_split: multiples of BLOCK_K
    for k0 in range(k_begin, k_end, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(x_ptr + offs_m[:, None].to(tl.int64) * stride_xm + offs_k[None, :],
                    mask=mask_m[:, None], other=0.0)                        # [BM, BK]
        offs_lo = k0 // 8 + tl.arange(0, BLOCK_K // 8)
        lo_words = tl.load(qweight_ptr + offs_lo[:, None].to(tl.int64) * N + offs_n[None, :],
                           mask=mask_n[None, :], other=0)                    # [BK / 8, BN]
        codes = _unpack(lo_words, 4, BLOCK_K, BLOCK_N)                       # [BK, BN]
        if HIGH_BITS > 0:
            HIGH_ROWS: tl.constexpr = BLOCK_K * HIGH_BITS // 32
            offs_hi = k0 * HIGH_BITS // 32 + tl.arange(0, HIGH_ROWS)
            hi_words = tl.load(qhigh_ptr + offs_hi[:, None].to(tl.int64) * N + offs_n[None, :],
                               mask=mask_n[None, :], other=0)                # [BK * H / 32, BN]
            codes = codes | (_unpack(hi_words, HIGH_BITS, BLOCK_K, BLOCK_N) << 4)
        offs_g = k0 // GROUP + tl.arange(0, BLOCK_K // GROUP)
        group_ptrs = offs_g[:, None].to(tl.int64) * N + offs_n[None, :]      # [BK / G, BN]
        scale = tl.load(scales_ptr + group_ptrs, mask=mask_n[None, :], other=0.0).to(tl.float32)
        offset = tl.load(offsets_ptr + group_ptrs, mask=mask_n[None, :], other=0.0).to(tl.float32)
        scale = tl.reshape(tl.broadcast_to(scale[:, None, :], (BLOCK_K // GROUP, GROUP, BLOCK_N)),
                           (BLOCK_K, BLOCK_N))
        offset = tl.reshape(tl.broadcast_to(offset[:, None, :], (BLOCK_K // GROUP, GROUP, BLOCK_N)),
                            (BLOCK_K, BLOCK_N))
        w = (codes.to(tl.float32) * scale + offset).to(x.dtype)              # [BK, BN]
        acc += tl.dot(x, w, out_dtype=tl.float32)
    out_ptrs = out_ptr + offs_m[:, None].to(tl.int64) * stride_om + offs_n[None, :]
    out_mask = mask_m[:, None] & mask_n[None, :]
    if ATOMIC:
        tl.atomic_add(out_ptrs, acc, mask=out_mask)
    else:
        tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=out_mask)


def launch_config(M: int, N: int, K: int, num_sms: int) -> dict:
    """Tile sizes, split-K and warps for one call (``gemm_launch.split_k_config``); BLOCK_K
    halved until it divides K (K % 32 == 0)."""
    def fit_block_k(block_k: int) -> int:
        while K % block_k:
            block_k //= 2                                  # stops at 32: K % 32 == 0
        return block_k

    return split_k_config(M, N, K, num_sms, fit_block_k)


def gguf_gemm_triton(x: torch.Tensor, packed: GGUFPacked,
                     bias: torch.Tensor | None = None) -> torch.Tensor:
    """x [..., K] @ the GGUF weight [N, K].T (+ bias) -> [..., N] in x.dtype. Raises
    ValueError when K is not a multiple of 32 (no GGUF type has such rows)."""
    K = x.shape[-1]
    if K % 32 or packed.qweight.shape[0] * 8 != K:
        raise ValueError(f"GGUF GEMM: K={K} does not match the packed weight "
                         f"({packed.qweight.shape[0] * 8} inputs, a multiple of 32)")
    N = packed.qweight.shape[1]

    def launch(grid, x2, out, cfg, atomic):
        _gguf_gemm_kernel[grid](
            x2, packed.qweight, packed.qhigh if packed.qhigh is not None else packed.qweight,
            packed.scales, packed.offsets, out, x2.shape[0], N, K, cfg["k_per_split"],
            x2.stride(0), out.stride(0),
            HIGH_BITS=packed.high_bits, GROUP=packed.group_size, ATOMIC=atomic,
            BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], BLOCK_K=cfg["BLOCK_K"],
            num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])

    return split_k_gemm(x, N, bias, lambda M, K, sms: launch_config(M, N, K, sms), launch)
