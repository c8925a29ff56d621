"""Gated activations."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """SwiGLU on a fused gate/up projection: ``silu(gate) * up``.

    x: [..., 2 * d] holding ``[gate | up]`` on the last dim; returns [..., d].
    """
    d = x.shape[-1] // 2
    return F.silu(x[..., :d]) * x[..., d:]
