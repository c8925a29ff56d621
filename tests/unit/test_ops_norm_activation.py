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
