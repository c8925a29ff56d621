"""``pagellm.layers.linear.linear``: the swapped CPU GEMM order gives F.linear's result, with
and without bias, on both sides of the row threshold, and leaves other dtypes alone. The
parallel layers outside a tensor-parallel group are whole layers (sharded runs:
tests/unit/test_parallel_layers.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pagellm.layers.linear import (CPU_SWAPPED_GEMM_MAX_ROWS, MergedColumnParallelLinear,
                                   UnquantizedLinearMethod, linear)


@pytest.mark.parametrize("rows", [1, 3, CPU_SWAPPED_GEMM_MAX_ROWS, CPU_SWAPPED_GEMM_MAX_ROWS + 1])
@pytest.mark.parametrize("with_bias", [False, True])
def test_linear_matches_f_linear(rows, with_bias):
    generator = torch.Generator().manual_seed(rows)
    x = torch.randn(rows, 48, generator=generator)
    weight = torch.randn(80, 48, generator=generator)
    bias = torch.randn(80, generator=generator) if with_bias else None
    out = linear(x, weight, bias)
    assert out.shape == (rows, 80) and out.is_contiguous()
    torch.testing.assert_close(out, F.linear(x, weight, bias), rtol=1e-5, atol=1e-5)


def test_bf16_and_3d_inputs_take_f_linear():
    weight = torch.randn(16, 8, dtype=torch.bfloat16)
    x = torch.randn(4, 8, dtype=torch.bfloat16)
    torch.testing.assert_close(linear(x, weight), F.linear(x, weight))
    x3 = torch.randn(2, 3, 8)
    torch.testing.assert_close(linear(x3, weight.float()), F.linear(x3, weight.float()))


def test_single_rank_merged_layer_is_one_whole_linear():
    layer = MergedColumnParallelLinear(8, [4, 6], bias=True)
    assert isinstance(layer.quant_method, UnquantizedLinearMethod)
    assert {n: tuple(p.shape) for n, p in layer.named_parameters()} == {"weight": (10, 8),
                                                                       "bias": (10,)}
    gate, up = torch.randn(4, 8), torch.randn(6, 8)
    layer.weight_loader(layer.weight, up, 1)
    layer.weight_loader(layer.weight, gate, 0)
    layer.weight_loader(layer.bias, torch.arange(4.0), 0)
    layer.weight_loader(layer.bias, torch.arange(6.0), 1)
    assert torch.equal(layer.weight, torch.cat([gate, up]))
    x = torch.randn(5, 8)
    torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias))
