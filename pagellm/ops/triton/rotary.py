"""Neox-style rotary embedding of query and key in one Triton launch, in place.

Torch twin and oracle: ``pagellm.ops.rotary.apply_rotary`` (the same float32 math: the
table's cos/sin, ``x1 cos - x2 sin`` and ``x2 cos + x1 sin``, rounded once to the input
dtype). The torch version costs ~18 elementwise launches per layer (casts, products, cat),
about 0.6 ms of a Llama-8B batch-1 decode step on an H200 (benchmarks/RESULTS.md,
2026-11-30 profile); this is one launch per layer.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _rotate_heads(ptr, token, stride_token, stride_head, num_heads, cos, sin, offs_d, half,
                  BLOCK_H: tl.constexpr):
    """Rotate the first 2 * half dims of every head of one token of one tensor, in place."""
    offs_h = tl.arange(0, BLOCK_H)
    mask = (offs_h[:, None] < num_heads) & (offs_d[None, :] < half)
    base = ptr + token * stride_token + offs_h[:, None] * stride_head + offs_d[None, :]
    x1 = tl.load(base, mask=mask, other=0.0)
    x2 = tl.load(base + half, mask=mask, other=0.0)
    a = x1.to(tl.float32)
    b = x2.to(tl.float32)
    tl.store(base, (a * cos - b * sin).to(x1.dtype), mask=mask)
    tl.store(base + half, (b * cos + a * sin).to(x2.dtype), mask=mask)


@triton.jit
def _rotary_kernel(q_ptr, k_ptr, positions_ptr, cache_ptr, stride_q_token, stride_q_head,
                   stride_k_token, stride_k_head, num_q_heads, num_k_heads, half,
                   stride_cache, BLOCK_HQ: tl.constexpr, BLOCK_HK: tl.constexpr,
                   BLOCK_D: tl.constexpr):
    token = tl.program_id(0).to(tl.int64)
    position = tl.load(positions_ptr + token).to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < half
    cos = tl.load(cache_ptr + position * stride_cache + offs_d, mask=d_mask, other=0.0)
    sin = tl.load(cache_ptr + position * stride_cache + half + offs_d, mask=d_mask, other=0.0)
    cos = cos[None, :]
    sin = sin[None, :]
    _rotate_heads(q_ptr, token, stride_q_token, stride_q_head, num_q_heads, cos, sin, offs_d,
                  half, BLOCK_HQ)
    _rotate_heads(k_ptr, token, stride_k_token, stride_k_head, num_k_heads, cos, sin, offs_d,
                  half, BLOCK_HK)


def apply_rotary_triton_(query: torch.Tensor, key: torch.Tensor, positions: torch.Tensor,
                         cos_sin_cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate query and key in place; returns them.

    query: [T, num_heads, head_dim], key: [T, num_kv_heads, head_dim] (views of a fused QKV
    output are fine: the last dim must be contiguous); positions: [T] int64;
    cos_sin_cache: [max_position, rotary_dim] float32 (cos | sin), rotary_dim <= head_dim.
    """
    num_tokens = query.shape[0]
    half = cos_sin_cache.shape[-1] // 2
    assert query.stride(-1) == 1 and key.stride(-1) == 1, "head dims must be contiguous"
    if num_tokens == 0:
        return query, key
    _rotary_kernel[(num_tokens,)](
        query, key, positions, cos_sin_cache, query.stride(0), query.stride(1),
        key.stride(0), key.stride(1), query.shape[1], key.shape[1], half,
        cos_sin_cache.stride(0), BLOCK_HQ=triton.next_power_of_2(query.shape[1]),
        BLOCK_HK=triton.next_power_of_2(key.shape[1]), BLOCK_D=triton.next_power_of_2(half),
        num_warps=4)
    return query, key
