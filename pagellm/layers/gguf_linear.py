"""GGUF weights kept quantized on CPU: llama.cpp blocks repacked for torch's int4 matmul.

Every supported GGUF type is, per group of 32 inputs of one output row, an unsigned integer
code ``u`` (4 to 8 bits) with a scale and an offset: ``w = scale * u + offset``
(``gguf_codes``, checked against the ``gguf`` package's dequantizers):

| type | bits | block | scale, offset per 32 weights                 |
|------|------|-------|----------------------------------------------|
| Q4_0 | 4    | 32    | d, -8d                                       |
| Q4_1 | 4    | 32    | d, m                                         |
| Q8_0 | 8    | 32    | d, -128d (u = q + 128)                       |
| Q4_K | 4    | 256   | d * sc_j, -dmin * m_j (6-bit sc/m per 32)    |
| Q5_K | 5    | 256   | d * sc_j, -dmin * m_j                        |
| Q6_K | 6    | 256   | d * sc_j, -32 d * sc_j per 16 weights (int8 sc) |

torch's CPU kernel ``_weight_int4pack_mm_for_cpu`` computes ``x @ W.T`` for 4-bit codes q
with per-group ``(scale, zero)`` as ``W = (q - 8) * scale + zero`` (group 32, bfloat16
activations and scales; fast with AVX-512 BF16, ``benchmarks/RESULTS.md``). A 4-bit type is one
such "plane" (zero = offset + 8 scale); a 5-8-bit code is split into nibbles ``u = 16 hi + lo``,
two planes summed: hi with (16 scale, 128 scale), lo with (scale, offset + 8 scale). Q6_K
(6-bit codes, scale per 16 weights; the kernel's groups are 32-256) is folded: one plane of 2K
columns, a 32-column group per sub-block, met by [x, 16 x] (``fold_sub_blocks``). Other types
stay dequantized (the loader logs it). Storage per weight: 0.625 bytes for 4-bit types
(Q4_1's own size), 1.25 for 5-8-bit and folded Q6_K. On CUDA, ``GGUFTritonLinearMethod``
(a dequantizing Triton GEMM, ``pagellm.ops.gguf``) takes every type instead.

Not exact against the float32 dequantized model: activations, scales and the kernel's output
are bfloat16 (the default model's perplexity moves by well under 0.5%, tests/integration).
"""

from __future__ import annotations

import functools
import math
import os

import numpy as np
import torch
from gguf import GGMLQuantizationType
from gguf.quants import Q4_K
from torch import nn
from torch.nn import functional as F

from pagellm.layers.linear import LinearMethodBase
from pagellm.ops import gguf_cpu
from pagellm.ops.gguf import GGUFPacked, dequantize_gguf, gguf_linear_torch, pack_gguf
from pagellm.platforms import use_triton_kernels

GROUP_SIZE = 32
QK_K = 256
T = GGMLQuantizationType
CODE_BITS = {T.Q4_0: 4, T.Q4_1: 4, T.Q8_0: 8, T.Q4_K: 4, T.Q5_K: 5, T.Q6_K: 6}
"""GGUF types kept quantized, and the bits of their codes."""
CODE_GROUP = {T.Q6_K: 16}
"""Weights per (scale, offset) group where it is not GROUP_SIZE (Q6_K: 16-weight sub-blocks)."""
CPU_TYPES = (T.Q4_0, T.Q4_1, T.Q8_0, T.Q4_K, T.Q5_K, T.Q6_K)
"""Types the CPU int4 kernel keeps (Q6_K folded: ``fold_sub_blocks``)."""
BLOCK_BYTES = {T.Q4_0: 18, T.Q4_1: 20, T.Q8_0: 34, T.Q4_K: 144, T.Q5_K: 176, T.Q6_K: 210}


def _f16(column: np.ndarray) -> np.ndarray:
    """[n, 2] uint8 -> [n, 1] float32 (little-endian fp16)."""
    return column.copy().view(np.float16).astype(np.float32)


def _codes_q4_0_q4_1(blocks: np.ndarray, has_min: bool):
    """[n, 18|20] uint8 blocks of 32 -> codes [n, 32], scale [n, 1], offset [n, 1]."""
    d = _f16(blocks[:, 0:2])
    offset = _f16(blocks[:, 2:4]) if has_min else -8 * d
    qs = blocks[:, 4 if has_min else 2:]                           # [n, 16]
    codes = np.concatenate([qs & 0x0F, qs >> 4], axis=1)           # element j, then j + 16
    return codes, d, offset


def _codes_q8_0(blocks: np.ndarray):
    d = _f16(blocks[:, 0:2])
    codes = (blocks[:, 2:].view(np.int8).astype(np.int16) + 128).astype(np.uint8)   # [n, 32]
    return codes, d, -128 * d


def _codes_k(blocks: np.ndarray, five_bits: bool):
    """[n, 144|176] Q4_K/Q5_K super-blocks of 256 -> codes [n * 8, 32], scale/offset [n * 8, 1]
    (one row per 32-weight sub-block)."""
    n = blocks.shape[0]
    d, dmin = _f16(blocks[:, 0:2]), _f16(blocks[:, 2:4])
    sc, m = Q4_K.get_scale_min(blocks[:, 4:16])                     # [n, 8] each
    scale = (d * sc.astype(np.float32)).reshape(n * 8, 1)
    offset = -(dmin * m.astype(np.float32)).reshape(n * 8, 1)
    qs = blocks[:, 48:] if five_bits else blocks[:, 16:]            # [n, 128]
    low = qs.reshape(n, 4, 1, 32) >> np.array([0, 4], dtype=np.uint8).reshape(1, 1, 2, 1)
    codes = (low & 0x0F).reshape(n, 8, 32)
    if five_bits:
        qh = blocks[:, 16:48].reshape(n, 1, 32) >> np.arange(8, dtype=np.uint8).reshape(1, 8, 1)
        codes = codes | ((qh & 1) << 4)
    return codes.reshape(n * 8, 32), scale, offset


def _codes_q6_k(blocks: np.ndarray):
    """[n, 210] Q6_K super-blocks of 256 (ql [128], qh [64], int8 scales [16], fp16 d) ->
    codes [n * 16, 16] in 0..63, scale/offset [n * 16, 1] (one row per 16-weight sub-block:
    w = d * sc * (q - 32)); the element order of gguf's dequantizer."""
    n = blocks.shape[0]
    ql, qh = blocks[:, :128], blocks[:, 128:192]
    sc = blocks[:, 192:208].copy().view(np.int8).astype(np.float32)          # [n, 16]
    scale = (_f16(blocks[:, 208:210]) * sc).reshape(n * 16, 1)
    low = (ql.reshape(n, 2, 1, 64) >> np.array([0, 4], dtype=np.uint8).reshape(1, 1, 2, 1)) & 15
    high = (qh.reshape(n, 2, 1, 32)
            >> np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 1, 4, 1)) & 3
    codes = low.reshape(n, 8, 32) | (high.reshape(n, 8, 32) << 4)            # [n, 8, 32]
    return codes.reshape(n * 16, 16), scale, -32 * scale


def group_size(qtype: GGMLQuantizationType) -> int:
    """Weights per (scale, offset) group of ``gguf_codes`` for a type in CODE_BITS."""
    return CODE_GROUP.get(qtype, GROUP_SIZE)


def gguf_codes(raw: np.ndarray, qtype: GGMLQuantizationType, num_cols: int):
    """A GGUF tensor's raw blocks as (codes uint8 [rows, num_cols], scale float32 [rows,
    num_cols / G], offset float32 [rows, num_cols / G]) with ``w = scale * code + offset``
    per G = ``group_size(qtype)`` consecutive weights of a row (32; 16 for Q6_K).
    raw: [rows, row bytes] uint8 (the reader's layout). Raises KeyError for a type not in
    CODE_BITS."""
    rows = raw.shape[0]
    blocks = np.ascontiguousarray(raw).reshape(-1, BLOCK_BYTES[qtype])
    if qtype in (T.Q4_0, T.Q4_1):
        codes, scale, offset = _codes_q4_0_q4_1(blocks, qtype == T.Q4_1)
    elif qtype == T.Q8_0:
        codes, scale, offset = _codes_q8_0(blocks)
    elif qtype == T.Q6_K:
        codes, scale, offset = _codes_q6_k(blocks)
    else:
        codes, scale, offset = _codes_k(blocks, qtype == T.Q5_K)
    groups = num_cols // group_size(qtype)
    return (codes.reshape(rows, num_cols), scale.reshape(rows, groups),
            offset.reshape(rows, groups))


HIGH_WEIGHT = 16
"""Q6_K on CPU: the high-bits half of each 32-column group meets 16 x (exact in bfloat16)."""
HIGH_SHIFT = 6
"""Added to the 2-bit high codes (0..3 -> 6..9) so that, with the kernel's -8, they are
centred: the group's zero then stays small (no cancellation of large bfloat16 terms)."""


def fold_sub_blocks(codes: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor):
    """Q6_K's 16-weight groups as one 4-bit plane of 2K columns with 32-column groups, one
    group per sub-block: columns [l (16 low nibbles), h + 6 (16 high 2-bit codes)], met by
    ``[x, 16 x]`` (``unfold_activations``). Per group the kernel sums
    ``x (l - 8) s + 16 x (h - 2) s + 17 z x``, which is ``x (s (l + 16 h) + offset)`` for
    ``z = (offset + 40 s) / 17`` (Q6_K: 8 s / 17). Returns the plane's (codes [N, 2K],
    scale, z - 8 s) for ``pack_planes`` of 4 bits (which adds 8 s back). codes: [N, K] of
    at most 6 bits; scale, offset: [N, K / 16]."""
    rows, num_cols = codes.shape
    sub_blocks = codes.view(rows, num_cols // 16, 1, 16)
    folded = torch.cat([sub_blocks & 15, (sub_blocks >> 4) + HIGH_SHIFT], dim=2)
    zero = (offset + (8 + HIGH_WEIGHT * (8 - HIGH_SHIFT)) * scale) / (1 + HIGH_WEIGHT)
    return folded.reshape(rows, 2 * num_cols), scale, zero - 8 * scale   # [N, 2K] codes


def unfold_activations(x: torch.Tensor) -> torch.Tensor:
    """x [T, K] -> [T, 2K]: each 16 columns followed by 16 times themselves."""
    sub_blocks = x.view(x.shape[0], -1, 1, 16)                        # [T, K / 16, 1, 16]
    return torch.cat([sub_blocks, sub_blocks * HIGH_WEIGHT], dim=2).view(x.shape[0], -1)


def pack_planes(codes: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor, bits: int
                ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(packed int4 weight, scales_and_zeros) per nibble plane for torch's CPU int4 matmul.
    codes: [N, K] uint8; scale, offset: [N, K / 32] float32; N a multiple of 16."""
    scale_t, offset_t = scale.t().contiguous(), offset.t().contiguous()     # [K / 32, N]
    if bits <= 4:
        planes = [(codes, scale_t, offset_t + 8 * scale_t)]
    else:
        planes = [(codes >> 4, 16 * scale_t, 128 * scale_t),
                  (codes & 0x0F, scale_t, offset_t + 8 * scale_t)]
    packed = []
    for nibbles, plane_scale, zero in planes:
        weight = torch.ops.aten._convert_weight_to_int4pack_for_cpu(nibbles.to(torch.int32), 1)
        # [K / 32, N, 2]
        scales_and_zeros = torch.stack([plane_scale, zero], dim=-1).to(torch.bfloat16)
        packed.append((weight, scales_and_zeros.contiguous()))
    return packed


PACK_BLOCK_ROWS = 64
"""torch's CPU int4 packing interleaves rows only within blocks of 64 (checked by
``_nibble_positions``), so one row's codes can be read back from its block's bytes."""


@functools.lru_cache(maxsize=8)
def _nibble_positions(num_cols: int) -> torch.Tensor | None:
    """[64, num_cols] int64: where (byte * 2 + high nibble) code (r, k) of a 64-row block lands
    in the block's packed bytes; None if this torch packs rows across blocks. Found by packing
    probes whose codes spell each element's index in base 16."""
    count = PACK_BLOCK_ROWS * num_cols
    digits = max(1, math.ceil(math.log(count, 16)))
    source = torch.zeros(count, dtype=torch.int64)            # packed nibble -> element index
    index = torch.arange(count)
    for digit in range(digits):
        probe = ((index >> (4 * digit)) & 15).view(PACK_BLOCK_ROWS, num_cols).to(torch.int32)
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(probe, 1).flatten()
        nibbles = torch.stack([packed & 15, packed >> 4], dim=1).flatten().to(torch.int64)
        source |= nibbles << (4 * digit)
    positions = torch.empty(count, dtype=torch.int64)
    positions[source] = torch.arange(count)
    # Two blocks of random codes must read back through the map: no row crosses a block.
    codes = torch.randint(0, 16, (2 * PACK_BLOCK_ROWS, num_cols), dtype=torch.int32,
                          generator=torch.Generator().manual_seed(0))
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 1)
    if not torch.equal(_read_rows(packed, positions.view(PACK_BLOCK_ROWS, num_cols),
                                  torch.arange(2 * PACK_BLOCK_ROWS)), codes.to(torch.uint8)):
        return None
    return positions.view(PACK_BLOCK_ROWS, num_cols)


def _read_rows(packed: torch.Tensor, positions: torch.Tensor,
               rows: torch.Tensor | None) -> torch.Tensor:
    """Codes [len(rows), K] uint8 of ``rows`` of a packed [N, K / 2] weight (N % 64 == 0);
    ``rows`` None: every row, [N, K], read block by block (one gather of the packed bytes,
    instead of copying each row's whole 64-row block: 64x less memory traffic, what made the
    dense copies of the default model take ~16 s)."""
    blocks = packed.view(-1, packed.shape[1] * PACK_BLOCK_ROWS)        # [N / 64, 64 * K / 2]
    if rows is None:
        where = positions.flatten()                                     # [64 * K]
        data = blocks[:, where // 2]                                    # [N / 64, 64 * K]
        codes = (data >> (4 * (where % 2)).to(torch.uint8)) & 15
        return codes.view(-1, positions.shape[1])                       # [N, K]
    where = positions[rows % PACK_BLOCK_ROWS]                           # [T, K]
    data = blocks[rows // PACK_BLOCK_ROWS].gather(1, where // 2)        # [T, K] bytes
    return (data >> (4 * (where % 2)).to(torch.uint8)) & 15


def can_pack(num_rows: int, num_cols: int) -> bool:
    """Shapes torch's CPU int4 kernel takes: N a multiple of 16, K of 32."""
    return num_rows % 16 == 0 and num_cols % GROUP_SIZE == 0


def can_embed(num_rows: int, num_cols: int) -> bool:
    """Whether rows of a packed weight can be looked up (an embedding kept packed)."""
    return (num_rows % PACK_BLOCK_ROWS == 0 and can_pack(num_rows, num_cols)
            and _nibble_positions(num_cols) is not None)


DENSE_MIN_ROWS = int(os.environ.get("PAGELLM_GGUF_CPU_DENSE_ROWS", "16"))
"""Rows from which a kept-quantized GGUF linear multiplies with a dense bfloat16 copy of its
weight (``GGUFLinearMethod.apply``); 0 turns the copies off."""
MULTI_ROW_MIN_ROWS = int(os.environ.get("PAGELLM_GGUF_CPU_MULTI_ROWS", "5"))
"""Rows from which (up to ``DENSE_MIN_ROWS``) a kept-quantized GGUF linear takes the
multi-row kernel (``pagellm.ops.gguf_cpu``, bit-identical per row) instead of torch's int4
kernel, which reads the weight once per 4 rows and splits 5-7 rows unevenly over its threads.
Measured on this CPU (2 threads): all 121 linears of the default model, one pass, ms, torch /
multi-row: 4 rows 10.7 / 10.7, 5 rows 18.8 / 15.6, 6 rows 18.4 / 17.0, 8 rows 19.0 / 19.5,
9 rows 26.7 / 24.2 (RESULTS.md, session 7); below 5 rows torch's kernel is as fast or
faster. 0 turns it off."""
DENSE_BUDGET_BYTES = min(4 * 2**30, os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 8)
"""Host memory all dense copies together may take (4 GiB or 1/8 of RAM, the smaller): a
model too large for it keeps the int4 path at every batch size."""
_dense_bytes_used = 0


class GGUFLinearMethod(LinearMethodBase):
    """A linear layer's weight as nibble planes of repacked GGUF blocks (module docstring).

    The layer gets ``qweight_0`` ([N, K' / 2] uint8) and ``scales_and_zeros_0`` ([K' / 32, N,
    2] bfloat16) per plane (``_1`` for the low plane of 5-8-bit types), filled by
    ``set_quantized`` from GGUF codes; ``apply`` returns float in the input's dtype. K' = K,
    or 2K for 16-weight groups (Q6_K, or a fused module holding a Q6_K piece): then one
    plane of folded sub-blocks (``fold_sub_blocks``) met by ``unfold_activations(x)``.
    """

    def __init__(self, bits: int, group_size: int = GROUP_SIZE):
        self.bits = bits
        """Code bits of the GGUF type (4: one plane; 5-8: two; folded: one)."""
        self.folded = group_size == 16
        """16-weight groups folded into one plane of 2K columns."""
        self.num_planes = 1 if bits <= 4 or self.folded else 2

    def create_weights(self, layer, input_size_per_partition, output_partition_sizes,
                       input_size, output_size, params_dtype, **extra_weight_attrs):
        num_rows = sum(output_partition_sizes)
        num_cols = input_size_per_partition * (2 if self.folded else 1)       # K'
        self.params_dtype = params_dtype
        """The model's dtype: what ``embedding`` returns."""
        for plane in range(self.num_planes):
            layer.register_parameter(f"qweight_{plane}", nn.Parameter(torch.empty(
                num_rows, num_cols // 2, dtype=torch.uint8), requires_grad=False))
            layer.register_parameter(f"scales_and_zeros_{plane}", nn.Parameter(torch.empty(
                num_cols // GROUP_SIZE, num_rows, 2, dtype=torch.bfloat16), requires_grad=False))

    def set_quantized(self, layer: nn.Module, codes: torch.Tensor, scale: torch.Tensor,
                      offset: torch.Tensor) -> None:
        """Fill the layer's planes from codes [N, K] and scale/offset [N, K / G]."""
        bits = self.bits
        if self.folded:
            (codes, scale, offset), bits = fold_sub_blocks(codes, scale, offset), 4
        for plane, (weight, scales_and_zeros) in enumerate(
                pack_planes(codes, scale, offset, bits)):
            getattr(layer, f"qweight_{plane}").data = weight
            getattr(layer, f"scales_and_zeros_{plane}").data = scales_and_zeros

    def _dense(self, layer: nn.Module) -> torch.Tensor | None:
        """The layer's weight dequantized to bfloat16 [N, K] (made once), or None when it
        cannot be (``can_embed``), the copies are off, or the budget is spent."""
        global _dense_bytes_used
        dense = getattr(layer, "_gguf_dense", None)
        if dense is not None or getattr(layer, "_gguf_dense_refused", False):
            return dense
        num_rows = layer.qweight_0.shape[0]
        num_bytes = num_rows * layer.qweight_0.shape[1] * 2 * 2 // (2 if self.folded else 1)
        if (DENSE_MIN_ROWS <= 0 or num_rows % 64 or _dense_bytes_used + num_bytes
                > DENSE_BUDGET_BYTES):
            layer._gguf_dense_refused = True
            return None
        _dense_bytes_used += num_bytes
        with torch.no_grad():
            dense = self.embedding(layer, None).to(torch.bfloat16)
        layer._gguf_dense = dense
        return dense

    def embedding(self, layer: nn.Module, input_ids: torch.Tensor | None) -> torch.Tensor:
        """Rows ``input_ids`` [T] of the weight (None: all N rows, in order), dequantized:
        [T, K] in the model's dtype (the same bfloat16-rounded scales the matmul uses). Needs
        N % 64 == 0 (``can_embed``)."""
        num_cols = layer.qweight_0.shape[1] * 2                            # K'
        positions = _nibble_positions(num_cols)
        ids = None if input_ids is None else input_ids.long()
        num_out = layer.qweight_0.shape[0] if ids is None else ids.shape[0]
        out = torch.zeros(num_out, num_cols, dtype=torch.float32)
        for plane in range(self.num_planes):
            codes = _read_rows(getattr(layer, f"qweight_{plane}"), positions, ids)    # [T, K']
            # [T, K' / 32, 2]
            scales_and_zeros = getattr(layer, f"scales_and_zeros_{plane}")
            if ids is not None:
                scales_and_zeros = scales_and_zeros[:, ids]
            scales_and_zeros = scales_and_zeros.transpose(0, 1).float()  # [T, K' / 32, 2]
            groups = out.view(num_out, -1, GROUP_SIZE)                          # [T, K'/32, 32]
            groups += ((codes.view(num_out, -1, GROUP_SIZE).float() - 8)
                       * scales_and_zeros[..., 0:1] + scales_and_zeros[..., 1:2])
        if self.folded:                 # what [x, 16 x] sums: low half + 16 * high half
            halves = out.view(num_out, -1, 2, 16)                          # [T, K / 16, 2, 16]
            out = (halves[:, :, 0] + HIGH_WEIGHT * halves[:, :, 1]).reshape(num_out, -1)
        return out.to(self.params_dtype)

    def apply(self, layer, x, bias=None):
        """x: [T, K] float -> [T, N] in x's dtype (bfloat16 inside the kernel). From
        ``DENSE_MIN_ROWS`` rows on, a dense bfloat16 copy of the weight (made on first use,
        within ``DENSE_BUDGET_BYTES``) does the product instead: the int4 kernel's time grows
        linearly with the rows (one GEMV per row), a bfloat16 GEMM's does not (measured on
        this CPU, 3072x576: 16 rows 0.34 vs 0.28 ms, 64 rows 1.35 vs 0.68 ms; RESULTS.md).
        From ``MULTI_ROW_MIN_ROWS`` (a speculative verify of k >= 4 drafts) to there, the
        multi-row kernel of ``pagellm.ops.gguf_cpu`` where it is available: the same bits
        per row as torch's kernel, so a verify row's logits equal a decode step's."""
        x_bf16 = x.to(torch.bfloat16)
        if x.shape[0] >= DENSE_MIN_ROWS:
            dense = self._dense(layer)
            if dense is not None:
                out = F.linear(x_bf16, dense).to(x.dtype)
                return out if bias is None else out + bias
        if self.folded:
            x_bf16 = unfold_activations(x_bf16)                            # [T, 2K]
        multi_row = 0 < MULTI_ROW_MIN_ROWS <= x.shape[0] and gguf_cpu.supports(layer.qweight_0)
        # the multi-row kernel writes float32 holding the bfloat16 results (the sum of two
        # planes and a float32 model skip a conversion; the values are the same)
        part_dtype = (torch.float32 if self.num_planes > 1 or x.dtype == torch.float32
                      else torch.bfloat16)
        out = None
        for plane in range(self.num_planes):
            qweight = getattr(layer, f"qweight_{plane}")
            scales_and_zeros = getattr(layer, f"scales_and_zeros_{plane}")
            if multi_row:
                part = gguf_cpu.gguf_int4_mm(x_bf16, qweight, scales_and_zeros, GROUP_SIZE,
                                             part_dtype)                    # [T, N]
            else:
                part = torch.ops.aten._weight_int4pack_mm_for_cpu(
                    x_bf16, qweight, GROUP_SIZE, scales_and_zeros)         # [T, N] bfloat16
            out = part if out is None else out.float().add_(part)
        out = out.to(x.dtype)
        return out if bias is None else out + bias


class GGUFTritonLinearMethod(LinearMethodBase):
    """A linear layer's weight in the GPU layout of ``pagellm.ops.gguf`` (4-bit low plane,
    1/2/4-bit high plane, per-group scale and offset), multiplied by the dequantizing Triton
    GEMM on CUDA and by its torch twin elsewhere. Every type of CODE_BITS (Q6_K included).

    The layer gets ``qweight`` (int32 [K / 8, N]), ``qhigh`` (int32 [K * H / 32, N], for
    5-8-bit types), ``scales`` and ``offsets`` ([K / G, N], float16 or float32), filled by
    ``set_quantized``; ``apply`` returns x's dtype, ``embedding`` the model's dtype.
    """

    def __init__(self, bits: int):
        self.bits = bits
        """Code bits of the GGUF type (4-8)."""

    def create_weights(self, layer, input_size_per_partition, output_partition_sizes,
                       input_size, output_size, params_dtype, **extra_weight_attrs):
        self.params_dtype = params_dtype
        """The model's dtype: what ``embedding`` returns."""
        # shapes and dtypes are set by set_quantized (they depend on the type's groups)
        for name in ("qweight", "qhigh", "scales", "offsets"):
            if name != "qhigh" or self.bits > 4:
                layer.register_parameter(name, nn.Parameter(torch.empty(0), requires_grad=False))

    def set_quantized(self, layer: nn.Module, codes: torch.Tensor, scale: torch.Tensor,
                      offset: torch.Tensor) -> None:
        """Fill the layer from codes [N, K] and scale/offset [N, K / G] on their device."""
        packed = pack_gguf(codes, scale, offset, self.bits)
        self.group_size = packed.group_size
        """Weights per scale/offset group (16 or 32)."""
        for name in ("qweight", "qhigh", "scales", "offsets"):
            if getattr(packed, name) is not None:
                getattr(layer, name).data = getattr(packed, name)

    def packed(self, layer: nn.Module) -> GGUFPacked:
        return GGUFPacked(layer.qweight, getattr(layer, "qhigh", None), layer.scales,
                          layer.offsets, self.bits, self.group_size)

    def embedding(self, layer: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
        """Rows ``input_ids`` [T] of the weight, dequantized: [T, K] in the model's dtype."""
        return dequantize_gguf(self.packed(layer), input_ids.long()).to(self.params_dtype)

    def apply(self, layer, x, bias=None):
        """x: [T, K] -> [T, N] in x's dtype (Triton on CUDA, the torch twin elsewhere)."""
        if use_triton_kernels(x):
            from pagellm.ops.triton.gguf_gemm import gguf_gemm_triton
            return gguf_gemm_triton(x, self.packed(layer), bias)
        return gguf_linear_torch(x, self.packed(layer), bias)
