"""GGUF blocks kept quantized on CPU: codes/scales/offsets equal the ``gguf`` package's
dequantizers for every kept type, the repacked int4 matmul and the embedding lookup match
their torch twin (bfloat16 scales and activations), and the stored bytes are as documented."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize
from torch import nn

from pagellm.layers.gguf_linear import (CODE_BITS, CPU_TYPES, GGUFLinearMethod, can_embed,
                                        gguf_codes, group_size)
from tests.helpers.gguf_blocks import raw_blocks

def packed_layer(qtype: T, rows: int, cols: int, seed: int = 0):
    """(layer with a GGUFLinearMethod filled from random blocks, exact float32 weight,
    twin weight from the bfloat16-rounded scales and zeros the kernel uses)."""
    raw = raw_blocks(qtype, rows, cols, seed)
    codes, scale, offset = (torch.from_numpy(a) for a in gguf_codes(raw, qtype, cols))
    method, layer = GGUFLinearMethod(CODE_BITS[qtype], group_size(qtype)), nn.Module()
    method.create_weights(layer, cols, [rows], cols, rows, torch.float32)
    method.set_quantized(layer, codes, scale, offset)
    layer.quant_method = method
    exact = torch.from_numpy(dequantize(raw, qtype).reshape(rows, cols))
    twin = torch.zeros(rows, cols)
    group = group_size(qtype)
    expand = lambda t: t.bfloat16().float().repeat_interleave(group, 1)  # noqa: E731
    if group == 16:       # folded: [x, 16 x] against [low nibble, high bits + 6]
        zero = expand((offset + 40 * scale) / 17)
        low = (codes & 15).float() - 8
        high = (codes >> 4).float() + 6 - 8
        return layer, exact, (low + 16 * high) * expand(scale) + 17 * zero
    planes = ([(codes, scale, offset + 8 * scale)] if CODE_BITS[qtype] <= 4 else
              [(codes >> 4, 16 * scale, 128 * scale), (codes & 15, scale, offset + 8 * scale)])
    for nibbles, plane_scale, zero in planes:
        twin += (nibbles.float() - 8) * expand(plane_scale) + expand(zero)
    return layer, exact, twin


@pytest.mark.parametrize("qtype", list(CODE_BITS))
def test_codes_equal_the_gguf_dequantizer(qtype):
    raw = raw_blocks(qtype, 16, 512)
    codes, scale, offset = gguf_codes(raw, qtype, 512)
    assert codes.dtype == np.uint8 and codes.max() < 2 ** CODE_BITS[qtype]
    assert codes.max() >= 2 ** (CODE_BITS[qtype] - 1)          # the top bit is read
    group = group_size(qtype)
    assert scale.shape == (16, 512 // group) == offset.shape
    weight = np.repeat(scale, group, 1) * codes + np.repeat(offset, group, 1)
    np.testing.assert_array_equal(weight, dequantize(raw, qtype).reshape(16, 512))


@pytest.mark.parametrize("qtype", CPU_TYPES)
@pytest.mark.parametrize("rows,cols,num_tokens", [(48, 256, 1), (160, 768, 5), (16, 512, 33)])
def test_int4_matmul_matches_its_twin(qtype, rows, cols, num_tokens):
    layer, exact, twin = packed_layer(qtype, rows, cols)
    x = torch.randn(num_tokens, cols, generator=torch.Generator().manual_seed(1))
    bias = torch.randn(rows)
    out = layer.quant_method.apply(layer, x, bias)
    assert out.shape == (num_tokens, rows) and out.dtype == torch.float32
    reference = x.bfloat16().float() @ twin.t() + bias
    # the kernel returns bfloat16 per plane: relative 2^-8 per element
    torch.testing.assert_close(out, reference, rtol=2e-2, atol=2e-2 * reference.abs().max().item())
    relative = ((out - bias - x @ exact.t()).norm() / (x @ exact.t()).norm()).item()
    assert relative < 1e-2, relative          # against float32 dequantization


@pytest.mark.parametrize("qtype", [T.Q4_1, T.Q8_0, T.Q6_K])
def test_many_rows_use_a_dense_bfloat16_copy_few_rows_the_int4_kernel(qtype, monkeypatch):
    from pagellm.layers import gguf_linear

    layer, exact, twin = packed_layer(qtype, 128, 512)
    x = torch.randn(40, 512, generator=torch.Generator().manual_seed(2))
    few = layer.quant_method.apply(layer, x[:gguf_linear.DENSE_MIN_ROWS - 1])
    assert getattr(layer, "_gguf_dense", None) is None          # the int4 kernel ran
    many = layer.quant_method.apply(layer, x)
    dense = layer._gguf_dense                                   # made on this first use
    assert dense.dtype == torch.bfloat16 and dense.shape == (128, 512)
    torch.testing.assert_close(dense.float(), twin, rtol=2e-2, atol=1e-3)
    reference = x.bfloat16().float() @ twin.t()
    torch.testing.assert_close(many, reference, rtol=2e-2, atol=2e-2 * reference.abs().max().item())
    torch.testing.assert_close(many[:len(few)], few, rtol=3e-2, atol=3e-2 * few.abs().max().item())
    # the copy reads all rows block by block: the same bits as looking each row up
    rows = layer.quant_method.embedding(layer, torch.arange(127, -1, -1)).flip(0)
    assert torch.equal(dense, rows.to(torch.bfloat16))
    # copies off (or a spent budget): the int4 kernel at every row count
    monkeypatch.setattr(gguf_linear, "DENSE_MIN_ROWS", 0)
    other, _, _ = packed_layer(qtype, 128, 512)
    other.quant_method.apply(other, x)
    assert getattr(other, "_gguf_dense", None) is None and other._gguf_dense_refused


@pytest.mark.parametrize("qtype", [T.Q4_1, T.Q8_0, T.Q6_K])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_verify_sized_row_counts_take_the_multi_row_kernel_bit_identical_per_row(
        qtype, dtype, monkeypatch):
    from pagellm.layers import gguf_linear
    from pagellm.ops import gguf_cpu

    layer, _, _ = packed_layer(qtype, 128, 512)
    x = torch.randn(15, 512, generator=torch.Generator().manual_seed(3)).to(dtype)
    one_by_one = torch.cat([layer.quant_method.apply(layer, x[i:i + 1]) for i in range(15)])
    planes = layer.quant_method.num_planes
    for num_rows in range(gguf_linear.MULTI_ROW_MIN_ROWS, gguf_linear.DENSE_MIN_ROWS):
        before = gguf_cpu.calls
        out = layer.quant_method.apply(layer, x[:num_rows])
        assert gguf_cpu.calls == before + planes                 # the multi-row kernel ran
        assert out.dtype == dtype and torch.equal(out, one_by_one[:num_rows])
    monkeypatch.setattr(gguf_linear, "MULTI_ROW_MIN_ROWS", 0)    # off: torch's kernel
    before = gguf_cpu.calls
    assert torch.equal(layer.quant_method.apply(layer, x[:5]), one_by_one[:5])
    assert gguf_cpu.calls == before


@pytest.mark.parametrize("qtype", [T.Q8_0, T.Q4_1, T.Q5_K, T.Q6_K])
def test_embedding_rows_read_back_from_the_packed_layout(qtype):
    assert can_embed(128, 256) and not can_embed(48, 256)
    layer, exact, twin = packed_layer(qtype, 128, 256)
    ids = torch.tensor([0, 127, 64, 5, 5, 63])
    rows = layer.quant_method.embedding(layer, ids)
    torch.testing.assert_close(rows, twin[ids], rtol=1e-6, atol=1e-6)
    assert ((rows - exact[ids]).abs() <= exact[ids].abs().max() * 2 ** -7).all()


def test_bytes_per_weight():
    for qtype, expected in [(T.Q4_1, 0.625), (T.Q4_0, 0.625), (T.Q8_0, 1.25), (T.Q5_K, 1.25),
                            (T.Q6_K, 1.25)]:
        layer, _, _ = packed_layer(qtype, 64, 512)
        stored = sum(p.numel() * p.element_size() for p in layer.parameters())
        assert stored == expected * 64 * 512, qtype
    raw = raw_blocks(T.Q4_1, 64, 512)
    assert raw.nbytes == 0.625 * 64 * 512          # Q4_1 repacked = Q4_1's own size


def test_unsupported_type_is_a_key_error():
    with pytest.raises(KeyError):
        gguf_codes(np.zeros((1, 84), dtype=np.uint8), T.Q2_K, 256)
