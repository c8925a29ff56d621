"""Weight-only decode GEMVs in Triton for a few rows: x [M, K] (bf16/fp16/fp32, M <= 8) times
a W4A16/W8A16 or fp8 weight -> [M, N] in x.dtype, the weight read once at streaming speed.

Why not the tile GEMMs at decode (benchmarks/RESULTS.md, "W9 weight part at W1"): at M = 1
the ``tl.dot`` W4A16 kernel pads its rows to 16 and reaches ~0.75 TB/s of int4 bytes, and
``torch._scaled_mm`` plus the per-token activation quantizer is slower than the bf16 GEMV.
Here there is no ``tl.dot``: each program owns BLOCK_N output columns and one K slice,
dequantizes its weight tile in registers and multiplies it by the activations broadcast,
accumulating in float32.

- W4A16 / W8A16 (internal GPTQ layout, ``pagellm.ops.quant``: ``qweight`` int32 [K / pack,
  N], N contiguous): one program owns 1 or 2 rows of x (grid axis 2 over row blocks),
  BLOCK_N columns and one K slice, and loads [BLOCK_K / pack, BLOCK_N] tiles of packed
  words (16-byte vectors along N). Only 2D float32 accumulators [BLOCK_K / pack, BLOCK_N]
  (one per row of x; a 3D [rows, K, N] product forces layout conversions through shared
  memory): per tile, value j of every word is masked in place (``word & (mask << s)`` with
  s = bits * (j % (pack / 2)), from the word's low half or from ``word >> 16``), OR-ed with
  ``MAGIC`` (the float then is 2**23 + q * 2**s exactly) and less 2**23, and multiplied by
  x[k0 + kp * pack + j] * 2**-s (exact); t = sum_j of those, and the tile adds
  ``scale * (t - zero * sum_j x_j)`` (the zero point and scale once per word, not once per
  value): ~3.4 instructions a value at one row. The packed rows are summed once, at the end.
  Group scales/zeros: one [BLOCK_N] vector per tile when the tile lies in one group (the
  default K tile, 128 rows, is one group of the usual size), one [BLOCK_K / pack, BLOCK_N]
  gather per tile when only the words do (groups are multiples of the pack), and with an
  act-order ``g_idx`` one gather per value with the value dequantized before its FMA.
- fp8 (float8_e4m3fn weight [N, K], K contiguous, float32 scale per output channel [N]):
  a [BLOCK_N, BLOCK_K] tile converted to float32, reduced per row of x each iteration; the
  channel scale multiplies the sums at the end. Weight-only: the activations are not
  quantized (a static ``input_scale`` is not used; the result is the more exact product).

Split-K (when the column blocks give fewer than ``*_PROGRAMS_PER_SM`` programs per SM, the
loads in flight per SM that streaming HBM needs): every K slice writes its float32 partial
sums into ``[split_k, M, N]`` and the slice program that arrives last at its output tile adds
them in slice order (deterministic), adds the bias and casts, in the same launch
(``pagellm.ops.triton.gemv_split_k``; ``in_kernel_reduce=False``: a second launch does it, as
before, bit-identically); with one slice the GEMV writes the output itself.
Launch shapes depend only on (M, N, K), the weight's constants and ``TUNED_CONFIGS`` (no
autotuning), so the calls can be captured in CUDA graphs.

Torch twins and oracles: ``pagellm.ops.quant.wna16_linear_torch`` and
``pagellm.ops.quant.fp8_weight_only_linear_torch``.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from pagellm.ops.triton.gemm_launch import num_sms
from pagellm.ops.triton.gemv_split_k import finish_gemv_tile, run_gemv
from pagellm.ops.triton.pdl import (gemv_launch_args, launch_dependents, prefetch_slice,
                                    wait_for_previous_grid)

logger = logging.getLogger(__name__)

GEMV_MAX_ROWS = 8
"""The GEMV functions take at most 8 rows (the kernels' limit). Which row counts the linear
methods send here is decided per kind: ``FP8_GEMV_MAX_ROWS`` and ``WNA16_GEMV_MAX_ROWS``."""

FP8_GEMV_MAX_ROWS = 2
"""fp8 linears take the weight-only GEMV for at most 2 rows, ``torch._scaled_mm`` (W8A8)
above. The H200 table (benchmarks/quant_gemv_bench.py, µs per call): at M = 1 the GEMV wins
on every Llama-8B shape (gate_up 32.0 vs 50.3, down 29.9 vs 50.6, qkv 11.6 vs 21.1, o 10.3 vs
17.7), at M = 4 it loses (gate_up 82.2 vs 50.1, down 71.9 vs 51.2; qkv 22.9 vs 21.3): each
row of x re-reduces the dequantized tile on the CUDA cores. M = 2 (about twice the M = 1
cost of the FMAs, still under the byte stream) is the last row count kept."""

WNA16_GEMV_MAX_ROWS = 2
"""W4A16/W8A16 linears take the GEMV for at most 2 rows, the ``tl.dot`` tile GEMM above
(which pads to 16 rows and reaches ~0.6-0.8 TB/s of int4 bytes at any M <= 16). The kernel
spends ~3.4 instructions a value at M = 1 (AND/OR, subtraction, FMA, plus the per-tile
scale) and ~4.6 at M = 2 (one FMA more): the H200's ~33 T lane instructions/s against 8.5 T
int4 values/s at 4.25 TB/s leave both under the issue limit, M = 4 (~7) over it. Measured on
an H200 (``quant_gemv_bench.py --sweep``, tuned configs, µs; RESULTS.md session 7): at M = 2
the GEMV still beats the tile GEMM (flat over M <= 8) on every Llama-8B shape: qkv 18.5 vs
20.8-21.3, o 14.3 vs 16.0-16.2, gate_up 57.9 vs 75.0-75.9, down 34.8 vs 45.3-45.7."""

GEMV_CALLS: Counter = Counter()
"""Host-side dispatch record: ``"wna16"`` / ``"fp8"`` / ``"bf16"`` / ``"fp16"`` (the dense
GEMV, ``pagellm.ops.triton.dense_gemv``; ``"bf16_silu_mul"``: its gate|up variant) -> GEMV
launches issued (a CUDA graph replay runs the captured launch without counting again). The
first of each kind is logged."""

MAGIC = 0x4B000000
"""float32 bits of 2**23: OR-ed with an integer q < 2**23 it reads as 2**23 + q."""

WNA16_PROGRAMS_PER_SM = 8
"""W4A16 split-K target: programs per SM (N = 4096 with 64-column blocks: 16 slices, 1024
programs). One program streams a [BLOCK_K / pack, BLOCK_N] tile of 4 KB at a time, so eight
resident per SM keep ~32 KB of loads in flight, what HBM needs to approach its bandwidth."""

FP8_PROGRAMS_PER_SM = 4
"""fp8 split-K target (its tiles are 8 KB): the gate_up shape's 1792 column blocks (no
split, 3.67 TB/s on the H200) exceed it; qkv/o/down (256-384 blocks, 1.6-2.2 TB/s unsplit)
split 2-3 ways."""

TUNED_CONFIGS: dict[tuple, "GemvConfig"] = {}
"""(kind, M, K, N, sms) -> GemvConfig measured best by ``benchmarks/quant_gemv_bench.py
--sweep`` (it prints this dict's literal, and writes it as JSON with ``--write-configs``);
kind ``"fp8"`` or ``"wna16"`` (4-bit weights, consulted only when a tile lies in one group):
shapes not listed use the rules below; kind ``"bf16"`` / ``"fp16"`` (and ``"bf16_silu_mul"``,
N the merged gate|up rows): the dense GEMV's launch, listed only where it measured faster than
cuBLAS (``F.linear``, plus the SiLU-and-mul kernel), which unlisted shapes use
(``pagellm.ops.triton.dense_gemv``). ``PAGELLM_QUANT_GEMV_CONFIGS=<json file>`` adds the
entries of such a file at import (a sweep's results used in the same session)."""


def _h200_tuned_configs() -> dict[tuple, "GemvConfig"]:
    """The decode GEMVs' best launches at Llama-3.1-8B's shapes on an H200 (132 SMs).
    W4A16 from ``quant_gemv_bench.py --sweep --kernels wna16`` (benchmarks/RESULTS.md, session
    7, last call): 0-13% faster than the rules' defaults. bf16 / bf16_silu_mul / fp8 at one row
    from ``--sweep --rows 1 --kernels bf16,bf16_silu_mul`` and ``--kernels fp8`` (RESULTS.md,
    session 8, kernels call): the dense GEMV beat cuBLAS on every listed shape at TP=1 and TP=2
    (qkv 14.4 vs 15.5 µs, o 11.1 vs 13.8, down 30.4 vs 32.4, LM head 234.8 vs 247.8; TP=2 qkv
    9.3 vs 12.0, down 16.7 vs 20.2), gate_up with SiLU-and-mul fused 59.0 vs 61.4 (cuBLAS +
    the SiLU kernel); rows > 1 and other shapes keep cuBLAS."""
    return {
        ('wna16', 1, 4096, 6144, 132): GemvConfig(1, 64, 128, 11, num_warps=4, num_stages=3),
        ('wna16', 2, 4096, 6144, 132): GemvConfig(2, 64, 128, 6, num_warps=4, num_stages=3),
        ('wna16', 1, 4096, 4096, 132): GemvConfig(1, 32, 128, 5, num_warps=4, num_stages=3),
        ('wna16', 2, 4096, 4096, 132): GemvConfig(2, 64, 128, 8, num_warps=4, num_stages=3),
        ('wna16', 1, 4096, 28672, 132): GemvConfig(1, 64, 128, 5, num_warps=4, num_stages=3),
        ('wna16', 2, 4096, 28672, 132): GemvConfig(2, 64, 128, 5, num_warps=4, num_stages=3),
        ('wna16', 1, 14336, 4096, 132): GemvConfig(1, 64, 128, 9, num_warps=4, num_stages=3),
        ('wna16', 2, 14336, 4096, 132): GemvConfig(2, 64, 128, 9, num_warps=4, num_stages=3),
        ('bf16', 1, 4096, 6144, 132): GemvConfig(1, 8, 512, 1, num_warps=4, num_stages=3),
        ('bf16', 1, 4096, 4096, 132): GemvConfig(1, 16, 512, 1, num_warps=8, num_stages=3),
        ('bf16', 1, 4096, 28672, 132): GemvConfig(1, 16, 256, 1, num_warps=4, num_stages=3),
        ('bf16_silu_mul', 1, 4096, 28672, 132): GemvConfig(1, 8, 256, 1, num_warps=4, num_stages=3),
        ('bf16', 1, 14336, 4096, 132): GemvConfig(1, 16, 512, 1, num_warps=8, num_stages=3),
        ('bf16', 1, 4096, 128256, 132): GemvConfig(1, 16, 256, 1, num_warps=4, num_stages=3),
        ('bf16', 1, 4096, 3072, 132): GemvConfig(1, 16, 512, 1, num_warps=8, num_stages=3),
        ('bf16', 1, 2048, 4096, 132): GemvConfig(1, 16, 512, 1, num_warps=8, num_stages=3),
        ('bf16', 1, 4096, 14336, 132): GemvConfig(1, 16, 256, 1, num_warps=4, num_stages=3),
        ('bf16_silu_mul', 1, 4096, 14336, 132): GemvConfig(1, 8, 256, 1, num_warps=4, num_stages=3),
        ('bf16', 1, 7168, 4096, 132): GemvConfig(1, 8, 512, 1, num_warps=4, num_stages=3),
        ('bf16', 1, 4096, 64128, 132): GemvConfig(1, 16, 256, 1, num_warps=4, num_stages=3),
        ('fp8', 1, 4096, 6144, 132): GemvConfig(1, 32, 256, 6, num_warps=4, num_stages=3),
        ('fp8', 1, 4096, 4096, 132): GemvConfig(1, 16, 512, 4, num_warps=4, num_stages=3),
        ('fp8', 1, 4096, 28672, 132): GemvConfig(1, 32, 256, 1, num_warps=4, num_stages=3),
        ('fp8', 1, 14336, 4096, 132): GemvConfig(1, 32, 256, 8, num_warps=4, num_stages=3),
    }



@dataclass(frozen=True, slots=True)
class GemvConfig:
    """One launch shape."""

    block_m: int
    """Rows of x per program: W4A16 1 or 2 (grid axis 2 runs over row blocks); fp8
    next_power_of_2(M) (every row in one program)."""
    block_n: int
    """Output columns per program."""
    block_k: int
    """Input rows (K) per iteration; a multiple of the pack for W4A16."""
    split_k: int
    """K slices (programs along grid axis 1); > 1: partial sums, added by the last slice to
    finish (``gemv_split_k``)."""
    num_warps: int = 4
    num_stages: int = 3

    def k_per_split(self, K: int) -> int:
        """Input rows per slice (a multiple of block_k)."""
        return triton.cdiv(triton.cdiv(K, self.block_k), self.split_k) * self.block_k


def split_for(N: int, K: int, block_n: int, block_k: int, sms: int,
              programs_per_sm: int) -> int:
    """K slices for a [K, N] weight: 1 when the column blocks alone give ``programs_per_sm``
    programs per SM, else enough slices for that, at most one tile per slice, and no empty
    slice."""
    column_blocks = triton.cdiv(N, block_n)
    target = programs_per_sm * sms
    if column_blocks >= target:
        return 1
    k_tiles = triton.cdiv(K, block_k)
    split = min(k_tiles, triton.cdiv(target, column_blocks))
    return triton.cdiv(k_tiles, triton.cdiv(k_tiles, split))


def wna16_gemv_config(M: int, N: int, K: int, bits: int, sms: int,
                      rows_per_group: int = 128) -> GemvConfig:
    """Launch shape of the W4A16/W8A16 GEMV: 64 columns (256 bytes of each packed row), K
    tiles of 128 input rows (16 int4 words: a 4 KB tile, one group of the usual group size
    128, so one scale vector a tile), 1 or 2 rows a program, split-K to
    WNA16_PROGRAMS_PER_SM; a TUNED_CONFIGS entry first."""
    block_m = 1 if M <= 1 else 2
    tuned = TUNED_CONFIGS.get(("wna16", block_m, K, N, sms))
    if tuned is not None and bits == 4 and rows_per_group % tuned.block_k == 0:
        return tuned
    pack = 32 // bits
    block_k = 128
    while block_k > 32 and rows_per_group % block_k:
        block_k //= 2                      # a tile within one group when the group allows
    block_k = min(block_k, max(triton.next_power_of_2(K), pack))
    block_n = 64
    return GemvConfig(block_m, block_n, block_k,
                      split_for(N, K, block_n, block_k, sms, WNA16_PROGRAMS_PER_SM))


def fp8_gemv_config(M: int, N: int, K: int, sms: int) -> GemvConfig:
    """Launch shape of the fp8 GEMV: a [16, 512] fp8 tile (one warp reads 512 contiguous
    bytes of a weight row, 16 per thread; 8 KB a load), 16 columns per program, split-K to
    FP8_PROGRAMS_PER_SM; a TUNED_CONFIGS entry first."""
    block_m = triton.next_power_of_2(max(M, 1))
    tuned = TUNED_CONFIGS.get(("fp8", M, K, N, sms))
    if tuned is not None:
        return tuned
    block_k = min(512, max(triton.next_power_of_2(K), 16))
    block_n = 16
    return GemvConfig(block_m, block_n, block_k,
                      split_for(N, K, block_n, block_k, sms, FP8_PROGRAMS_PER_SM))


@triton.jit
def _wna16_gemv_kernel(x_ptr, qweight_ptr, scales_ptr, zeros_ptr, g_idx_ptr, bias_ptr,
                       M, N, K, rows_per_group, k_per_split,
                       stride_xm, stride_qk, stride_sg, stride_zg,
                       out_ptr, partial_ptr, counter_ptr, stride_ps, stride_pm, stride_om,
                       BITS: tl.constexpr, HAS_ZEROS: tl.constexpr, GROUP_MODE: tl.constexpr,
                       HAS_BIAS: tl.constexpr, SPLIT_MODE: tl.constexpr, MAGIC_BITS: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """Rows pid_m * BLOCK_M .. + BLOCK_M (BLOCK_M 1 or 2) of x times columns pid_n * BLOCK_N
    .. of the K slice pid_k. GROUP_MODE 0: the tile in one group; 1: groups per packed row;
    2: g_idx per value. Accumulators [BLOCK_K / pack, BLOCK_N] float32 per row, summed over
    the packed rows once at the end (module docstring)."""
    PACK: tl.constexpr = 32 // BITS
    BLOCK_KP: tl.constexpr = BLOCK_K // PACK
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    row0 = tl.program_id(2) * BLOCK_M
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_kp = tl.arange(0, BLOCK_KP)
    mask_n = offs_n < N
    zero_shift = (offs_n % PACK) * BITS                                   # [BN]
    k_begin = pid_k * k_per_split
    k_end = tl.minimum(k_begin + k_per_split, K)
    acc0 = tl.zeros((BLOCK_KP, BLOCK_N), dtype=tl.float32)
    acc1 = tl.zeros((BLOCK_KP, BLOCK_N), dtype=tl.float32)
    for k0 in range(k_begin, k_end, BLOCK_K):
        rows_kp = k0 // PACK + offs_kp                                    # [BKP] packed rows
        mask_kp = rows_kp < k_end // PACK
        packed = tl.load(qweight_ptr + rows_kp[:, None].to(tl.int64) * stride_qk
                         + offs_n[None, :], mask=mask_kp[:, None] & mask_n[None, :],
                         other=0)                                          # [BKP, BN] int32
        if GROUP_MODE == 2:
            acc0, acc1 = _wna16_tile_g_idx(
                acc0, acc1, packed, rows_kp, k_end, x_ptr, row0, M, stride_xm, scales_ptr,
                zeros_ptr, g_idx_ptr, offs_n, mask_n, zero_shift, stride_sg, stride_zg, BITS,
                HAS_ZEROS, MAGIC_BITS, BLOCK_M)
        else:
            if GROUP_MODE == 0:
                groups = tl.zeros((1,), tl.int32) + k0 // rows_per_group  # [1]
            else:       # rows past the slice read group 0 (their x is 0)
                groups = tl.where(mask_kp, rows_kp * PACK // rows_per_group, 0)   # [BKP]
            scale, zero = _scale_and_zero(scales_ptr, zeros_ptr, groups, offs_n, mask_n,
                                          zero_shift, stride_sg, stride_zg, BITS, HAS_ZEROS,
                                          MAGIC_BITS)                     # [1 | BKP, BN]
            acc0 = _wna16_tile_row(acc0, packed, scale, zero, rows_kp, k_end, x_ptr, row0, M,
                                   stride_xm, BITS, MAGIC_BITS)
            if BLOCK_M == 2:
                acc1 = _wna16_tile_row(acc1, packed, scale, zero, rows_kp, k_end, x_ptr,
                                       row0 + 1, M, stride_xm, BITS, MAGIC_BITS)
    offs_m = row0 + tl.arange(0, BLOCK_M)
    rows = tl.where(offs_m[:, None] == row0, tl.sum(acc0, axis=0)[None, :],
                    tl.sum(acc1, axis=0)[None, :])                        # [BLOCK_M, BN]
    finish_gemv_tile(rows, offs_m, offs_n, M, N, bias_ptr, out_ptr, partial_ptr, counter_ptr,
                     stride_ps, stride_pm, stride_om, HAS_BIAS, SPLIT_MODE)


@triton.jit
def _wna16_tile_row(acc, packed, scale, zero, rows_kp, k_end, x_ptr, m, M, stride_xm,
                    BITS: tl.constexpr, MAGIC_BITS: tl.constexpr):
    """acc [BKP, BN] + scale * (sum_j x_j q_j - zero * sum_j x_j) of one row m of x over one
    tile (one scale/zero per packed row or per tile). Value j of a word is masked in place
    (the low half of the word for j < pack / 2, the word >> 16 above), OR-ed with MAGIC and
    less 2**23: q_j * 2**(BITS * (j % (pack / 2))) exactly; x_j is scaled by the inverse
    power of two instead (exact), so a value costs an AND/OR, a subtraction and an FMA."""
    PACK: tl.constexpr = 32 // BITS
    HALF: tl.constexpr = PACK // 2
    MASK: tl.constexpr = (1 << BITS) - 1
    high = packed >> 16                                                   # values HALF..PACK-1
    k_lim = tl.where(m < M, k_end, 0)                                     # row m past M: x = 0
    t = tl.zeros(packed.shape, dtype=tl.float32)                          # [BKP, BN]
    x_sum = tl.zeros(rows_kp.shape, dtype=tl.float32)                     # [BKP]
    for j in tl.static_range(PACK):
        offs_k = rows_kp * PACK + j                                       # [BKP] rows of value j
        x = tl.load(x_ptr + m * stride_xm + offs_k, mask=offs_k < k_lim,
                    other=0.0).to(tl.float32)                             # [BKP]
        x_sum += x
        shift = (j % HALF) * BITS        # constexpr: j is a static_range index
        if j < HALF:
            bits = (packed & (MASK << shift)) | MAGIC_BITS
        else:
            bits = (high & (MASK << shift)) | MAGIC_BITS
        q = bits.to(tl.float32, bitcast=True) - 8388608.0                 # q_j * 2**shift
        t += (x * (1.0 / (1 << shift)))[:, None] * q
    return acc + scale * (t - zero * x_sum[:, None])


@triton.jit
def _wna16_tile_g_idx(acc0, acc1, packed, rows_kp, k_end, x_ptr, row0, M, stride_xm,
                      scales_ptr, zeros_ptr, g_idx_ptr, offs_n, mask_n, zero_shift, stride_sg,
                      stride_zg, BITS: tl.constexpr, HAS_ZEROS: tl.constexpr,
                      MAGIC_BITS: tl.constexpr, BLOCK_M: tl.constexpr):
    """Act-order tile: a group (scale, zero) per value, the value dequantized before the
    FMAs (slower; act-order checkpoints are rare)."""
    PACK: tl.constexpr = 32 // BITS
    MASK: tl.constexpr = (1 << BITS) - 1
    for j in tl.static_range(PACK):
        offs_k = rows_kp * PACK + j                                       # [BKP]
        mask_k = offs_k < k_end
        groups = tl.load(g_idx_ptr + offs_k, mask=mask_k, other=0)
        scale, zero = _scale_and_zero(scales_ptr, zeros_ptr, groups, offs_n, mask_n, zero_shift,
                                      stride_sg, stride_zg, BITS, HAS_ZEROS, MAGIC_BITS)
        q = ((packed >> (j * BITS)) & MASK) | MAGIC_BITS
        w = (q.to(tl.float32, bitcast=True) - 8388608.0 - zero) * scale    # [BKP, BN]
        x0 = tl.load(x_ptr + row0 * stride_xm + offs_k, mask=offs_k < tl.where(row0 < M, k_end, 0),
                     other=0.0)
        acc0 += x0.to(tl.float32)[:, None] * w
        if BLOCK_M == 2:
            x1 = tl.load(x_ptr + (row0 + 1) * stride_xm + offs_k,
                         mask=offs_k < tl.where(row0 + 1 < M, k_end, 0), other=0.0)
            acc1 += x1.to(tl.float32)[:, None] * w
    return acc0, acc1


@triton.jit
def _scale_and_zero(scales_ptr, zeros_ptr, groups, offs_n, mask_n, zero_shift, stride_sg,
                    stride_zg, BITS: tl.constexpr, HAS_ZEROS: tl.constexpr,
                    MAGIC_BITS: tl.constexpr):
    """float32 (scale, zero point) of ``groups`` [R] (valid group indices) x columns
    ``offs_n`` [BN] -> [R, BN]."""
    MASK: tl.constexpr = (1 << BITS) - 1
    mask = (groups[:, None] >= 0) & mask_n[None, :]                       # [R, BN]
    rows = groups[:, None].to(tl.int64)
    scale = tl.load(scales_ptr + rows * stride_sg + offs_n[None, :], mask=mask, other=0.0)
    if HAS_ZEROS:
        word = tl.load(zeros_ptr + rows * stride_zg + offs_n[None, :] // (32 // BITS), mask=mask,
                       other=0)
        zero = ((word >> zero_shift[None, :]) & MASK) | MAGIC_BITS
        zero = zero.to(tl.float32, bitcast=True) - 8388608.0
    else:
        zero = tl.full(scale.shape, 1 << (BITS - 1), tl.float32)
    return scale.to(tl.float32), zero


@triton.jit
def _fp8_gemv_kernel(x_ptr, weight_ptr, scale_ptr, bias_ptr, M, N, K, k_per_split,
                     stride_xm, stride_wn, prefetch_k,
                     out_ptr, partial_ptr, counter_ptr, stride_ps, stride_pm, stride_om,
                     HAS_BIAS: tl.constexpr, SPLIT_MODE: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                     PDL: tl.constexpr):
    """PDL: as the dense GEMV's (``pdl``): prefetch, then wait for the previous kernel."""
    launch_dependents()
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    k_begin = pid_k * k_per_split
    k_end = tl.minimum(k_begin + k_per_split, K)
    if PDL:
        prefetch_slice(weight_ptr, offs_n, mask_n, stride_wn, k_begin, k_end, prefetch_k)
        wait_for_previous_grid()
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(k_begin, k_end, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask_k = offs_k < k_end
        w = tl.load(weight_ptr + offs_n[:, None].to(tl.int64) * stride_wn + offs_k[None, :],
                    mask=mask_n[:, None] & mask_k[None, :], other=0.0).to(tl.float32)  # [BN, BK]
        for m in tl.static_range(BLOCK_M):
            row_m = tl.minimum(m, M - 1)        # rows past M repeat the last; not stored
            x = tl.load(x_ptr + row_m * stride_xm + offs_k, mask=mask_k, other=0.0)   # [BK]
            row = tl.sum(w * x.to(tl.float32)[None, :], axis=1)             # [BN]
            acc += tl.where(offs_m[:, None] == m, row[None, :], 0.0)      # into row m
    scale = tl.load(scale_ptr + offs_n, mask=mask_n, other=0.0)
    finish_gemv_tile(acc * scale[None, :], offs_m, offs_n, M, N, bias_ptr, out_ptr, partial_ptr,
                     counter_ptr, stride_ps, stride_pm, stride_om, HAS_BIAS, SPLIT_MODE)


def count_call(x: torch.Tensor, kind: str) -> None:
    """ValueError for more than GEMV_MAX_ROWS rows; else one more GEMV_CALLS[kind]."""
    rows = x.numel() // max(x.shape[-1], 1)
    if rows > GEMV_MAX_ROWS:
        raise ValueError(f"the decode GEMV takes at most {GEMV_MAX_ROWS} rows, got {rows}")
    GEMV_CALLS[kind] += 1
    if GEMV_CALLS[kind] == 1:
        logger.info("Decode GEMV (Triton) in use for %s linears at <= %d rows",
                    kind, GEMV_MAX_ROWS)


def wna16_gemv_triton(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor,
                      qzeros: torch.Tensor | None, g_idx: torch.Tensor | None, bits: int,
                      bias: torch.Tensor | None = None, config: GemvConfig | None = None,
                      in_kernel_reduce: bool = True) -> torch.Tensor:
    """x [..., K] (at most GEMV_MAX_ROWS rows) @ the weight [K, N] of the internal layout
    (qweight int32 [K / pack, N], scales [G, N], qzeros int32 [G, N / pack] or None, g_idx
    int32 [K] or None) (+ bias [N]) -> [..., N] in x.dtype. ``config``: a launch shape other
    than ``wna16_gemv_config``'s (the benchmark's sweep); ``in_kernel_reduce=False``: split-K
    slices added by a second launch (``gemv_split_k``). ValueError for too many rows."""
    count_call(x, "wna16")
    K, N = x.shape[-1], qweight.shape[1]
    qweight, scales = qweight.contiguous(), scales.contiguous()
    qzeros = qzeros.contiguous() if qzeros is not None else None
    rows_per_group = K // scales.shape[0]
    M = x.numel() // max(K, 1)
    config = config or wna16_gemv_config(M, N, K, bits, num_sms(x.device), rows_per_group)
    if config.block_m not in (1, 2):
        raise ValueError(f"the W4A16 GEMV takes 1 or 2 rows a program, got {config.block_m}")
    if g_idx is not None:
        group_mode = 2
    else:
        group_mode = 0 if rows_per_group % config.block_k == 0 else 1
    k_per_split = config.k_per_split(K)

    def launch(grid, x2, split_args):
        _wna16_gemv_kernel[grid](
            x2, qweight, scales, qzeros if qzeros is not None else qweight,
            g_idx if g_idx is not None else qweight, bias if bias is not None else scales,
            x2.shape[0], N, K, rows_per_group, k_per_split,
            x2.stride(0), qweight.stride(0), scales.stride(0),
            qzeros.stride(0) if qzeros is not None else 0, **split_args,
            BITS=bits, HAS_ZEROS=qzeros is not None, GROUP_MODE=group_mode,
            HAS_BIAS=bias is not None, MAGIC_BITS=MAGIC,
            BLOCK_M=config.block_m, BLOCK_N=config.block_n, BLOCK_K=config.block_k,
            num_warps=config.num_warps, num_stages=config.num_stages)

    return run_gemv(x, N, bias, config.block_m, config.block_n, config.split_k, launch,
                    in_kernel_reduce)


def fp8_gemv_triton(x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor,
                    bias: torch.Tensor | None = None, config: GemvConfig | None = None,
                    in_kernel_reduce: bool = True) -> torch.Tensor:
    """x [..., K] (at most GEMV_MAX_ROWS rows) @ (weight fp8 [N, K] * weight_scale float32
    [N] per row).T (+ bias [N]) -> [..., N] in x.dtype, weight-only (module docstring).
    ``config`` and ``in_kernel_reduce`` as in ``wna16_gemv_triton``. ValueError for too many
    rows."""
    count_call(x, "fp8")
    K, N = x.shape[-1], weight.shape[0]
    weight = weight.contiguous()
    weight_scale = weight_scale.reshape(-1).float().expand(N).contiguous()    # [N]
    M = x.numel() // max(K, 1)
    config = config or fp8_gemv_config(M, N, K, num_sms(x.device))
    k_per_split = config.k_per_split(K)
    pdl_args = gemv_launch_args(x, weight, N, k_per_split, config.split_k, config.block_k)

    def launch(grid, x2, split_args):
        _fp8_gemv_kernel[grid](
            x2, weight, weight_scale, bias if bias is not None else weight_scale,
            x2.shape[0], N, K, k_per_split, x2.stride(0), weight.stride(0), **split_args,
            **pdl_args, HAS_BIAS=bias is not None, BLOCK_M=config.block_m,
            BLOCK_N=config.block_n, BLOCK_K=config.block_k, num_warps=config.num_warps,
            num_stages=config.num_stages)

    return run_gemv(x, N, bias, config.block_m, config.block_n, config.split_k, launch,
                    in_kernel_reduce)


def load_tuned_configs(path: str) -> int:
    """Add the entries of a ``quant_gemv_bench.py --write-configs`` JSON file (a list of
    ``[[kind, M, K, N, sms], {GemvConfig fields}]``) to TUNED_CONFIGS; returns how many.
    ValueError for a malformed file."""
    import json

    entries = json.loads(open(path).read())
    try:
        for key, fields in entries:
            TUNED_CONFIGS[tuple(key)] = GemvConfig(**fields)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{path}: not a list of [[kind, M, K, N, sms], GemvConfig fields] "
                         f"({error})") from error
    return len(entries)


def _load_env_configs() -> None:
    import os

    path = os.environ.get("PAGELLM_QUANT_GEMV_CONFIGS")
    if path:
        logger.info("quant GEMV: %d tuned launch configs from %s", load_tuned_configs(path), path)


TUNED_CONFIGS.update(_h200_tuned_configs())
_load_env_configs()
