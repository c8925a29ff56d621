"""Decode GEMV for unquantized 16-bit weights in Triton: x [M, K] (a few rows) times weight
[N, K] (bfloat16 or float16, K contiguous) -> [M, N] in x.dtype, the weight read once.

The fp8 GEMV's structure (``quant_gemv``) without the scale: each program owns BLOCK_N output
columns, one K slice and 1 or 2 rows of x (grid axis 2 over row blocks), loads [BLOCK_N,
BLOCK_K] weight tiles (one warp reads 512 contiguous bytes of a row at the default 256-element
K tile), converts them to float32 and accumulates ``w * x`` into one [BLOCK_N, BLOCK_K] float32
accumulator per row, summed along K once at the end (no per-tile cross-lane reduction). The K
slices are added in the same launch (``gemv_split_k``), so unlike cuBLAS' split-K there is no
second reduce kernel.

A variant for the merged gate|up projection (``dense_gemv_silu_mul_triton``, constexpr
SILU_MUL) has each program read both its BLOCK_N gate rows and the matching up rows and write
``silu(gate) * up`` [M, N / 2] from its epilogue (after the split-K sum), rounding as the GEMV
followed by ``pagellm.ops.triton.activation`` does: one launch instead of two.

Where it runs: the unquantized linear method (``pagellm.layers.linear``) calls it only for the
(kind, M, K, N, SM count) entries of ``quant_gemv.TUNED_CONFIGS`` (kind ``"bf16"`` /
``"fp16"`` by the weight's dtype): shapes where ``benchmarks/quant_gemv_bench.py --sweep``
measured it faster than cuBLAS on that GPU model; the SiLU variant
(``MergedColumnParallelLinear.forward_silu_and_mul``, called by the Llama MLP) at the entries of
kind ``"bf16_silu_mul"`` (faster than cuBLAS plus the SiLU-and-mul kernel). Everything else
stays on ``F.linear``, so the
choice (and greedy output) depends only on the GPU model and the table, never on start-up
timings.

Torch twin and oracle: ``pagellm.ops.quant.dense_gemv_torch``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pagellm.ops.triton.gemm_launch import num_sms
from pagellm.ops.triton.gemv_split_k import finish_gemv_tile, finish_silu_mul_tile, run_gemv
from pagellm.ops.triton.pdl import (gemv_launch_args, launch_dependents, prefetch_slice,
                                    wait_for_previous_grid)
from pagellm.ops.triton.quant_gemv import (FP8_PROGRAMS_PER_SM, TUNED_CONFIGS, GemvConfig,
                                           count_call, split_for)

DENSE_GEMV_MAX_ROWS = 2
"""The unquantized linear method considers the GEMV for at most 2 rows (each row of x adds a
[BLOCK_N, BLOCK_K] FMA per tile on the CUDA cores; past 2 the tensor cores' GEMM wins, as for
the fp8 GEMV, ``quant_gemv.FP8_GEMV_MAX_ROWS``)."""

DENSE_KINDS = {torch.bfloat16: "bf16", torch.float16: "fp16"}
"""Weight dtype -> the TUNED_CONFIGS kind of its GEMV launches."""
SILU_MUL_SUFFIX = "_silu_mul"
"""Kind suffix of the merged gate|up GEMV with SiLU-and-mul in its epilogue."""


@triton.jit
def _dense_gemv_kernel(x_ptr, weight_ptr, bias_ptr, M, N, K, k_per_split, stride_xm, stride_wn,
                       prefetch_k,
                       out_ptr, partial_ptr, counter_ptr, stride_ps, stride_pm, stride_om,
                       HAS_BIAS: tl.constexpr, SPLIT_MODE: tl.constexpr, SILU_MUL: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                       PDL: tl.constexpr):
    """Rows row0 .. row0 + BLOCK_M (BLOCK_M 1 or 2) of x times weight rows pid_n * BLOCK_N ..
    over the K slice pid_k (module docstring). SILU_MUL: N is half the weight's rows (gate |
    up), the program also reads the up rows N + offs_n and writes silu(gate) * up. PDL:
    launched with programmatic dependent launch; prefetch the first ``prefetch_k`` elements
    of the slice of each row into L2, then wait for the previous kernel (``pdl``)."""
    launch_dependents()
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    row0 = tl.program_id(2) * BLOCK_M
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    k_begin = pid_k * k_per_split
    k_end = tl.minimum(k_begin + k_per_split, K)
    k_lim0 = tl.where(row0 < M, k_end, 0)                  # a row past M reads x = 0
    k_lim1 = tl.where(row0 + 1 < M, k_end, 0)
    if PDL:
        prefetch_slice(weight_ptr, offs_n, mask_n, stride_wn, k_begin, k_end, prefetch_k)
        if SILU_MUL:
            prefetch_slice(weight_ptr, offs_n + N, mask_n, stride_wn, k_begin, k_end, prefetch_k)
        wait_for_previous_grid()
    w_rows = weight_ptr + offs_n[:, None].to(tl.int64) * stride_wn               # [BN, 1]
    up_rows = weight_ptr + (offs_n + N)[:, None].to(tl.int64) * stride_wn        # [BN, 1]
    acc0 = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    acc1 = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    up0 = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    up1 = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    for k0 in range(k_begin, k_end, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask = mask_n[:, None] & (offs_k < k_end)[None, :]
        w = tl.load(w_rows + offs_k[None, :], mask=mask, other=0.0).to(tl.float32)  # [BN, BK]
        x0 = tl.load(x_ptr + row0 * stride_xm + offs_k, mask=offs_k < k_lim0,
                     other=0.0).to(tl.float32)[None, :]                          # [1, BK]
        acc0 += w * x0
        if SILU_MUL:
            w_up = tl.load(up_rows + offs_k[None, :], mask=mask, other=0.0).to(tl.float32)
            up0 += w_up * x0
        if BLOCK_M == 2:
            x1 = tl.load(x_ptr + (row0 + 1) * stride_xm + offs_k, mask=offs_k < k_lim1,
                         other=0.0).to(tl.float32)[None, :]
            acc1 += w * x1
            if SILU_MUL:
                up1 += w_up * x1
    offs_m = row0 + tl.arange(0, BLOCK_M)
    rows = tl.where(offs_m[:, None] == row0, tl.sum(acc0, axis=1)[None, :],
                    tl.sum(acc1, axis=1)[None, :])                        # [BLOCK_M, BN]
    if SILU_MUL:
        up = tl.where(offs_m[:, None] == row0, tl.sum(up0, axis=1)[None, :],
                      tl.sum(up1, axis=1)[None, :])
        finish_silu_mul_tile(rows, up, offs_m, offs_n, M, N, bias_ptr, out_ptr, partial_ptr,
                             counter_ptr, stride_ps, stride_pm, stride_om, HAS_BIAS, SPLIT_MODE)
    else:
        finish_gemv_tile(rows, offs_m, offs_n, M, N, bias_ptr, out_ptr, partial_ptr,
                         counter_ptr, stride_ps, stride_pm, stride_om, HAS_BIAS, SPLIT_MODE)


def tuned_dense_gemv_config(x: torch.Tensor, weight: torch.Tensor,
                            silu_mul: bool = False) -> GemvConfig | None:
    """The measured launch of x [M, K] @ weight [N, K].T when M <= DENSE_GEMV_MAX_ROWS and
    TUNED_CONFIGS lists this (kind, M, K, N, SM count), i.e. the GEMV beat cuBLAS there
    (``silu_mul``: kind ``"<dtype>_silu_mul"``, the merged gate|up GEMV with SiLU-and-mul beat
    cuBLAS plus the SiLU-and-mul kernel); else None (use F.linear)."""
    kind = DENSE_KINDS.get(weight.dtype)
    if (kind is None or x.dim() != 2 or x.dtype != weight.dtype
            or x.shape[0] > DENSE_GEMV_MAX_ROWS):
        return None
    N, K = weight.shape
    kind = kind + SILU_MUL_SUFFIX if silu_mul else kind
    return TUNED_CONFIGS.get((kind, x.shape[0], K, N, num_sms(x.device)))


def dense_gemv_config(M: int, N: int, K: int, sms: int) -> GemvConfig:
    """The launch when no measured one is given (the benchmark's default, the tests): [16, 256]
    tiles (8 KB of bf16, as the fp8 GEMV's [16, 512]), 1 or 2 rows a program, split-K to the
    fp8 GEMV's FP8_PROGRAMS_PER_SM (``N``: output columns)."""
    block_k = min(256, max(triton.next_power_of_2(K), 16))
    return GemvConfig(1 if M <= 1 else 2, 16, block_k,
                      split_for(N, K, 16, block_k, sms, FP8_PROGRAMS_PER_SM))


def _run_dense(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
               config: GemvConfig | None, in_kernel_reduce: bool, silu_mul: bool):
    """The launch of both public functions; N = output columns (half the weight's rows with
    ``silu_mul``)."""
    kind = DENSE_KINDS.get(weight.dtype, str(weight.dtype))
    count_call(x, kind + SILU_MUL_SUFFIX if silu_mul else kind)
    K, N = x.shape[-1], weight.shape[0] // 2 if silu_mul else weight.shape[0]
    weight = weight.contiguous()
    config = config or dense_gemv_config(x.numel() // max(K, 1), N, K, num_sms(x.device))
    if config.block_m not in (1, 2):
        raise ValueError(f"the dense GEMV takes 1 or 2 rows a program, got {config.block_m}")
    k_per_split = config.k_per_split(K)
    pdl_args = gemv_launch_args(x, weight, weight.shape[0], k_per_split, config.split_k,
                                config.block_k)

    def launch(grid, x2, split_args):
        _dense_gemv_kernel[grid](
            x2, weight, bias if bias is not None else weight, x2.shape[0], N, K, k_per_split,
            x2.stride(0), weight.stride(0), **split_args, **pdl_args, HAS_BIAS=bias is not None,
            SILU_MUL=silu_mul, BLOCK_M=config.block_m, BLOCK_N=config.block_n,
            BLOCK_K=config.block_k, num_warps=config.num_warps, num_stages=config.num_stages)

    return run_gemv(x, N, bias, config.block_m, config.block_n, config.split_k, launch,
                    in_kernel_reduce, 2 * N if silu_mul else None)


def dense_gemv_triton(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                      config: GemvConfig | None = None,
                      in_kernel_reduce: bool = True) -> torch.Tensor:
    """x [..., K] (at most quant_gemv.GEMV_MAX_ROWS rows) @ weight [N, K].T (16-bit, K
    contiguous) (+ bias [N]) -> [..., N] in x.dtype, float32 accumulation. ``config``: the
    launch (default ``dense_gemv_config``; block_m 1 or 2); ``in_kernel_reduce=False``: split-K
    slices added by a second launch. ValueError for too many rows or another block_m."""
    return _run_dense(x, weight, bias, config, in_kernel_reduce, False)


def dense_gemv_silu_mul_triton(x: torch.Tensor, weight: torch.Tensor,
                               bias: torch.Tensor | None = None,
                               config: GemvConfig | None = None) -> torch.Tensor:
    """``silu_and_mul(dense_gemv_triton(x, weight, bias))`` in one launch, bit for bit: x
    [..., K] @ the merged weight [2 * d, K] (gate rows, then up rows; + bias [2 * d]) ->
    [..., d] in x.dtype. ``config``: block_n counts output columns (each program reads
    block_n gate and block_n up rows). ValueError for too many rows, another block_m, or more
    output tiles than the in-kernel reduction's counters."""
    return _run_dense(x, weight, bias, config, True, True)
