"""GGUF weights in the GPU layout of the dequantizing Triton GEMM, and its torch twin.

Every kept GGUF type is, per group of G consecutive inputs of one output row, an unsigned
code ``u`` (4 to 8 bits) with a float scale and offset: ``w = scale * u + offset``
(``pagellm.layers.gguf_linear.gguf_codes``; G = 32, or 16 for Q6_K). The GPU layout of a
weight [N, K] (N outputs, K inputs) stores K-major, N contiguous, like the GPTQ layout of
``pagellm.ops.quant``:

- ``qweight`` int32 [K / 8, N]: the low 4 bits of code k in word k // 8, bits 4 (k % 8);
- ``qhigh`` int32 [K * H / 32, N] (H = bits - 4 high bits: 1 for Q5_K, 2 for Q6_K, 4 for
  Q8_0; absent for 4-bit types): the high bits of code k in word k // (32 / H), bits
  H (k % (32 / H));
- ``scales``, ``offsets`` [K / G, N]: float16 where that is exact (Q4_0, Q4_1, Q8_0, whose
  GGUF scales are fp16), else float32 (the K-quants' ``d * sc``: fp16 times a 6/8-bit int).

Bits per weight: 4 + H + 2 * (16 or 32) / G: Q4_0/Q4_1 5, Q8_0 9, Q4_K 6, Q5_K 7, Q6_K 10.
The twin ``gguf_linear_torch`` (dequantize to float32, then matmul) is the CPU path of this
layout and the oracle of the kernel (``pagellm.ops.triton.gguf_gemm``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

LOW_BITS = 4


@dataclass(frozen=True)
class GGUFPacked:
    """One weight in the GPU layout (module docstring). ``group_size``: G."""

    qweight: torch.Tensor
    qhigh: torch.Tensor | None
    scales: torch.Tensor
    offsets: torch.Tensor
    bits: int
    group_size: int

    @property
    def high_bits(self) -> int:
        return max(0, self.bits - LOW_BITS)


def _pack_words(values: torch.Tensor, bits: int) -> torch.Tensor:
    """values [K, N] ints < 2**bits -> int32 [K * bits / 32, N], value k in word
    k // (32 / bits) at bit bits * (k % (32 / bits)). K a multiple of 32 / bits."""
    per_word = 32 // bits
    K, N = values.shape
    shifts = (torch.arange(per_word, device=values.device, dtype=torch.int64) * bits)
    words = (values.to(torch.int64).view(K // per_word, per_word, N)
             << shifts.view(1, per_word, 1)).sum(dim=1)              # [K / per_word, N] < 2^32
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def _unpack_words(words: torch.Tensor, bits: int) -> torch.Tensor:
    """Inverse of ``_pack_words``: int32 [K * bits / 32, N] -> int32 [K, N]."""
    per_word = 32 // bits
    shifts = torch.arange(per_word, device=words.device, dtype=torch.int32) * bits
    values = (words[:, None, :] >> shifts.view(1, per_word, 1)) & ((1 << bits) - 1)
    return values.reshape(-1, words.shape[1])                      # [K, N]


def _compact(t: torch.Tensor) -> torch.Tensor:
    """float32 -> float16 when every value survives the round trip, else float32."""
    half = t.to(torch.float16)
    return half if torch.equal(half.to(torch.float32), t) else t


def pack_gguf(codes: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor,
              bits: int) -> GGUFPacked:
    """codes uint8 [N, K]; scale, offset float32 [N, K / G] -> the GPU layout (on the
    tensors' device). K must be a multiple of 32 (of 256 for every K-quant)."""
    group = codes.shape[1] // scale.shape[1]
    codes_t = codes.t().to(torch.int32)                              # [K, N]
    high = bits - LOW_BITS
    return GGUFPacked(
        qweight=_pack_words(codes_t & 15, LOW_BITS).contiguous(),
        qhigh=_pack_words(codes_t >> LOW_BITS, high).contiguous() if high > 0 else None,
        scales=_compact(scale.t().contiguous().float()),
        offsets=_compact(offset.t().contiguous().float()),
        bits=bits, group_size=group)


def dequantize_gguf(packed: GGUFPacked, columns: torch.Tensor | None = None) -> torch.Tensor:
    """The weight as float32 [N, K], or only output rows ``columns`` ([T] int: the rows of an
    embedding lookup) as [T, K]."""
    def pick(t: torch.Tensor) -> torch.Tensor:
        return t if columns is None else t[:, columns]
    codes = _unpack_words(pick(packed.qweight), LOW_BITS)            # [K, n]
    if packed.qhigh is not None:
        codes = codes | (_unpack_words(pick(packed.qhigh), packed.high_bits) << LOW_BITS)
    g = packed.group_size
    scales = pick(packed.scales).float().repeat_interleave(g, 0)    # [K, n]
    offsets = pick(packed.offsets).float().repeat_interleave(g, 0)
    return (codes.float() * scales + offsets).t()                    # [n, K]


def gguf_linear_torch(x: torch.Tensor, packed: GGUFPacked,
                      bias: torch.Tensor | None = None) -> torch.Tensor:
    """x [..., K] @ the dequantized weight [N, K].T (+ bias) -> [..., N] in x.dtype
    (float32 product): the CPU path of the GPU layout and the kernel's oracle."""
    out = x.float() @ dequantize_gguf(packed).t()
    if bias is not None:
        out = out + bias.float()
    return out.to(x.dtype)
