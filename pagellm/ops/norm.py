"""RMS normalisation, computed in float32 like Hugging Face does, then cast back."""

from __future__ import annotations

import torch


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``x / rms(x) * weight`` over the last dim. x: [..., hidden]; weight: [hidden]."""
    input_dtype = x.dtype
    x_float = x.float()
    variance = x_float.pow(2).mean(dim=-1, keepdim=True)   # [..., 1]
    normed = x_float * torch.rsqrt(variance + eps)
    # HF casts back to the input dtype before scaling by the weight; doing the same keeps
    # half-precision outputs bit-comparable with it.
    return weight * normed.to(input_dtype)


def fused_add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                       eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Add ``x`` to the residual stream, then normalise the sum.

    Returns ``(rms_norm(x + residual), x + residual)``; neither input is mutated.
    x, residual: [..., hidden].
    """
    new_residual = x + residual
    return rms_norm(new_residual, weight, eps), new_residual
