import pytest
import torch
import torch.nn.functional as F

from pagellm.ops.activation import silu_and_mul
from pagellm.ops.norm import fused_add_rms_norm, rms_norm


def reference_rms_norm(x, weight, eps):
    x64 = x.double()
    return (x64 / torch.sqrt(x64.pow(2).mean(-1, keepdim=True) + eps) * weight.double()).to(x.dtype)


def test_rms_norm_matches_reference():
    torch.manual_seed(0)
    x, weight = torch.randn(7, 3, 32), torch.randn(32)
    torch.testing.assert_close(rms_norm(x, weight, 1e-6), reference_rms_norm(x, weight, 1e-6))


def test_rms_norm_bf16_computes_in_float32():
    torch.manual_seed(0)
    x, weight = (torch.randn(5, 64) * 100).bfloat16(), torch.randn(64).bfloat16()
    out = rms_norm(x, weight, 1e-5)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), reference_rms_norm(x.float(), weight.float(), 1e-5),
                               atol=0.05, rtol=0.02)


def test_fused_add_rms_norm_returns_sum_and_does_not_mutate():
    torch.manual_seed(0)
    x, residual, weight = torch.randn(4, 16), torch.randn(4, 16), torch.randn(16)
    x_before, residual_before = x.clone(), residual.clone()
    out, new_residual = fused_add_rms_norm(x, residual, weight, 1e-6)
    torch.testing.assert_close(new_residual, x + residual)
    torch.testing.assert_close(out, reference_rms_norm(x + residual, weight, 1e-6))
    assert torch.equal(x, x_before) and torch.equal(residual, residual_before)


def test_silu_and_mul():
    torch.manual_seed(0)
    x = torch.randn(6, 2 * 24)
    gate, up = x[:, :24], x[:, 24:]
    torch.testing.assert_close(silu_and_mul(x), gate * torch.sigmoid(gate) * up)
    assert silu_and_mul(x).shape == (6, 24)
    torch.testing.assert_close(silu_and_mul(x), F.silu(gate) * up)


@pytest.mark.parametrize("hidden", [33, 576, 960, 4096, 5120])
@pytest.mark.parametrize("scale", [1e-3, 1.0, 100.0])
def test_float32_rms_norm_is_bit_identical_to_the_step_by_step_formula(hidden, scale):
    """The float32 path (torch's one rms_norm op) gives HF's step-by-step result bit for bit;
    half precision keeps the step-by-step path (cast back before the weight)."""
    gen = torch.Generator().manual_seed(hidden)
    x = torch.randn(3, 5, hidden, generator=gen) * scale
    weight = torch.randn(hidden, generator=gen)
    variance = x.pow(2).mean(dim=-1, keepdim=True)
    assert torch.equal(rms_norm(x, weight, 1e-6), weight * (x * torch.rsqrt(variance + 1e-6)))
    half, half_weight = x.bfloat16(), weight.bfloat16()
    expected = half_weight * (half.float() * torch.rsqrt(
        half.float().pow(2).mean(-1, keepdim=True) + 1e-6)).bfloat16()
    assert torch.equal(rms_norm(half, half_weight, 1e-6), expected)
