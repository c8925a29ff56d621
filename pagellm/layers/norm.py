"""RMSNorm module, optionally fused with the residual add."""

from __future__ import annotations

import torch
from torch import nn

from pagellm.ops.norm import fused_add_rms_norm, rms_norm
from pagellm.platforms import use_triton_kernels


class RMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float, dtype: torch.dtype | None = None):
        super().__init__()
        self.eps = eps
        """Added to the mean square before the reciprocal square root."""
        self.weight = nn.Parameter(torch.ones(hidden_size, dtype=dtype))
        """Per-channel scale: [hidden_size]."""

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        """x: [..., hidden]. Without ``residual``: returns the normed x. With it: returns
        ``(norm(x + residual), x + residual)``, the second being the new residual stream."""
        if use_triton_kernels(x):
            from pagellm.ops.triton.norm import fused_add_rms_norm_triton, rms_norm_triton
            if residual is None:
                return rms_norm_triton(x, self.weight, self.eps)
            return fused_add_rms_norm_triton(x, residual, self.weight, self.eps)
        if residual is None:
            return rms_norm(x, self.weight, self.eps)
        return fused_add_rms_norm(x, residual, self.weight, self.eps)

    def init_weights(self) -> None:
        nn.init.ones_(self.weight)
