"""Neox-style rotary embedding of query and key in Triton: alone, or fused with the Qwen3
per-head q/k RMSNorm and the KV-cache write. One kernel, one launch per layer either way.

* ``apply_rotary_triton_``: rotates q and k in place. Torch twin and oracle:
  ``pagellm.ops.rotary.apply_rotary``. The torch version costs ~18 elementwise launches per
  layer (casts, products, cat), about 0.6 ms of a Llama-8B batch-1 decode step on an H200
  (benchmarks/RESULTS.md, 2026-11-30 profile).
* ``qk_norm_rotary_and_cache_triton_``: per token, (optionally) RMSNorm of every q and k head
  with the q_norm / k_norm weights, rotary of q (written back in place) and k, and the store
  of the rotated k and of v into the paged cache at ``slot_mapping`` (what
  ``pagellm.ops.triton.kv_cache.write_kv_cache_triton`` stores, fp8 included). Torch twin and
  oracle: ``pagellm.ops.rotary.qk_norm_rotary_and_cache``. It replaces the rotary launch,
  the KV-write launch and, for Qwen3, two norm launches per layer (session 4 and 7 profiles:
  rotary 0.07 ms + KV write 0.04 ms per Llama-8B decode step, ~2 us per launch).

Rounding follows the twins step by step: the norm rounds ``x * rstd`` to the input dtype, then
``* weight`` to the input dtype; the rotation runs in float32 on those and is rounded once to
the input dtype; an fp8 cache gets that rounded key divided by ``k_scale``, saturated. A head
is handled as three pieces: the two rotated halves (dims ``[0, half)`` and ``[half, 2 half)``)
and the unrotated tail (``[2 half, head_dim)``, empty unless ``rotary_dim < head_dim``); each
element is loaded and stored by the same thread, so the in-place update needs no barrier.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pagellm.ops.attention import is_fp8


@triton.jit
def _load_heads(base, head_mask, offs_half, half, offs_tail, tail_len):
    """Every head of one token at ``base`` ([H, 1] pointers): (first half, second half, tail),
    [H, BLOCK_HALF], [H, BLOCK_HALF], [H, BLOCK_TAIL] in the tensor's dtype, 0 where masked."""
    half_mask = head_mask & (offs_half[None, :] < half)
    x1 = tl.load(base + offs_half[None, :], mask=half_mask, other=0.0)
    x2 = tl.load(base + half + offs_half[None, :], mask=half_mask, other=0.0)
    tail = tl.load(base + 2 * half + offs_tail[None, :],
                   mask=head_mask & (offs_tail[None, :] < tail_len), other=0.0)
    return x1, x2, tail


@triton.jit
def _scale_by_weight(x, rstd, weight_ptrs, mask, dtype):
    """The twin's ``weight * (x * rstd).to(dtype)``, rounded to ``dtype``, back in float32."""
    weight = tl.load(weight_ptrs, mask=mask, other=0.0).to(tl.float32)[None, :]
    return ((x * rstd).to(dtype).to(tl.float32) * weight).to(dtype).to(tl.float32)


@triton.jit
def _norm_rotate(x1, x2, tail, cos, sin, weight_ptr, eps, offs_half, half, offs_tail, tail_len,
                 head_dim, QK_NORM: tl.constexpr):
    """(x1, x2, tail) of ``_load_heads`` -> the same pieces normed (QK_NORM, weight at
    ``weight_ptr``) and rotated by (cos, sin) [1, BLOCK_HALF] float32, in the input dtype."""
    dtype = x1.dtype
    a = x1.to(tl.float32)
    b = x2.to(tl.float32)
    c = tail.to(tl.float32)
    if QK_NORM:
        variance = (tl.sum(a * a, 1) + tl.sum(b * b, 1) + tl.sum(c * c, 1)) / head_dim
        rstd = tl.rsqrt(variance + eps)[:, None]                          # [H, 1]
        half_mask = offs_half < half
        a = _scale_by_weight(a, rstd, weight_ptr + offs_half, half_mask, dtype)
        b = _scale_by_weight(b, rstd, weight_ptr + half + offs_half, half_mask, dtype)
        c = _scale_by_weight(c, rstd, weight_ptr + 2 * half + offs_tail, offs_tail < tail_len,
                             dtype)
    return (a * cos - b * sin).to(dtype), (b * cos + a * sin).to(dtype), c.to(dtype)


@triton.jit
def _store_heads(base, head_mask, offs_half, half, offs_tail, tail_len, x1, x2, tail,
                 STORE_TAIL: tl.constexpr):
    """Inverse of ``_load_heads`` (the tail only with STORE_TAIL: unchanged otherwise)."""
    half_mask = head_mask & (offs_half[None, :] < half)
    tl.store(base + offs_half[None, :], x1, mask=half_mask)
    tl.store(base + half + offs_half[None, :], x2, mask=half_mask)
    if STORE_TAIL:
        tl.store(base + 2 * half + offs_tail[None, :], tail,
                 mask=head_mask & (offs_tail[None, :] < tail_len))


@triton.jit
def _rotate_in_place(token_ptr, stride_head, num_heads, cos, sin, weight_ptr, eps, offs_half,
                     half, offs_tail, tail_len, head_dim, BLOCK_H: tl.constexpr,
                     QK_NORM: tl.constexpr):
    """Norm (QK_NORM) and rotate the heads of one token (at ``token_ptr``) in place."""
    heads = tl.arange(0, BLOCK_H)[:, None]
    base = token_ptr + heads * stride_head                               # [H, 1]
    x1, x2, tail = _load_heads(base, heads < num_heads, offs_half, half, offs_tail, tail_len)
    x1, x2, tail = _norm_rotate(x1, x2, tail, cos, sin, weight_ptr, eps, offs_half, half,
                                offs_tail, tail_len, head_dim, QK_NORM)
    _store_heads(base, heads < num_heads, offs_half, half, offs_tail, tail_len, x1, x2, tail,
                 QK_NORM)


@triton.jit
def _rotate_key_into_cache(key_ptr, stride_key_head, value_ptr, stride_value_head, k_cache_ptr,
                           v_cache_ptr, slot, stride_cache_block, stride_cache_slot,
                           stride_cache_head, num_kv_heads, cos, sin, weight_ptr, eps, k_scale,
                           v_scale, offs_half, half, offs_tail, tail_len, head_dim,
                           BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr,
                           BLOCK_SIZE: tl.constexpr, QK_NORM: tl.constexpr,
                           FP8_MAX: tl.constexpr):
    """Norm (QK_NORM) and rotate the key heads of one token and store them, and its value
    heads, at ``slot`` of the caches (nothing for a negative slot); the key stays as it was."""
    heads = tl.arange(0, BLOCK_H)[:, None]
    head_mask = (heads < num_kv_heads) & (heads * 0 + slot >= 0)         # [H, 1]
    x1, x2, tail = _load_heads(key_ptr + heads * stride_key_head, head_mask, offs_half, half,
                               offs_tail, tail_len)
    x1, x2, tail = _norm_rotate(x1, x2, tail, cos, sin, weight_ptr, eps, offs_half, half,
                                offs_tail, tail_len, head_dim, QK_NORM)
    offset = ((slot // BLOCK_SIZE) * stride_cache_block + (slot % BLOCK_SIZE) * stride_cache_slot
              + heads * stride_cache_head)                               # [H, 1]
    _store_heads(k_cache_ptr + offset, head_mask, offs_half, half, offs_tail, tail_len,
                 _to_cache_dtype(x1, k_scale, k_cache_ptr, FP8_MAX),
                 _to_cache_dtype(x2, k_scale, k_cache_ptr, FP8_MAX),
                 _to_cache_dtype(tail, k_scale, k_cache_ptr, FP8_MAX), True)
    dims = tl.arange(0, BLOCK_D)[None, :]
    value_mask = head_mask & (dims < head_dim)
    value = tl.load(value_ptr + heads * stride_value_head + dims, mask=value_mask)
    tl.store(v_cache_ptr + offset + dims, _to_cache_dtype(value, v_scale, v_cache_ptr, FP8_MAX),
             mask=value_mask)


@triton.jit
def _to_cache_dtype(x, scale, cache_ptr, FP8_MAX: tl.constexpr):
    """x in the cache's dtype; FP8_MAX > 0: ``x / scale`` saturated first (an fp8 cache)."""
    if FP8_MAX > 0:
        x = tl.clamp(x.to(tl.float32) / scale, -FP8_MAX, FP8_MAX)
    return x.to(cache_ptr.dtype.element_ty)


@triton.jit
def _rotary_kernel(
        q_ptr, k_ptr, v_ptr, positions_ptr, cos_sin_ptr, k_cache_ptr, v_cache_ptr,
        slot_mapping_ptr, q_norm_ptr, k_norm_ptr, eps, k_scale, v_scale,
        stride_q_token, stride_q_head, stride_k_token, stride_k_head,
        stride_v_token, stride_v_head, stride_cos_sin,
        stride_cache_block, stride_cache_slot, stride_cache_head,
        num_q_heads, num_kv_heads, head_dim, half,
        BLOCK_HQ: tl.constexpr, BLOCK_HK: tl.constexpr, BLOCK_HALF: tl.constexpr,
        BLOCK_TAIL: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_SIZE: tl.constexpr,
        QK_NORM: tl.constexpr, WRITE_CACHE: tl.constexpr, FP8_MAX: tl.constexpr):
    """Program (token, 0): the token's q heads, in place. Program (token, 1): its k heads,
    in place, or (WRITE_CACHE) into the cache with its v heads; a negative slot (padding)
    writes nothing."""
    token = tl.program_id(0).to(tl.int64)
    position = tl.load(positions_ptr + token).to(tl.int64)
    offs_half = tl.arange(0, BLOCK_HALF)
    offs_tail = tl.arange(0, BLOCK_TAIL)
    tail_len = head_dim - 2 * half
    cos = tl.load(cos_sin_ptr + position * stride_cos_sin + offs_half, mask=offs_half < half,
                  other=0.0)[None, :]
    sin = tl.load(cos_sin_ptr + position * stride_cos_sin + half + offs_half,
                  mask=offs_half < half, other=0.0)[None, :]
    if tl.program_id(1) == 0:
        _rotate_in_place(q_ptr + token * stride_q_token, stride_q_head, num_q_heads, cos, sin,
                         q_norm_ptr, eps, offs_half, half, offs_tail, tail_len, head_dim,
                         BLOCK_HQ, QK_NORM)
    elif WRITE_CACHE:
        _rotate_key_into_cache(
            k_ptr + token * stride_k_token, stride_k_head, v_ptr + token * stride_v_token,
            stride_v_head, k_cache_ptr, v_cache_ptr, tl.load(slot_mapping_ptr + token).to(tl.int64),
            stride_cache_block, stride_cache_slot, stride_cache_head, num_kv_heads, cos, sin,
            k_norm_ptr, eps, k_scale, v_scale, offs_half, half, offs_tail, tail_len, head_dim,
            BLOCK_HK, BLOCK_D, BLOCK_SIZE, QK_NORM, FP8_MAX)
    else:
        _rotate_in_place(k_ptr + token * stride_k_token, stride_k_head, num_kv_heads, cos, sin,
                         k_norm_ptr, eps, offs_half, half, offs_tail, tail_len, head_dim,
                         BLOCK_HK, QK_NORM)


def _check_heads(*tensors: torch.Tensor) -> None:
    for t in tensors:
        assert t.stride(-1) == 1, "head dims must be contiguous"


def _launch(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor | None,
            positions: torch.Tensor, cos_sin_cache: torch.Tensor,
            kv_cache: torch.Tensor | None, slot_mapping: torch.Tensor | None,
            q_norm_weight: torch.Tensor | None, k_norm_weight: torch.Tensor | None, eps: float,
            k_scale: float, v_scale: float) -> None:
    """One launch of ``_rotary_kernel`` over ``query.shape[0]`` tokens (none when empty)."""
    num_tokens, num_heads, head_dim = query.shape
    half = cos_sin_cache.shape[-1] // 2
    if num_tokens == 0:
        return
    write_cache = kv_cache is not None
    cache = (kv_cache[0], kv_cache[1]) if write_cache else (None, None)
    cache_strides = kv_cache.stride()[1:4] if write_cache else (0, 0, 0)
    fp8_max = torch.finfo(kv_cache.dtype).max if write_cache and is_fp8(kv_cache.dtype) else 0.0
    tail = head_dim - 2 * half
    _rotary_kernel[(num_tokens, 2)](
        query, key, value, positions, cos_sin_cache, *cache, slot_mapping, q_norm_weight,
        k_norm_weight, float(eps), float(k_scale), float(v_scale),
        query.stride(0), query.stride(1), key.stride(0), key.stride(1),
        *(value.stride()[:2] if value is not None else (0, 0)), cos_sin_cache.stride(0),
        *cache_strides, num_heads, key.shape[1], head_dim, half,
        BLOCK_HQ=triton.next_power_of_2(num_heads), BLOCK_HK=triton.next_power_of_2(key.shape[1]),
        BLOCK_HALF=triton.next_power_of_2(half),
        BLOCK_TAIL=triton.next_power_of_2(tail) if tail else 1,
        BLOCK_D=triton.next_power_of_2(head_dim),
        BLOCK_SIZE=kv_cache.shape[2] if write_cache else 1, QK_NORM=q_norm_weight is not None,
        WRITE_CACHE=write_cache, FP8_MAX=fp8_max, num_warps=4)


def apply_rotary_triton_(query: torch.Tensor, key: torch.Tensor, positions: torch.Tensor,
                         cos_sin_cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate query and key in place; returns them.

    query: [T, num_heads, head_dim], key: [T, num_kv_heads, head_dim] (views of a fused QKV
    output are fine: the last dim must be contiguous); positions: [T] int64;
    cos_sin_cache: [max_position, rotary_dim] float32 (cos | sin), rotary_dim <= head_dim.
    """
    _check_heads(query, key)
    _launch(query, key, None, positions, cos_sin_cache, None, None, None, None, 0.0, 1.0, 1.0)
    return query, key


def qk_norm_rotary_and_cache_triton_(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                                     positions: torch.Tensor, cos_sin_cache: torch.Tensor,
                                     kv_cache: torch.Tensor, slot_mapping: torch.Tensor,
                                     k_scale: float = 1.0, v_scale: float = 1.0,
                                     q_norm_weight: torch.Tensor | None = None,
                                     k_norm_weight: torch.Tensor | None = None,
                                     eps: float = 0.0) -> torch.Tensor:
    """Norm (with ``q_norm_weight``/``k_norm_weight``) and rotate query in place, and store
    the normed, rotated key and the value into ``kv_cache`` at ``slot_mapping``, in one
    launch. Returns ``query``. Mutates ``query`` and ``kv_cache``; ``key`` and ``value`` are
    left as they were (the rotated key exists only in the cache).

    Shapes and dtypes as the twin ``pagellm.ops.rotary.qk_norm_rotary_and_cache``: query
    [T, num_heads, head_dim], key/value [T, num_kv_heads, head_dim] (views of a fused QKV
    output are fine: last dims contiguous); positions [T] int64; cos_sin_cache
    [max_position, rotary_dim] float32; kv_cache [2, num_blocks, block_size, num_kv_heads,
    head_dim] contiguous in its last dim, the query's dtype or fp8 (K / k_scale, V / v_scale,
    saturated); norm weights [head_dim] contiguous in the query's dtype, both or neither.
    Unlike the twin, a negative slot (padding) writes nothing.
    """
    _check_heads(query, key, value, kv_cache)
    assert (q_norm_weight is None) == (k_norm_weight is None), "q_norm and k_norm go together"
    _launch(query, key, value, positions, cos_sin_cache, kv_cache, slot_mapping, q_norm_weight,
            k_norm_weight, eps, k_scale, v_scale)
    return query
