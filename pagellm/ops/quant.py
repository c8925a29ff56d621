"""Quantized GEMMs in plain torch: the CPU path and the oracle of the Triton kernels.

Three families (vLLM's names for the schemes):

- **W4A16 / W8A16** (GPTQ, AWQ, compressed-tensors pack-quantized), one internal layout (the
  GPTQ one, what every checkpoint format is repacked into at load):
  ``qweight`` int32 [K / pack, N], element k of column n in bits ``(k % pack) * bits`` of row
  ``k // pack`` (pack = 32 // bits); ``qzeros`` int32 [G, N / pack] packed the same way along
  N, holding the real zero point in [0, 2**bits) (None: symmetric, zero = 2**(bits - 1));
  ``scales`` [G, N]; ``g_idx`` int32 [K] the group of every input row (None: row k is in
  group ``k // (K // G)``). Weight = (q - zero[g]) * scale[g].
- **W8A8-FP8**: float8_e4m3fn weight [N, K] with float32 scales per output channel [N];
  activations quantized per token (dynamic) or with one static scale; at decode (a few
  rows, CUDA) weight-only: unquantized activations times the dequantized weight.
- **W8A8-INT8**: int8 weight [N, K] with float32 per-channel scales [N]; activations
  quantized per token to int8 (symmetric), int32 accumulation (``torch._int_mm``).
"""

from __future__ import annotations

import functools

import torch

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8_DTYPE).max            # 448.0
FP8_MIN_SCALE = 1.0 / (FP8_MAX * 512.0)
"""Floor of a dynamic fp8 scale (vLLM's), so an all-zero token does not divide by zero."""
INT8_MIN_SCALE = 1e-10
INT8_SYMMETRIC_HALF_RANGE = 127.5


def pack_factor(bits: int) -> int:
    """Values per int32 word."""
    return 32 // bits


def unpack_int32(packed: torch.Tensor, bits: int, dim: int) -> torch.Tensor:
    """int32 words holding ``32 // bits`` unsigned values each, element i in bits
    ``[i * bits, (i + 1) * bits)``, unpacked along ``dim`` -> int32 tensor with ``dim``
    ``32 // bits`` times longer."""
    shifts = torch.arange(0, 32, bits, device=packed.device, dtype=torch.int32)   # [32 // bits]
    moved = packed.movedim(dim, -1).unsqueeze(-1)                 # [..., words, 1]
    values = (moved >> shifts) & ((1 << bits) - 1)                # [..., words, 32 // bits]
    return values.flatten(-2).movedim(-1, dim)


def pack_int32(values: torch.Tensor, bits: int, dim: int) -> torch.Tensor:
    """Inverse of ``unpack_int32``: unsigned values in [0, 2**bits) packed along ``dim``
    (its length must be a multiple of ``32 // bits``) -> int32."""
    factor = pack_factor(bits)
    moved = values.to(torch.int64).movedim(dim, -1)               # [..., length]
    moved = moved.reshape(*moved.shape[:-1], -1, factor)          # [..., words, factor]
    shifts = torch.arange(0, 32, bits, device=values.device, dtype=torch.int64)
    words = (moved << shifts).sum(-1)                             # [..., words], < 2**32
    words = torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)
    return words.movedim(-1, dim).contiguous()


def group_index(num_rows: int, num_groups: int, g_idx: torch.Tensor | None,
                device: torch.device) -> torch.Tensor:
    """The group of each of ``num_rows`` input rows: ``g_idx`` when given, else contiguous
    groups of ``num_rows // num_groups`` rows (one group: per-channel). int64 [num_rows]."""
    if g_idx is not None:
        return g_idx.to(torch.int64)
    return torch.arange(num_rows, device=device) // (num_rows // num_groups)


def dequantize_wna16(qweight: torch.Tensor, scales: torch.Tensor, qzeros: torch.Tensor | None,
                     g_idx: torch.Tensor | None, bits: int) -> torch.Tensor:
    """The dense weight [K, N] (in ``scales.dtype``) of the internal W4A16/W8A16 layout
    (module docstring)."""
    q = unpack_int32(qweight, bits, dim=0)                        # [K, N]
    groups = group_index(q.shape[0], scales.shape[0], g_idx, q.device)
    if qzeros is None:
        zeros = torch.full_like(q, 1 << (bits - 1))
    else:
        zeros = unpack_int32(qzeros, bits, dim=1)[groups]         # [K, N]
    return (q - zeros).to(scales.dtype) * scales[groups]


def wna16_linear_torch(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor,
                       qzeros: torch.Tensor | None, g_idx: torch.Tensor | None, bits: int,
                       bias: torch.Tensor | None = None) -> torch.Tensor:
    """x [M, K] @ dequantized weight [K, N] (+ bias) -> [M, N] in x.dtype. The weight is
    dequantized in x.dtype, the product accumulates as torch's matmul does for x.dtype."""
    weight = dequantize_wna16(qweight, scales.to(x.dtype), qzeros, g_idx, bits)   # [K, N]
    out = x @ weight
    return out + bias if bias is not None else out


def quantize_fp8_per_token(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic per-token fp8: x [M, K] -> (float8_e4m3fn [M, K], float32 scales [M, 1]) with
    x ≈ q * scale; scale = max|row| / 448 (at least FP8_MIN_SCALE)."""
    amax = x.abs().amax(dim=-1, keepdim=True).float()              # [M, 1]
    scale = (amax / FP8_MAX).clamp(min=FP8_MIN_SCALE)
    return (x.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE), scale


def quantize_fp8_static(x: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Static fp8 with one float32 scale (shape [] or [1]) -> (float8 [M, K], scale [M, 1])."""
    q = (x.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    return q, scale.reshape(1, 1).expand(x.shape[0], 1)


def quantize_fp8_per_channel(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Online weight quantization: [N, K] -> (float8 [N, K], float32 scales [N])."""
    q, scale = quantize_fp8_per_token(weight)
    return q, scale.squeeze(-1)


def fp8_linear_torch(x_q: torch.Tensor, x_scale: torch.Tensor, weight: torch.Tensor,
                     weight_scale: torch.Tensor, out_dtype: torch.dtype,
                     bias: torch.Tensor | None = None) -> torch.Tensor:
    """The fp8 GEMM emulated: (x_q * x_scale) @ (weight * weight_scale).T in float32, the
    function ``torch._scaled_mm`` computes on fp8 tensor cores (float32 accumulation).
    x_q [M, K] fp8, x_scale [M, 1], weight [N, K] fp8, weight_scale [N] -> [M, N]."""
    x = x_q.float() * x_scale                                     # [M, K]
    w = weight.float() * weight_scale.unsqueeze(-1)               # [N, K]
    out = (x @ w.t()).to(out_dtype)
    return out + bias if bias is not None else out


def fp8_weight_only_linear_torch(x: torch.Tensor, weight: torch.Tensor,
                                 weight_scale: torch.Tensor,
                                 bias: torch.Tensor | None = None) -> torch.Tensor:
    """Weight-only fp8 (the decode GEMV's twin, ``pagellm.ops.triton.quant_gemv``): x [M, K]
    unquantized @ (weight fp8 [N, K] * weight_scale float32 [N] or [1]).T in float32
    (+ bias) -> [M, N] in x.dtype."""
    w = weight.float() * weight_scale.reshape(-1, 1).float()      # [N, K]
    out = (x.float() @ w.t()).to(x.dtype)
    return out + bias if bias is not None else out


def dense_gemv_torch(x: torch.Tensor, weight: torch.Tensor,
                     bias: torch.Tensor | None = None) -> torch.Tensor:
    """The unquantized decode GEMV's twin (``pagellm.ops.triton.dense_gemv``): x [M, K] @
    weight [N, K].T (+ bias [N]) in float32, then cast -> [M, N] in x.dtype."""
    out = x.float() @ weight.float().t()                          # [M, N]
    if bias is not None:
        out = out + bias.float()
    return out.to(x.dtype)


def quantize_int8_per_token(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic symmetric per-token int8: x [M, K] -> (int8 [M, K], float32 scales [M, 1]).
    scale = max|row| / 127.5, compressed-tensors' symmetric range (255 / 2; the checkpoints'
    writer defines the scheme, and transformers computes it so), values clamped to
    [-128, 127]."""
    amax = x.abs().amax(dim=-1, keepdim=True).float()
    scale = (amax / INT8_SYMMETRIC_HALF_RANGE).clamp(min=INT8_MIN_SCALE)
    return torch.round(x.float() / scale).clamp(-128, 127).to(torch.int8), scale


def quantize_int8_static(x: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Static symmetric int8 with one float32 scale -> (int8 [M, K], scale [M, 1])."""
    q = torch.round(x.float() / scale).clamp(-128, 127).to(torch.int8)
    return q, scale.reshape(1, 1).expand(x.shape[0], 1)


INT_MM_MIN_ROWS = 17
"""torch._int_mm on CUDA wants more than 16 rows: smaller batches are zero-padded."""


def int8_matmul(x_q: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Exact int32 x_q [M, K] @ weight[N, K].T through ``torch._int_mm`` (CPU and CUDA);
    rows are padded to INT_MM_MIN_ROWS on CUDA, where K and N must be multiples of 8."""
    rows = x_q.shape[0]
    if x_q.is_cuda and rows < INT_MM_MIN_ROWS:
        x_q = torch.nn.functional.pad(x_q, (0, 0, 0, INT_MM_MIN_ROWS - rows))
    return torch._int_mm(x_q.contiguous(), weight.t())[:rows]


def int8_linear(x_q: torch.Tensor, x_scale: torch.Tensor, weight: torch.Tensor,
                weight_scale: torch.Tensor, out_dtype: torch.dtype,
                bias: torch.Tensor | None = None) -> torch.Tensor:
    """(x_q @ weight.T) * x_scale * weight_scale: x_q int8 [M, K], x_scale [M, 1],
    weight int8 [N, K], weight_scale float32 [N] -> [M, N] out_dtype."""
    acc = int8_matmul(x_q, weight)                                # [M, N] int32
    out = (acc.float() * x_scale * weight_scale).to(out_dtype)
    return out + bias if bias is not None else out


def scaled_mm_shape_ok(weight: torch.Tensor) -> bool:
    """``torch._scaled_mm`` takes this fp8 weight [N, K]: N and K multiples of 16."""
    return weight.shape[0] % 16 == 0 and weight.shape[1] % 16 == 0


@functools.cache
def fp8_tensor_cores(device: torch.device) -> bool:
    """CUDA device with fp8 tensor cores (compute capability 8.9+: Ada, Hopper)."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9)


def scaled_mm_supported(weight: torch.Tensor) -> bool:
    """Whether ``torch._scaled_mm`` runs this fp8 weight [N, K] where it lies."""
    return scaled_mm_shape_ok(weight) and fp8_tensor_cores(weight.device)


def fp8_linear(x_q: torch.Tensor, x_scale: torch.Tensor, weight: torch.Tensor,
               weight_scale: torch.Tensor, out_dtype: torch.dtype,
               bias: torch.Tensor | None = None, use_scaled_mm: bool = False) -> torch.Tensor:
    """The fp8 GEMM (shapes as ``fp8_linear_torch``): ``torch._scaled_mm`` with row-wise
    scales (float32 accumulation, bfloat16 output) when ``use_scaled_mm``, else the
    emulation."""
    if not use_scaled_mm:
        return fp8_linear_torch(x_q, x_scale, weight, weight_scale, out_dtype, bias)
    out = torch._scaled_mm(x_q.contiguous(), weight.t(), scale_a=x_scale.contiguous(),
                           scale_b=weight_scale.reshape(1, -1), out_dtype=torch.bfloat16)
    out = out.to(out_dtype)
    return out + bias if bias is not None else out
