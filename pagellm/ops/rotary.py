"""Rotary position embedding, neox / rotate-half style (the layout HF Llama and Qwen use).

The cos/sin table is precomputed once for every position up to ``max_position`` and indexed
by each token's position, so one flattened batch of mixed requests needs no per-request work.
"""

from __future__ import annotations

import math

import torch

from pagellm.ops.attention import write_kv_cache
from pagellm.ops.norm import rms_norm


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


def qk_norm_rotary_and_cache(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                             positions: torch.Tensor, cos_sin_cache: torch.Tensor,
                             kv_cache: torch.Tensor, slot_mapping: torch.Tensor,
                             k_scale: float = 1.0, v_scale: float = 1.0,
                             q_norm_weight: torch.Tensor | None = None,
                             k_norm_weight: torch.Tensor | None = None,
                             eps: float = 0.0) -> torch.Tensor:
    """Everything a decoder layer does per head between the QKV projection and attention:
    (Qwen3, with ``q_norm_weight``/``k_norm_weight``) RMSNorm of each q and k head, rotary
    of q and k, then the rotated k and v written into the paged cache (vLLM's
    ``reshape_and_cache``). Torch twin of ``pagellm.ops.triton.rotary.
    qk_norm_rotary_and_cache_triton_``, and the oracle for it: the same ops the layer runs
    one by one (``rms_norm``, ``apply_rotary``, ``write_kv_cache``), so the results are
    theirs exactly.

    query: [T, num_heads, head_dim]; key, value: [T, num_kv_heads, head_dim]; positions: [T]
    int64; cos_sin_cache: [max_position, rotary_dim] float32; kv_cache: [2, num_blocks,
    block_size, num_kv_heads, head_dim] (the query's dtype, or fp8 holding K / k_scale and
    V / v_scale); slot_mapping: [T] int64 valid slots (no -1 padding here); norm weights:
    [head_dim] in the query's dtype, both or neither. Mutates ``kv_cache`` only; returns the
    rotated query as a new tensor.
    """
    if q_norm_weight is not None:
        query, key = rms_norm(query, q_norm_weight, eps), rms_norm(key, k_norm_weight, eps)
    query, key = apply_rotary(query, key, positions, cos_sin_cache)
    write_kv_cache(key, value, kv_cache, slot_mapping, k_scale, v_scale)
    return query
