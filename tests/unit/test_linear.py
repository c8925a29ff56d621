"""``pagellm.layers.linear.linear``: the swapped CPU GEMM order gives F.linear's result, with
and without bias, on both sides of the row threshold, and leaves other dtypes alone."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pagellm.layers.linear import CPU_SWAPPED_GEMM_MAX_ROWS, Linear, MergedLinear, linear


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


def test_modules_keep_nn_linear_parameters():
    layer = MergedLinear(8, [4, 6], bias=True)
    assert isinstance(layer, Linear) and isinstance(layer, torch.nn.Linear)
    assert set(dict(layer.named_parameters())) == {"weight", "bias"}
    x = torch.randn(5, 8)
    torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias))
