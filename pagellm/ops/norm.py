"""RMS normalisation, computed in float32 like Hugging Face does, then cast back."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``x / rms(x) * weight`` over the last dim. x: [..., hidden]; weight: [hidden].

    float32 (the CPU default): torch's one ``rms_norm`` op, bit-identical to the steps below
    at every hidden size and scale tried (tests/unit/test_ops_norm_activation.py) and half their cost in
    a batch-1 CPU decode step, where each of the 61 norms of the default model dispatched six
    ops (benchmarks/RESULTS.md, session 10). Half precision keeps HF's order (normalise in
    float32, cast back, then scale)."""
    if x.dtype == torch.float32 and weight.dtype == torch.float32:
        return F.rms_norm(x, (x.shape[-1],), weight, eps)
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
