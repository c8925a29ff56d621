"""Rotary position embedding, neox / rotate-half style (the layout HF Llama and Qwen use).

The cos/sin table is precomputed once for every position up to ``max_position`` and indexed
by each token's position, so one flattened batch of mixed requests needs no per-request work.
"""

from __future__ import annotations

import math

import torch


def rope_inv_freq(rotary_dim: int, base: float) -> torch.Tensor:
    """Unscaled inverse frequencies ``base^(-2i/rotary_dim)``: [rotary_dim // 2] float32."""
    exponents = torch.arange(0, rotary_dim, 2, dtype=torch.int64).float() / rotary_dim
    return 1.0 / (base ** exponents)


def llama3_scale_inv_freq(inv_freq: torch.Tensor, factor: float, low_freq_factor: float,
                          high_freq_factor: float, original_max_position: int) -> torch.Tensor:
    """Llama 3.1 frequency scaling: long wavelengths are divided by ``factor``, short ones are
    kept, and the band between is interpolated smoothly. inv_freq: [rotary_dim // 2]."""
    low_freq_wavelen = original_max_position / low_freq_factor
    high_freq_wavelen = original_max_position / high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (original_max_position / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return torch.where(is_medium, smoothed, scaled)


def rope_cos_sin_cache(inv_freq: torch.Tensor, max_position: int) -> torch.Tensor:
    """``[max_position, rotary_dim]`` float32 table: cos in the first half, sin in the second."""
    positions = torch.arange(max_position, dtype=torch.float32)
    freqs = torch.outer(positions, inv_freq.float())                 # [max_position, rotary_dim // 2]
    return torch.cat([freqs.cos(), freqs.sin()], dim=-1)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [num_tokens, num_heads, rotary_dim] float32; cos, sin: [num_tokens, 1, rotary_dim // 2]."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def apply_rotary(query: torch.Tensor, key: torch.Tensor, positions: torch.Tensor,
                 cos_sin_cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate the first ``rotary_dim`` dims of every head of query and key by position.

    query: [num_tokens, num_heads, head_dim]; key: [num_tokens, num_kv_heads, head_dim];
    positions: [num_tokens] int64; cos_sin_cache: [max_position, rotary_dim] float32.
    Returns new tensors in the inputs' dtypes (math in float32); the inputs are not mutated.
    """
    rotary_dim = cos_sin_cache.shape[-1]
    cos_sin = cos_sin_cache.index_select(0, positions).unsqueeze(1)  # [num_tokens, 1, rotary_dim]
    cos, sin = cos_sin.chunk(2, dim=-1)          # each [num_tokens, 1, rotary_dim // 2]

    def rotate(x: torch.Tensor) -> torch.Tensor:
        rotated = _rotate(x[..., :rotary_dim].float(), cos, sin).to(x.dtype)
        if rotary_dim == x.shape[-1]:
            return rotated
        return torch.cat([rotated, x[..., rotary_dim:]], dim=-1)

    return rotate(query), rotate(key)
