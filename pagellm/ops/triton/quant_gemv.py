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
  words (16-byte vectors along N), the next tile's load issued before the current tile's
  arithmetic (the registers double-buffer it). Per tile, value j of every word is masked in
  place (``word & (mask << s)``, from the word or, for the values above bit 19, from
  ``word >> 12``) and OR-ed with the exponent bits of 2**(23 - s): the float is 2**(23 - s)
  + q exactly, and less the constant 2**(23 - s) + 2**(bits - 1) it is q minus the
  symmetric zero point; its FMA with x_j goes into a [BLOCK_K / pack, BLOCK_N] float32 sum
  t. A value costs one LOP3, one FADD and one FFMA (the magic bits are a runtime argument,
  so ptxas keeps them in a register and takes the masks as the LOP3 immediates; as
  compile-time constants it rematerialized one mask per value); bfloat16 activations are
  read as int32 pairs at constant offsets. The tile's rows are summed into [BLOCK_N] and
  scaled by the group's scale; zero points (asymmetric weights) add (2**(bits - 1) - zero)
  times the tile's sum of x, outside the per-value path. 4.1 SASS instructions a value at
  one row, from 7.6 (session 10; RESULTS.md). Group scales: one [BLOCK_N] vector per tile
  when the tile lies in one group, one [BLOCK_K / pack, BLOCK_N] gather per tile when only
  the words do (groups are multiples of the pack), and with an act-order ``g_idx`` one
  gather per value with the value dequantized before its FMA.
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

from pagellm.ops.triton import pdl
from pagellm.ops.triton.gemm_launch import num_sms
from pagellm.ops.triton.gemv_split_k import finish_gemv_tile, run_gemv
from pagellm.ops.triton.pdl import (gemv_launch_args, launch_dependents, num_threads,
                                    prefetch_rows_l2, prefetch_slice, wait_for_previous_grid)

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

MAGIC: tl.constexpr = tl.constexpr(0x4B000000)
"""float32 bits of 2**23: OR-ed with an integer q < 2**23 it reads as 2**23 + q."""
MAGIC_ARG = 0x4B000000
"""MAGIC as a runtime argument of the W4A16 GEMV: a register operand of its LOP3s, so that ptxas
takes the masks as immediates instead of materializing one per value (measured in SASS; the
kernel derives each shift's exponent bits from it)."""

WNA16_PROGRAMS_PER_SM = 4
"""W4A16 split-K target: programs per SM (N = 4096 with 256-column blocks: 32 slices, 512
programs). A program has its next [BLOCK_K / pack, BLOCK_N] tile (8 KB) in flight while it
works on the current one, so four resident per SM keep ~32 KB of loads in flight, what HBM
needs to approach its bandwidth."""

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
    W4A16 (symmetric, as GPTQ sym=True checkpoints load) from ``quant_gemv_bench.py --sweep
    --kernels wna16`` (benchmarks/RESULTS.md, session 10, second call): up to 27% faster than
    the rules' defaults at one row. bf16 / bf16_silu_mul / fp8 at one row
    from ``--sweep --rows 1 --kernels bf16,bf16_silu_mul`` and ``--kernels fp8`` (RESULTS.md,
    session 8, kernels call): the dense GEMV beat cuBLAS on every listed shape at TP=1 and TP=2
    (qkv 14.4 vs 15.5 µs, o 11.1 vs 13.8, down 30.4 vs 32.4, LM head 234.8 vs 247.8; TP=2 qkv
    9.3 vs 12.0, down 16.7 vs 20.2), gate_up with SiLU-and-mul fused 59.0 vs 61.4 (cuBLAS +
    the SiLU kernel); rows > 1 and other shapes keep cuBLAS."""
    return {
        ('wna16', 1, 4096, 6144, 132): GemvConfig(1, 256, 64, 32, num_warps=4, num_stages=1),
        ('wna16', 2, 4096, 6144, 132): GemvConfig(2, 256, 64, 22, num_warps=4, num_stages=1),
        ('wna16', 1, 4096, 4096, 132): GemvConfig(1, 64, 128, 16, num_warps=4, num_stages=1),
        ('wna16', 2, 4096, 4096, 132): GemvConfig(2, 256, 64, 32, num_warps=4, num_stages=1),
        ('wna16', 1, 4096, 28672, 132): GemvConfig(1, 512, 32, 19, num_warps=4, num_stages=1),
        ('wna16', 2, 4096, 28672, 132): GemvConfig(2, 512, 32, 19, num_warps=4, num_stages=1),
        ('wna16', 1, 14336, 4096, 132): GemvConfig(1, 64, 128, 16, num_warps=4, num_stages=1),
        ('wna16', 2, 14336, 4096, 132): GemvConfig(2, 512, 32, 64, num_warps=4, num_stages=1),
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
    """Launch shape of the W4A16/W8A16 GEMV: 256 columns (1 KB of each packed row), K tiles
    of 64 input rows (8 int4 words: an 8 KB tile within one group of the usual group size
    128, so one scale vector a tile), 1 or 2 rows a program, split-K to
    WNA16_PROGRAMS_PER_SM; a TUNED_CONFIGS entry first. (The H200 sweep of session 10 found
    wide column blocks with many slices best on every Llama-8B shape: RESULTS.md.)"""
    block_m = 1 if M <= 1 else 2
    tuned = TUNED_CONFIGS.get(("wna16", block_m, K, N, sms))
    if tuned is not None and bits == 4 and rows_per_group % tuned.block_k == 0:
        return tuned
    pack = 32 // bits
    block_k = 64
    while block_k > 32 and rows_per_group % block_k:
        block_k //= 2                      # a tile within one group when the group allows
    block_k = min(block_k, max(triton.next_power_of_2(K), pack))
    block_n = 256
    return GemvConfig(block_m, block_n, block_k,
                      split_for(N, K, block_n, block_k, sms, WNA16_PROGRAMS_PER_SM),
                      num_warps=4, num_stages=1)


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
                       stride_xm, stride_qk, stride_sg, stride_zg, prefetch_k, magic,
                       out_ptr, partial_ptr, counter_ptr, stride_ps, stride_pm, stride_om,
                       BITS: tl.constexpr, HAS_ZEROS: tl.constexpr, GROUP_MODE: tl.constexpr,
                       HAS_BIAS: tl.constexpr, SPLIT_MODE: tl.constexpr, EVEN: tl.constexpr,
                       X_PAIRS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                       BLOCK_K: tl.constexpr, PDL: tl.constexpr):
    """Rows row0 = pid_m * BLOCK_M .. + BLOCK_M (BLOCK_M 1 or 2) of x times columns pid_n *
    BLOCK_N .. of the K slice pid_k. GROUP_MODE 0: the tile in one group; 1: groups per
    packed row; 2: g_idx per value. Each tile's products are summed over its packed rows and
    scaled into float32 [BLOCK_N] accumulators, one per row of x; the next tile's load is
    issued before the current tile's arithmetic (module docstring). EVEN: K and N are
    multiples of BLOCK_K and BLOCK_N (no masks but the next tile's). X_PAIRS: x is bfloat16,
    read as int32 pairs. PDL: prefetch the slice's first ``prefetch_k`` rows of K into L2,
    then wait for the previous kernel (``pdl``)."""
    launch_dependents()
    PACK: tl.constexpr = 32 // BITS
    BLOCK_KP: tl.constexpr = BLOCK_K // PACK
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    row0 = tl.program_id(2) * BLOCK_M
    row1 = tl.minimum(row0 + 1, M - 1)      # BLOCK_M 2, M odd: repeats row0; not stored
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_kp = tl.arange(0, BLOCK_KP)
    mask_n = offs_n < N
    zero_shift = (offs_n % PACK) * BITS                                   # [BN]
    k_begin = pid_k * k_per_split
    k_end = tl.minimum(k_begin + k_per_split, K)
    kp_end = k_end // PACK
    if PDL:
        _prefetch_packed_rows(qweight_ptr, k_begin // PACK, kp_end, prefetch_k // PACK,
                              stride_qk, pid_n * BLOCK_N, N, BLOCK_N)
        wait_for_previous_grid()
    tile_ptrs = qweight_ptr + offs_kp[:, None].to(tl.int64) * stride_qk + offs_n[None, :]
    acc0 = tl.zeros((BLOCK_N,), dtype=tl.float32)
    acc1 = tl.zeros((BLOCK_N,), dtype=tl.float32)
    if EVEN:
        packed = tl.load(tile_ptrs + (k_begin // PACK) * stride_qk)
    else:
        packed = tl.load(tile_ptrs + (k_begin // PACK) * stride_qk,
                         mask=(k_begin // PACK + offs_kp < kp_end)[:, None] & mask_n[None, :],
                         other=0)
    group = k_begin // rows_per_group           # GROUP_MODE 0: the tile's group, and
    into = k_begin - group * rows_per_group     # how far the tile starts into it
    for k0 in range(k_begin, k_end, BLOCK_K):
        rows_kp = k0 // PACK + offs_kp                                    # [BKP] packed rows
        # the next tile's words are in flight while this one is dequantized (none after
        # the slice's last tile)
        if EVEN:
            next_mask = offs_kp < tl.where(k0 + BLOCK_K < k_end, BLOCK_KP, 0)
        else:
            next_mask = rows_kp + BLOCK_KP < kp_end
        next_packed = tl.load(tile_ptrs + (k0 // PACK + BLOCK_KP) * stride_qk,
                              mask=next_mask[:, None] & mask_n[None, :],
                              other=0)                                    # [BKP, BN] int32
        if GROUP_MODE == 2:
            acc0, acc1 = _wna16_tile_g_idx(
                acc0, acc1, packed, rows_kp, k_end, x_ptr, row0, row1, stride_xm, scales_ptr,
                zeros_ptr, g_idx_ptr, offs_n, mask_n, zero_shift, stride_sg, stride_zg, BITS,
                HAS_ZEROS, BLOCK_M)
        else:
            if GROUP_MODE == 0:
                groups = tl.zeros((1,), tl.int32) + group                 # [1]
            else:       # rows past the slice read group 0 (their x is 0)
                groups = tl.where(rows_kp < kp_end, rows_kp * PACK // rows_per_group, 0)
            scale, zero = _scale_and_zero(scales_ptr, zeros_ptr, groups, offs_n, mask_n,
                                          zero_shift, stride_sg, stride_zg, BITS,
                                          HAS_ZEROS)                      # [1 | BKP, BN]
            t0, t1, xs0, xs1 = _wna16_tile(packed, rows_kp, k_end, x_ptr, row0, row1,
                                           stride_xm, magic, BITS, HAS_ZEROS, EVEN, X_PAIRS,
                                           BLOCK_M)
            # t holds sum_j x_j (q_j - 2**(BITS - 1)); zero points add (2**(BITS - 1) - zero)
            # times the tile's sum of x (xs: per packed row)
            if GROUP_MODE == 0:     # one scale a column: sum the rows first
                scale_n = tl.reshape(scale, (BLOCK_N,))
                t0_n = tl.sum(t0, axis=0)
                if HAS_ZEROS:
                    shift_n = (1 << (BITS - 1)) - tl.reshape(zero, (BLOCK_N,))
                    t0_n += tl.sum(xs0, axis=0) * shift_n
                acc0 += scale_n * t0_n
                if BLOCK_M == 2:
                    t1_n = tl.sum(t1, axis=0)
                    if HAS_ZEROS:
                        t1_n += tl.sum(xs1, axis=0) * shift_n
                    acc1 += scale_n * t1_n
            else:
                if HAS_ZEROS:
                    t0 += xs0[:, None] * ((1 << (BITS - 1)) - zero)
                    t1 += xs1[:, None] * ((1 << (BITS - 1)) - zero)
                acc0 += tl.sum(scale * t0, axis=0)
                if BLOCK_M == 2:
                    acc1 += tl.sum(scale * t1, axis=0)
        into += BLOCK_K
        wrapped = into >= rows_per_group
        group = tl.where(wrapped, group + 1, group)
        into = tl.where(wrapped, 0, into)
        packed = next_packed
    offs_m = row0 + tl.arange(0, BLOCK_M)
    rows = tl.where(offs_m[:, None] == row0, acc0[None, :], acc1[None, :])  # [BLOCK_M, BN]
    finish_gemv_tile(rows, offs_m, offs_n, M, N, bias_ptr, out_ptr, partial_ptr, counter_ptr,
                     stride_ps, stride_pm, stride_om, HAS_BIAS, SPLIT_MODE)


@triton.jit
def _prefetch_packed_rows(qweight_ptr, kp_begin, kp_end, count, stride_qk, n0, N,
                          BLOCK_N: tl.constexpr):
    """PDL prologue of the W4A16 GEMV: ask L2 for the program's first ``count`` packed rows
    (``kp_begin`` .., before ``kp_end``), each BLOCK_N contiguous words from column ``n0``:
    one bulk prefetch per thread and row (``pdl.prefetch_rows_l2``)."""
    rows = kp_begin + tl.arange(0, num_threads())                        # one per thread
    width = tl.minimum(N - n0, BLOCK_N) * 4
    nbytes = tl.where((rows < kp_begin + count) & (rows < kp_end), width, 0)
    prefetch_rows_l2(qweight_ptr + rows.to(tl.int64) * stride_qk + n0, nbytes)


@triton.jit
def _x_value(x_rows, k_end, pair, j: tl.constexpr, EVEN: tl.constexpr, X_PAIRS: tl.constexpr):
    """float32 activations [BKP]: value j of each packed row (0 past k_end unless EVEN).
    ``x_rows``: pointers to the rows' first activations (``_x_rows``). X_PAIRS: taken from
    ``pair``, the int32 words holding bfloat16 values j & ~1 (low half) and j | 1 (high half)."""
    if X_PAIRS:
        if j % 2 == 0:
            return (pair << 16).to(tl.float32, bitcast=True)
        else:
            return (pair & -65536).to(tl.float32, bitcast=True)
    else:
        if EVEN:
            return tl.load(x_rows + j).to(tl.float32)
        else:
            return tl.load(x_rows + j, mask=j < k_end, other=0.0).to(tl.float32)


@triton.jit
def _x_rows(x_ptr, row, stride_xm, rows_kp, PACK: tl.constexpr, X_PAIRS: tl.constexpr):
    """Pointers [BKP] to the first activation of each packed row of the tile in row ``row`` of
    x (X_PAIRS: as int32 words, two bfloat16 values each), so that the loads of a row's values
    add constants (immediate offsets in SASS)."""
    if X_PAIRS:
        x32 = x_ptr.to(tl.pointer_type(tl.int32), bitcast=True) + row * (stride_xm // 2)
        return x32 + rows_kp * (PACK // 2)
    else:
        return x_ptr + row * stride_xm + rows_kp * PACK


@triton.jit
def _x_pair(x_rows, rows_kp, k_end, p: tl.constexpr, PACK: tl.constexpr, EVEN: tl.constexpr,
            X_PAIRS: tl.constexpr):
    """X_PAIRS: the int32 words [BKP] holding bfloat16 values 2p and 2p + 1 of each packed row
    (0 past k_end unless EVEN); else a placeholder."""
    if X_PAIRS:
        if EVEN:
            return tl.load(x_rows + p)
        else:
            return tl.load(x_rows + p, mask=rows_kp * PACK < k_end, other=0)
    else:
        return rows_kp


@triton.jit
def _wna16_tile(packed, rows_kp, k_end, x_ptr, row0, row1, stride_xm, magic,
                BITS: tl.constexpr, HAS_ZEROS: tl.constexpr, EVEN: tl.constexpr,
                X_PAIRS: tl.constexpr, BLOCK_M: tl.constexpr):
    """(t0, t1, xs0, xs1): t [BKP, BN] = sum_j x_j (q_j - 2**(BITS - 1)) of each packed word of
    the tile for rows row0 and (BLOCK_M 2) row1 of x, unscaled, and with HAS_ZEROS xs [BKP] =
    sum_j x_j of each packed row (t1, xs1 zeros when BLOCK_M is 1; xs zeros without zero
    points). Value j of a word is masked in place (from the word for the values whose bits
    lie below bit 20 / 16, from the word >> HIGH_SHIFT for the rest; s its bit offset there)
    and OR-ed with the exponent bits of 2**(23 - s) (``magic`` - s << 23; ``magic`` = MAGIC
    is passed at run time so that these are register operands and ptxas folds the masks as
    the LOP3's immediates): the float is 2**(23 - s) + q_j exactly, and less the constant
    2**(23 - s) + 2**(BITS - 1) it is q_j - 2**(BITS - 1). A value costs one LOP3, one FADD and
    one FFMA per row of x; two activations one int32 load (X_PAIRS) and two conversions."""
    PACK: tl.constexpr = 32 // BITS
    MASK: tl.constexpr = (1 << BITS) - 1
    IN_PLACE: tl.constexpr = 5 if BITS == 4 else 2          # values with bits below bit 20 / 16
    HIGH_SHIFT: tl.constexpr = 12 if BITS == 4 else 16      # the rest, moved to bits 8.. / 0..
    high = packed >> HIGH_SHIFT
    t0 = tl.zeros(packed.shape, dtype=tl.float32)                         # [BKP, BN]
    t1 = tl.zeros(packed.shape, dtype=tl.float32)
    xs0 = tl.zeros(rows_kp.shape, dtype=tl.float32)                       # [BKP]
    xs1 = tl.zeros(rows_kp.shape, dtype=tl.float32)
    x_rows0 = _x_rows(x_ptr, row0, stride_xm, rows_kp, PACK, X_PAIRS)
    x_rows1 = _x_rows(x_ptr, row1, stride_xm, rows_kp, PACK, X_PAIRS)
    k_left = k_end - rows_kp * PACK                                       # [BKP]
    for p in tl.static_range(PACK // 2):
        pair0 = _x_pair(x_rows0, rows_kp, k_end, p, PACK, EVEN, X_PAIRS)
        if BLOCK_M == 2:
            pair1 = _x_pair(x_rows1, rows_kp, k_end, p, PACK, EVEN, X_PAIRS)
        for i in tl.static_range(2):
            j = 2 * p + i
            if j < IN_PLACE:
                shift = BITS * j
                bits = (packed & (MASK << shift)) | (magic - (shift << 23))
            else:
                shift = BITS * j - HIGH_SHIFT
                bits = (high & (MASK << shift)) | (magic - (shift << 23))
            q = bits.to(tl.float32, bitcast=True) - ((1 << (23 - shift)) + (1 << (BITS - 1)))
            x0 = _x_value(x_rows0, k_left, pair0, j, EVEN, X_PAIRS)
            if HAS_ZEROS:
                xs0 += x0
            t0 += x0[:, None] * q
            if BLOCK_M == 2:
                x1 = _x_value(x_rows1, k_left, pair1, j, EVEN, X_PAIRS)
                if HAS_ZEROS:
                    xs1 += x1
                t1 += x1[:, None] * q
    return t0, t1, xs0, xs1


@triton.jit
def _wna16_tile_g_idx(acc0, acc1, packed, rows_kp, k_end, x_ptr, row0, row1, stride_xm,
                      scales_ptr, zeros_ptr, g_idx_ptr, offs_n, mask_n, zero_shift, stride_sg,
                      stride_zg, BITS: tl.constexpr, HAS_ZEROS: tl.constexpr,
                      BLOCK_M: tl.constexpr):
    """Act-order tile: a group (scale, zero) per value, the value dequantized before the
    FMAs (slower; act-order checkpoints are rare). acc [BN] + the tile's products."""
    PACK: tl.constexpr = 32 // BITS
    MASK: tl.constexpr = (1 << BITS) - 1
    t0 = tl.zeros(packed.shape, dtype=tl.float32)                         # [BKP, BN]
    t1 = tl.zeros(packed.shape, dtype=tl.float32)
    for j in tl.static_range(PACK):
        offs_k = rows_kp * PACK + j                                       # [BKP]
        mask_k = offs_k < k_end
        groups = tl.load(g_idx_ptr + offs_k, mask=mask_k, other=0)
        scale, zero = _scale_and_zero(scales_ptr, zeros_ptr, groups, offs_n, mask_n, zero_shift,
                                      stride_sg, stride_zg, BITS, HAS_ZEROS)
        q = ((packed >> (j * BITS)) & MASK) | MAGIC
        w = (q.to(tl.float32, bitcast=True) - 8388608.0 - zero) * scale    # [BKP, BN]
        x0 = tl.load(x_ptr + row0 * stride_xm + offs_k, mask=mask_k, other=0.0)
        t0 += x0.to(tl.float32)[:, None] * w
        if BLOCK_M == 2:
            x1 = tl.load(x_ptr + row1 * stride_xm + offs_k, mask=mask_k, other=0.0)
            t1 += x1.to(tl.float32)[:, None] * w
    return acc0 + tl.sum(t0, axis=0), acc1 + tl.sum(t1, axis=0)


@triton.jit
def _scale_and_zero(scales_ptr, zeros_ptr, groups, offs_n, mask_n, zero_shift, stride_sg,
                    stride_zg, BITS: tl.constexpr, HAS_ZEROS: tl.constexpr):
    """float32 (scale, zero point) of ``groups`` [R] (valid group indices) x columns
    ``offs_n`` [BN] -> [R, BN] (zero: a constant 2**(BITS - 1) without zero points)."""
    MASK: tl.constexpr = (1 << BITS) - 1
    mask = (groups[:, None] >= 0) & mask_n[None, :]                       # [R, BN]
    rows = groups[:, None].to(tl.int64)
    scale = tl.load(scales_ptr + rows * stride_sg + offs_n[None, :], mask=mask, other=0.0)
    if HAS_ZEROS:
        word = tl.load(zeros_ptr + rows * stride_zg + offs_n[None, :] // (32 // BITS), mask=mask,
                       other=0)
        zero = ((word >> zero_shift[None, :]) & MASK).to(tl.float32)
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
    even = K % config.block_k == 0 and N % config.block_n == 0
    x_pairs = (x.dtype == torch.bfloat16 and x.stride(-1) == 1 and x.data_ptr() % 4 == 0
               and (x.dim() == 1 or x.reshape(-1, K).stride(0) % 2 == 0))
    pdl_args = wna16_pdl_args(x, qweight, bits, k_per_split, config)

    def launch(grid, x2, split_args):
        _wna16_gemv_kernel[grid](
            x2, qweight, scales, qzeros if qzeros is not None else qweight,
            g_idx if g_idx is not None else qweight, bias if bias is not None else scales,
            x2.shape[0], N, K, rows_per_group, k_per_split,
            x2.stride(0), qweight.stride(0), scales.stride(0),
            qzeros.stride(0) if qzeros is not None else 0, magic=MAGIC_ARG, **split_args, **pdl_args,
            BITS=bits, HAS_ZEROS=qzeros is not None, GROUP_MODE=group_mode,
            HAS_BIAS=bias is not None, EVEN=even, X_PAIRS=x_pairs,
            BLOCK_M=config.block_m, BLOCK_N=config.block_n, BLOCK_K=config.block_k,
            num_warps=config.num_warps, num_stages=config.num_stages)

    return run_gemv(x, N, bias, config.block_m, config.block_n, config.split_k, launch,
                    in_kernel_reduce)


def wna16_pdl_args(x: torch.Tensor, qweight: torch.Tensor, bits: int, k_per_split: int,
                   config: GemvConfig) -> dict:
    """``pdl.launch_args`` for the packed [K / pack, N] layout: ``prefetch_k`` rows of K
    (whole packed rows, at most one per thread of the program) from the start
    of each slice, all programs together within ``pdl.PREFETCH_BYTES``; 0 (no prefetch) when
    the rows are not 16-byte aligned, as the bulk prefetch needs."""
    def prefetch_k() -> int:
        if not (qweight.data_ptr() % 16 == 0 and qweight.stride(0) % 4 == 0
                and config.block_n % 4 == 0):
            return 0
        row_bytes = qweight.shape[1] * bits // 8 * config.split_k   # a row of K, all slices
        pack = 32 // bits
        budget = pdl.PREFETCH_BYTES // max(row_bytes, 1) // pack * pack   # whole packed rows
        per_thread = 32 * config.num_warps * pack // config.block_k * config.block_k
        return min(budget, k_per_split, per_thread)

    return pdl.launch_args(x.device, prefetch_k)


def fp8_gemv_triton(x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor,
                    bias: torch.Tensor | None = None, config: GemvConfig | None = None,
                    in_kernel_reduce: bool = True) -> torch.Tensor:
    """x [..., K] (at most GEMV_MAX_ROWS rows) @ (weight fp8 [N, K] * weight_scale float32
    [N] per row).T (+ bias [N]) -> [..., N] in x.dtype, weight-only (module docstring).
    (Its per-tile row sums were measured against the dense GEMV's 2-D accumulators summed
    once: 3.25 vs 4.25 SASS instructions a value and faster alone, but W1 fp8 fell from 341 to
    297-318 tok/s with every launch table tried; RESULTS.md, session 10.)
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
