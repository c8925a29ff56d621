"""Paged attention in plain torch: the CPU path and the oracle for the GPU kernels.

The KV cache of one layer is ``[2, num_blocks, block_size, num_kv_heads, head_dim]``
(0 = keys, 1 = values). Token t of request i lives in block ``block_tables[i, t // block_size]``
at offset ``t % block_size``; its flat slot is ``block * block_size + offset``.

An fp8 cache (``float8_e4m3fn`` / ``float8_e5m2``, ``kv_cache_dtype="fp8*"``) holds
``key / k_scale`` and ``value / v_scale``, saturated to the format's finite range (vLLM's
convention). Readers dequantize by casting gathered blocks to the query's dtype and folding
``k_scale`` into the softmax scale and ``v_scale`` into the output.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pagellm.ops.batch_invariant import batch_invariant, attend_per_token


FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)


def is_fp8(dtype: torch.dtype) -> bool:
    return dtype in FP8_DTYPES


def quantize_fp8(x: torch.Tensor, scale: float, dtype: torch.dtype) -> torch.Tensor:
    """``x / scale`` saturated to ``dtype``'s finite range and cast (same shape)."""
    limit = torch.finfo(dtype).max
    return (x.float() / scale).clamp_(-limit, limit).to(dtype)


def write_kv_cache(key: torch.Tensor, value: torch.Tensor, kv_cache: torch.Tensor,
                   slot_mapping: torch.Tensor, k_scale: float = 1.0, v_scale: float = 1.0) -> None:
    """Store each new token's K and V at its slot. Mutates ``kv_cache`` in place.

    key, value: [num_tokens, num_kv_heads, head_dim]; slot_mapping: [num_tokens] int64, every
    entry a valid slot in ``[0, num_blocks * block_size)`` (padding tokens must point at a
    scratch slot, not -1). ``k_scale``/``v_scale`` divide K/V before an fp8 cache stores them
    (ignored by other caches).
    """
    num_kv_heads, head_dim = kv_cache.shape[-2:]
    if is_fp8(kv_cache.dtype):
        # index_copy_ has no fp8 kernel on CPU: copy the bytes.
        key = quantize_fp8(key, k_scale, kv_cache.dtype).view(torch.uint8)
        value = quantize_fp8(value, v_scale, kv_cache.dtype).view(torch.uint8)
        kv_cache = kv_cache.view(torch.uint8)
    # [num_blocks * block_size, num_kv_heads, head_dim]
    key_slots = kv_cache[0].view(-1, num_kv_heads, head_dim)
    value_slots = kv_cache[1].view(-1, num_kv_heads, head_dim)
    key_slots.index_copy_(0, slot_mapping, key.to(kv_cache.dtype))
    value_slots.index_copy_(0, slot_mapping, value.to(kv_cache.dtype))


def dequantize_kv_cache(kv_cache: torch.Tensor, dtype: torch.dtype, k_scale: float = 1.0,
                        v_scale: float = 1.0) -> torch.Tensor:
    """The whole cache in ``dtype`` with scales applied: the oracle for the fp8 readers.
    [2, num_blocks, block_size, num_kv_heads, head_dim] -> same shape, new tensor."""
    if not is_fp8(kv_cache.dtype):
        return kv_cache.to(dtype)
    return torch.stack([kv_cache[0].to(dtype) * k_scale, kv_cache[1].to(dtype) * v_scale])


def gather_context(cache: torch.Tensor, block_table: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """The first ``num_tokens`` entries of one request from a K or V cache.

    cache: [num_blocks, block_size, num_kv_heads, head_dim]; block_table: [>= ceil(num_tokens /
    block_size)] int. Returns [num_tokens, num_kv_heads, head_dim].
    """
    block_size = cache.shape[1]
    num_blocks = -(-num_tokens // block_size)
    # [num_blocks, block_size, num_kv_heads, head_dim]
    blocks = cache.index_select(0, block_table[:num_blocks].long())
    return blocks.flatten(0, 1)[:num_tokens]


def _sdpa(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None,
          scale: float, is_causal: bool = False) -> torch.Tensor:
    """SDPA over head-major tensors with GQA. query: [batch, num_heads, q_len, head_dim];
    key, value: [batch, num_kv_heads, kv_len, head_dim]; mask: bool, True = attend."""
    # enable_gqa pairs query head h with KV head h // (num_heads // num_kv_heads), as
    # repeat_interleave would, without materialising the repeated K/V (10-30% faster on CPU).
    return F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scale,
                                          is_causal=is_causal,
                                          enable_gqa=query.shape[1] != key.shape[1])


def causal_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     scale: float) -> torch.Tensor:
    """One request whose query is the suffix of its context: query token j sits at position
    ``kv_len - q_len + j`` and sees keys 0..that position.

    query: [q_len, num_heads, head_dim]; key, value: [kv_len, num_kv_heads, head_dim].
    Returns [q_len, num_heads, head_dim].
    """
    q_len, kv_len = query.shape[0], key.shape[0]
    mask = None
    if q_len > 1 and q_len != kv_len:
        query_pos = torch.arange(kv_len - q_len, kv_len, device=query.device)
        key_pos = torch.arange(kv_len, device=query.device)
        mask = key_pos[None, :] <= query_pos[:, None]           # [q_len, kv_len]
    out = _sdpa(query.transpose(0, 1).unsqueeze(0), key.transpose(0, 1).unsqueeze(0),
                value.transpose(0, 1).unsqueeze(0), mask, scale,
                is_causal=(q_len > 1 and q_len == kv_len))            # [1, num_heads, q_len, head_dim]
    return out.squeeze(0).transpose(0, 1)


def paged_decode_attention(query: torch.Tensor, kv_cache: torch.Tensor, block_tables: torch.Tensor,
                           seq_lens: torch.Tensor, max_seq_len: int, scale: float,
                           k_scale: float = 1.0, v_scale: float = 1.0) -> torch.Tensor:
    """One new token per request, all requests in one masked SDPA.

    query: [num_reqs, num_heads, head_dim]; block_tables: [num_reqs, max_blocks] int;
    seq_lens: [num_reqs] int (context length including the new token); ``k_scale``/``v_scale``
    dequantize an fp8 cache (ignored otherwise). Returns [num_reqs, num_heads, head_dim].
    """
    fp8 = is_fp8(kv_cache.dtype)
    _, _, block_size, num_kv_heads, head_dim = kv_cache.shape
    num_blocks = -(-max_seq_len // block_size)
    table = block_tables[:, :num_blocks].long()                      # [num_reqs, num_blocks]

    def gather(cache: torch.Tensor) -> torch.Tensor:
        # index_select on the flat table: ~5x faster on CPU than advanced indexing cache[table]
        blocks = cache.index_select(0, table.flatten())  # [num_reqs * num_blocks, block_size, ...]
        # [num_reqs, max_seq_len, num_kv_heads, head_dim]
        padded = blocks.view(table.shape[0], -1, num_kv_heads, head_dim)[:, :max_seq_len]
        # [num_reqs, num_kv_heads, max_seq_len, head_dim]
        return padded.transpose(1, 2).to(query.dtype)

    num_reqs, num_heads, _ = query.shape
    key_pos = torch.arange(max_seq_len, device=query.device)
    valid = key_pos[None, :] < seq_lens[:, None]                    # [num_reqs, max_seq_len]
    # GQA without copying K/V per query head: the query heads that share a KV head become
    # that head's "query rows" (one token each, all under the same mask).
    grouped = query.view(num_reqs, num_kv_heads, num_heads // num_kv_heads, head_dim)
    out = F.scaled_dot_product_attention(
        grouped, gather(kv_cache[0]), gather(kv_cache[1]), attn_mask=valid[:, None, None, :],
        scale=scale * k_scale if fp8 else scale)      # [num_reqs, num_kv_heads, groups, head_dim]
    if fp8 and v_scale != 1.0:
        out = out * v_scale
    return out.reshape(num_reqs, num_heads, head_dim)


PER_TOKEN_MAX_QUERY_LEN = 16
"""A request with at most 16 query tokens (a decode step outside a batched decode, a
speculative verify of k <= 15 drafts, or a short prefill chunk) attends token by token
(``attend_per_token``): SDPA's CPU kernel rounds a query row differently with other rows in
the call, and this keeps a verify's logits bit-identical to batch-1 decoding, so greedy
speculation returns the same tokens (benchmarks/RESULTS.md, "batch invariance"). Longer
queries (prefills) take one causal call; a batch of decodes only takes one padded call."""


def paged_attention_torch(query: torch.Tensor, kv_cache: torch.Tensor, block_tables: torch.Tensor,
                          seq_lens: torch.Tensor, query_start_loc_cpu: list[int],
                          seq_lens_cpu: list[int], scale: float, k_scale: float = 1.0,
                          v_scale: float = 1.0) -> torch.Tensor:
    """Causal attention of a flattened batch against a paged cache that already holds the
    batch's own K/V. Reads ``kv_cache`` only.

    query: [num_tokens, num_heads, head_dim], request i owning rows
    ``query_start_loc_cpu[i]:query_start_loc_cpu[i+1]``, which are the last positions of its
    ``seq_lens_cpu[i]`` context tokens. ``k_scale``/``v_scale`` dequantize an fp8 cache
    (ignored otherwise). Returns [num_tokens, num_heads, head_dim].
    """
    num_reqs = len(seq_lens_cpu)
    strict = batch_invariant()  # PAGELLM_BATCH_INVARIANT: every token attends on its own
    if query.shape[0] == num_reqs and num_reqs > 1 and not strict:  # one new token each
        return paged_decode_attention(query, kv_cache, block_tables, seq_lens,
                                      max(seq_lens_cpu), scale, k_scale, v_scale)
    fp8 = is_fp8(kv_cache.dtype)
    output = torch.empty_like(query)
    for i in range(num_reqs):
        start, end = query_start_loc_cpu[i], query_start_loc_cpu[i + 1]
        if strict or end - start <= PER_TOKEN_MAX_QUERY_LEN:
            # a decode step, a speculative verify or a short chunk: token by token
            output[start:end] = attend_per_token(query[start:end], kv_cache, block_tables[i],
                                                 seq_lens_cpu[i], scale, k_scale, v_scale)
            continue
        # [seq_len, num_kv_heads, head_dim]
        key = gather_context(kv_cache[0], block_tables[i], seq_lens_cpu[i]).to(query.dtype)
        value = gather_context(kv_cache[1], block_tables[i], seq_lens_cpu[i]).to(query.dtype)
        out = causal_attention(query[start:end], key, value, scale * k_scale if fp8 else scale)
        output[start:end] = out * v_scale if fp8 and v_scale != 1.0 else out
    return output


def varlen_causal_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                            query_start_loc_cpu: list[int], scale: float) -> torch.Tensor:
    """Causal attention without a cache (e.g. a memory-profiling run): each request's new
    tokens are its whole context. query: [num_tokens, num_heads, head_dim]; key, value:
    [num_tokens, num_kv_heads, head_dim]. Returns [num_tokens, num_heads, head_dim]."""
    output = torch.empty_like(query)
    for start, end in zip(query_start_loc_cpu[:-1], query_start_loc_cpu[1:]):
        output[start:end] = causal_attention(query[start:end], key[start:end], value[start:end], scale)
    return output
