"""Write a step's new K/V into the paged cache (reshape-and-cache), in Triton.

Torch twin and oracle: ``pagellm.ops.attention.write_kv_cache``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pagellm.ops.attention import is_fp8


@triton.jit
def _write_kv_cache_kernel(
        key_ptr, value_ptr, k_cache_ptr, v_cache_ptr, slot_mapping_ptr, k_scale, v_scale,
        stride_key_token, stride_key_head, stride_key_dim,
        stride_value_token, stride_value_head, stride_value_dim,
        stride_cache_block, stride_cache_slot, stride_cache_head, stride_cache_dim,
        NUM_KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, HEADS_PAD: tl.constexpr,
        HEAD_DIM_PAD: tl.constexpr, BLOCK_SIZE: tl.constexpr, FP8_MAX: tl.constexpr):
    """One token: all its kv heads, K and V. FP8_MAX > 0: an fp8 cache, which stores K / k_scale
    and V / v_scale saturated to +-FP8_MAX."""
    token = tl.program_id(0).to(tl.int64)
    slot = tl.load(slot_mapping_ptr + token).to(tl.int64)
    if slot < 0:
        return      # padding token
    heads = tl.arange(0, HEADS_PAD)[:, None]
    dims = tl.arange(0, HEAD_DIM_PAD)[None, :]
    mask = (heads < NUM_KV_HEADS) & (dims < HEAD_DIM)                # [HEADS_PAD, HEAD_DIM_PAD]
    cache_offset = ((slot // BLOCK_SIZE) * stride_cache_block + (slot % BLOCK_SIZE) * stride_cache_slot
                    + heads * stride_cache_head + dims * stride_cache_dim)
    key = tl.load(key_ptr + token * stride_key_token + heads * stride_key_head
                  + dims * stride_key_dim, mask=mask)
    value = tl.load(value_ptr + token * stride_value_token + heads * stride_value_head
                    + dims * stride_value_dim, mask=mask)
    if FP8_MAX > 0:
        key = tl.clamp(key.to(tl.float32) / k_scale, -FP8_MAX, FP8_MAX)
        value = tl.clamp(value.to(tl.float32) / v_scale, -FP8_MAX, FP8_MAX)
    tl.store(k_cache_ptr + cache_offset, key.to(k_cache_ptr.dtype.element_ty), mask=mask)
    tl.store(v_cache_ptr + cache_offset, value.to(v_cache_ptr.dtype.element_ty), mask=mask)


def write_kv_cache_triton(key: torch.Tensor, value: torch.Tensor, kv_cache: torch.Tensor,
                          slot_mapping: torch.Tensor, k_scale: float = 1.0,
                          v_scale: float = 1.0) -> None:
    """Store each new token's K and V at its slot. Mutates ``kv_cache`` in place, nothing else.

    key, value: [num_tokens, num_kv_heads, head_dim] (cast to the cache's dtype; an fp8 cache
    gets them divided by ``k_scale``/``v_scale`` and saturated, like the twin);
    kv_cache: [2, num_blocks, block_size, num_kv_heads, head_dim]; slot_mapping: [num_tokens]
    int, each a slot in ``[0, num_blocks * block_size)``; unlike the torch twin, a negative slot
    (padding) is skipped rather than an error.
    """
    num_tokens, num_kv_heads, head_dim = key.shape
    if num_tokens == 0:
        return
    fp8_max = torch.finfo(kv_cache.dtype).max if is_fp8(kv_cache.dtype) else 0.0
    _write_kv_cache_kernel[(num_tokens,)](
        key, value, kv_cache[0], kv_cache[1], slot_mapping, float(k_scale), float(v_scale),
        *key.stride(), *value.stride(),
        *kv_cache.stride()[1:], NUM_KV_HEADS=num_kv_heads, HEAD_DIM=head_dim,
        HEADS_PAD=triton.next_power_of_2(num_kv_heads),
        HEAD_DIM_PAD=triton.next_power_of_2(head_dim), BLOCK_SIZE=kv_cache.shape[2],
        FP8_MAX=fp8_max, num_warps=4)
