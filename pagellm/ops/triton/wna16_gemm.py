"""W4A16 / W8A16 GEMM in Triton: x [M, K] (fp16/bf16/fp32) @ the int4/int8 weight of the
internal GPTQ-style layout (``pagellm.ops.quant``) -> [M, N] in x.dtype.

Torch twin and oracle: ``pagellm.ops.quant.wna16_linear_torch``.

One kernel, two launch shapes (``pagellm.ops.triton.gemm_launch``):
- decode (M <= 32 rows): a 16- or 32-row tile and split-K, so enough programs run to keep
  every SM streaming weights (each weight word is read once per call; partial sums are
  added into a float32 buffer with atomics);
- prefill: 64/128-row tiles, no split.
The packed words of a [BLOCK_K / pack, BLOCK_N] tile are loaded once and unpacked in
registers (``UNPACK_IN_REGISTERS``). When a K tile lies inside one quantization group (no ``g_idx`` and BLOCK_K
divides the group), the integer weights go into the dot product and the group's scales
multiply the partial product; otherwise (act-order ``g_idx``, small groups) every row is
dequantized with its own group's scale and zero before the dot.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from pagellm.ops.triton.gemm_launch import split_k_config, split_k_gemm

UNPACK_IN_REGISTERS = os.environ.get("PAGELLM_WNA16_UNPACK", "registers") == "registers"
"""Load a tile's packed words once and unpack them with a reshape (default), or let every
row load its own word (``PAGELLM_WNA16_UNPACK=rows``); both are tested, the faster one on
the H200 is the default (benchmarks/w9_quant.py)."""


@triton.jit
def _wna16_gemm_kernel(x_ptr, qweight_ptr, scales_ptr, zeros_ptr, g_idx_ptr, out_ptr,
                       M, N, K, rows_per_group, k_per_split,
                       stride_xm, stride_qk, stride_sg, stride_zg, stride_om,
                       BITS: tl.constexpr, HAS_ZEROS: tl.constexpr, HAS_G_IDX: tl.constexpr,
                       ONE_GROUP_PER_TILE: tl.constexpr, ATOMIC: tl.constexpr,
                       UNPACK_IN_REGISTERS: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    PACK: tl.constexpr = 32 // BITS
    MASK: tl.constexpr = (1 << BITS) - 1
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_k = tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    mask_n = offs_n < N
    shifts = tl.arange(0, PACK) * BITS                                   # [PACK]
    zero_shift = (offs_n % PACK) * BITS                                  # [BLOCK_N]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    k_begin = pid_k * k_per_split
    k_end = tl.minimum(k_begin + k_per_split, K)
    for k0 in range(k_begin, k_end, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask_k = offs_k < k_end
        x = tl.load(x_ptr + offs_m[:, None].to(tl.int64) * stride_xm + offs_k[None, :],
                    mask=mask_m[:, None] & mask_k[None, :], other=0.0)   # [BM, BK]
        if UNPACK_IN_REGISTERS:
            offs_kp = k0 // PACK + tl.arange(0, BLOCK_K // PACK)
            packed = tl.load(qweight_ptr + offs_kp[:, None].to(tl.int64) * stride_qk
                             + offs_n[None, :],
                             mask=(offs_kp[:, None] < tl.cdiv(k_end, PACK)) & mask_n[None, :],
                             other=0)                                    # [BK / PACK, BN]
            q = (packed[:, None, :] >> shifts[None, :, None]) & MASK     # [BK / PACK, PACK, BN]
            q = tl.reshape(q, (BLOCK_K, BLOCK_N))                        # row k0 + j
        else:       # each row loads its word (the PACK rows of a word share a cache line)
            packed = tl.load(qweight_ptr + (offs_k[:, None] // PACK).to(tl.int64) * stride_qk
                             + offs_n[None, :], mask=mask_k[:, None] & mask_n[None, :],
                             other=0)                                    # [BK, BN]
            q = (packed >> ((offs_k % PACK) * BITS)[:, None]) & MASK     # [BK, BN]
        if ONE_GROUP_PER_TILE:
            group = k0 // rows_per_group
            scale = tl.load(scales_ptr + group * stride_sg + offs_n, mask=mask_n, other=0.0)
            if HAS_ZEROS:
                zero_word = tl.load(zeros_ptr + group * stride_zg + offs_n // PACK, mask=mask_n,
                                    other=0)
                zero = (zero_word >> zero_shift) & MASK                  # [BN]
            else:
                zero = tl.full((BLOCK_N,), 1 << (BITS - 1), tl.int32)
            w = (q - zero[None, :]).to(x.dtype)                          # exact small ints
            acc += tl.dot(x, w, out_dtype=tl.float32) * scale[None, :].to(tl.float32)
        else:
            if HAS_G_IDX:
                groups = tl.load(g_idx_ptr + offs_k, mask=mask_k, other=0)
            else:
                groups = offs_k // rows_per_group                        # [BK]
            tile_mask = mask_k[:, None] & mask_n[None, :]
            scale = tl.load(scales_ptr + groups[:, None].to(tl.int64) * stride_sg + offs_n[None, :],
                            mask=tile_mask, other=0.0)                   # [BK, BN]
            if HAS_ZEROS:
                zero_word = tl.load(zeros_ptr + groups[:, None].to(tl.int64) * stride_zg
                                    + offs_n[None, :] // PACK, mask=tile_mask, other=0)
                zero = (zero_word >> zero_shift[None, :]) & MASK
            else:
                zero = tl.full((BLOCK_K, BLOCK_N), 1 << (BITS - 1), tl.int32)
            w = ((q - zero).to(tl.float32) * scale.to(tl.float32)).to(x.dtype)
            acc += tl.dot(x, w, out_dtype=tl.float32)
    out_ptrs = out_ptr + offs_m[:, None].to(tl.int64) * stride_om + offs_n[None, :]
    out_mask = mask_m[:, None] & mask_n[None, :]
    if ATOMIC:
        tl.atomic_add(out_ptrs, acc, mask=out_mask)
    else:
        tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=out_mask)


def launch_config(M: int, N: int, K: int, rows_per_group: int, has_g_idx: bool, bits: int,
                  num_sms: int) -> dict:
    """Tile sizes, split-K and warps for one call (``gemm_launch.split_k_config``), and
    ``one_group``: whether every K tile lies inside one quantization group."""
    pack = 32 // bits

    def fit_block_k(block_k: int) -> int:
        # a K tile inside one group lets scales apply after the dot
        while block_k > 32 and not has_g_idx and rows_per_group % block_k:
            block_k //= 2
        return max(block_k, 2 * pack)

    config = split_k_config(M, N, K, num_sms, fit_block_k)
    config["one_group"] = not has_g_idx and rows_per_group % config["BLOCK_K"] == 0
    return config


def wna16_gemm_triton(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor,
                      qzeros: torch.Tensor | None, g_idx: torch.Tensor | None, bits: int,
                      bias: torch.Tensor | None = None) -> torch.Tensor:
    """x [M, K] @ weight [K, N] (+ bias) -> [M, N] in x.dtype; the layout of
    ``pagellm.ops.quant`` (qweight [K / pack, N], scales [G, N], qzeros [G, N / pack] or
    None, g_idx [K] or None)."""
    N = qweight.shape[1]
    # the kernel walks N with unit stride (the layers store these contiguous: no copy)
    qweight, scales = qweight.contiguous(), scales.to(x.dtype).contiguous()
    qzeros = qzeros.contiguous() if qzeros is not None else None
    rows_per_group = x.shape[-1] // scales.shape[0]

    def make_config(M: int, K: int, num_sms: int) -> dict:
        return launch_config(M, N, K, rows_per_group, g_idx is not None, bits, num_sms)

    def launch(grid, x2, out, cfg, atomic):
        _wna16_gemm_kernel[grid](
            x2, qweight, scales, qzeros if qzeros is not None else qweight,
            g_idx if g_idx is not None else qweight, out,
            x2.shape[0], N, x2.shape[1], rows_per_group, cfg["k_per_split"],
            x2.stride(0), qweight.stride(0), scales.stride(0),
            qzeros.stride(0) if qzeros is not None else 0, out.stride(0),
            BITS=bits, HAS_ZEROS=qzeros is not None, HAS_G_IDX=g_idx is not None,
            ONE_GROUP_PER_TILE=cfg["one_group"], ATOMIC=atomic,
            UNPACK_IN_REGISTERS=UNPACK_IN_REGISTERS,
            BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], BLOCK_K=cfg["BLOCK_K"],
            num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])

    return split_k_gemm(x, N, bias, make_config, launch)
