"""The multi-row CPU int4 kernel (pagellm.ops.gguf_cpu) equals torch's
``_weight_int4pack_mm_for_cpu`` bit for bit, per row and for every row count up to the dense
threshold, so a speculative verify row gets the logits of a decode step."""

from __future__ import annotations

import pytest
import torch

from pagellm.ops import gguf_cpu


def _packed(num_out: int, num_in: int, seed: int):
    """(packed int4 weight, bfloat16 scales_and_zeros [K / 32, N, 2]) of random codes."""
    gen = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 16, (num_out, num_in), dtype=torch.int32, generator=gen)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 1)
    scales = torch.randn(num_in // 32, num_out, generator=gen) * 0.02
    zeros = torch.randn(num_in // 32, num_out, generator=gen) * 0.1
    return packed, torch.stack([scales, zeros], dim=-1).to(torch.bfloat16)


def test_available_where_torch_uses_its_avx512_layout():
    avx512 = torch.backends.cpu.get_cpu_capability() in ("AVX512", "AVX512_BF16")
    assert gguf_cpu.available() == avx512


@pytest.mark.parametrize("num_out,num_in", [(64, 64), (192, 576), (128, 1536)])
def test_bit_identical_to_torch_int4_kernel_per_row(num_out, num_in):
    packed, scales_and_zeros = _packed(num_out, num_in, seed=num_in)
    gen = torch.Generator().manual_seed(1)
    # activations over 6 decades: rounding and accumulation order both show up
    spread = torch.logspace(-3, 3, num_in)[torch.randperm(num_in, generator=gen)]
    before = gguf_cpu.calls
    for num_rows in range(1, 17):
        x = (torch.randn(num_rows, num_in, generator=gen) * spread).bfloat16()
        rows = [torch.ops.aten._weight_int4pack_mm_for_cpu(x[i:i + 1], packed, 32,
                                                            scales_and_zeros)
                for i in range(num_rows)]
        expected = torch.cat(rows)                               # [num_rows, num_out] bf16
        out = gguf_cpu.gguf_int4_mm(x, packed, scales_and_zeros)
        assert out.dtype == torch.bfloat16
        assert torch.equal(out.view(torch.int16), expected.view(torch.int16)), num_rows
        out32 = gguf_cpu.gguf_int4_mm(x, packed, scales_and_zeros, out_dtype=torch.float32)
        assert out32.dtype == torch.float32 and torch.equal(out32, expected.float())
    assert gguf_cpu.calls == before + 32
