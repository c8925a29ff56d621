"""Triton kernel vs torch twin on fresh random inputs, for any device.

Used by tests/gpu (CUDA, half precision) and tests/unit/test_triton_interpret.py (CPU under
TRITON_INTERPRET=1, float32). Every check poisons the Triton output with NaN first, so a row
the kernel fails to write shows up as a failure, and returns the relative error
``‖out − ref‖ / ‖ref‖`` against the twin computed in float32.
"""

from __future__ import annotations

import torch

from pagellm.layers.attention import TorchAttentionBackend, TritonAttentionBackend
from pagellm.ops.activation import silu_and_mul
from pagellm.ops.attention import (dequantize_kv_cache, paged_attention_torch, quantize_fp8,
                                   write_kv_cache)
from pagellm.ops.norm import fused_add_rms_norm, rms_norm
from pagellm.ops.rotary import rope_cos_sin_cache, rope_inv_freq
from tests.helpers.paged import build_attn_metadata, random_block_tables


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """NaN anywhere in ``out`` (an unwritten poisoned row) gives inf."""
    if not torch.isfinite(out).all():
        return float("inf")
    return ((out.float() - ref.float()).norm() / ref.float().norm().clamp_min(1e-30)).item()


def random_paged_batch(query_lens: list[int], seq_lens: list[int], *, block_size: int,
                       num_heads: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype,
                       device: str, seed: int = 0):
    """A filled random cache (spare blocks included), its metadata and a query.
    Returns (query [T, H, D], kv_cache [2, B, block_size, KVH, D], metadata)."""
    gen = torch.Generator().manual_seed(seed)
    num_blocks = sum(-(-s // block_size) for s in seq_lens) + 7
    tables = random_block_tables(seq_lens, block_size, num_blocks, gen)
    meta = build_attn_metadata(query_lens, seq_lens, tables, block_size, device=device)
    kv_cache = torch.randn(2, num_blocks, block_size, num_kv_heads, head_dim, generator=gen)
    query = torch.randn(sum(query_lens), num_heads, head_dim, generator=gen)
    return query.to(device, dtype), kv_cache.to(device, dtype), meta


def check_paged_attention(query_lens: list[int], seq_lens: list[int], *, block_size: int = 16,
                          num_heads: int = 8, num_kv_heads: int = 2, head_dim: int = 64,
                          dtype: torch.dtype = torch.bfloat16, device: str = "cuda",
                          num_kv_splits: int | None = None, seed: int = 0,
                          kv_cache_dtype: torch.dtype | None = None, k_scale: float = 1.0,
                          v_scale: float = 1.0) -> float:
    """``kv_cache_dtype`` fp8: the cache holds K / k_scale, V / v_scale in fp8 and the twin
    runs on its float32 dequantization."""
    from pagellm.ops.triton.paged_attention import paged_attention_triton

    query, kv_cache, meta = random_paged_batch(
        query_lens, seq_lens, block_size=block_size, num_heads=num_heads,
        num_kv_heads=num_kv_heads, head_dim=head_dim, dtype=dtype, device=device, seed=seed)
    if kv_cache_dtype is not None:
        kv_cache = torch.stack([quantize_fp8(kv_cache[0] * 3, k_scale, kv_cache_dtype),
                                quantize_fp8(kv_cache[1] * 3, v_scale, kv_cache_dtype)])
    scale = head_dim ** -0.5
    ref = paged_attention_torch(query.float(), dequantize_kv_cache(kv_cache, torch.float32, k_scale,
                                                                   v_scale),
                                meta.block_tables, meta.seq_lens, meta.query_start_loc_cpu,
                                meta.seq_lens_cpu, scale)
    out = torch.full_like(query, float("nan"))
    paged_attention_triton(query, kv_cache, meta.block_tables, meta.query_start_loc, meta.seq_lens,
                           scale, max_query_len=meta.max_query_len, max_seq_len=meta.max_seq_len,
                           num_kv_splits=num_kv_splits, out=out, k_scale=k_scale, v_scale=v_scale)
    return relative_error(out, ref)


def check_write_kv_cache(num_tokens: int, *, block_size: int = 16, num_kv_heads: int = 4,
                         head_dim: int = 64, dtype: torch.dtype = torch.bfloat16,
                         device: str = "cuda", seed: int = 0, k_scale: float = 1.0,
                         v_scale: float = 1.0, fp8_representable: bool = False) -> bool:
    """Triton and torch writes into NaN-poisoned caches agree bit for bit (NaN where unwritten);
    the key/value come in float32 to check the cast too (times 100 for an fp8 cache, so that
    some saturate). ``fp8_representable``: K/V already on the fp8 grid (times the scale) so that
    no rounding happens: Triton's interpreter rounds fp32 -> fp8 wrongly (31.0 -> 16.0)."""
    from pagellm.ops.triton.kv_cache import write_kv_cache_triton

    gen = torch.Generator().manual_seed(seed)
    num_blocks = -(-num_tokens // block_size) + 3
    slots = torch.randperm(num_blocks * block_size, generator=gen)[:num_tokens].to(device)
    key = torch.randn(num_tokens, num_kv_heads, head_dim, generator=gen).to(device)
    value = torch.randn(num_tokens, num_kv_heads, head_dim, generator=gen).to(device)
    cache = torch.full((2, num_blocks, block_size, num_kv_heads, head_dim), float("nan"),
                       device=device).to(dtype)
    if cache.element_size() == 1:
        key, value = key * 100, value * 100
        if fp8_representable:
            key = quantize_fp8(key, k_scale, dtype).float() * k_scale
            value = quantize_fp8(value, v_scale, dtype).float() * v_scale
    expected = cache.clone()
    write_kv_cache(key, value, expected, slots, k_scale, v_scale)
    write_kv_cache_triton(key, value, cache, slots, k_scale, v_scale)
    if cache.element_size() == 1:      # fp8: compare the bytes (NaN patterns included)
        return torch.equal(cache.view(torch.uint8), expected.view(torch.uint8))
    return torch.equal(cache.isnan(), expected.isnan()) and torch.equal(
        cache.nan_to_num(), expected.nan_to_num())


def check_rms_norm(num_rows: int, hidden: int, *, dtype: torch.dtype = torch.bfloat16,
                   device: str = "cuda", seed: int = 0) -> tuple[float, float, float]:
    """(plain norm error, fused norm error, fused residual error); inputs must stay unmutated."""
    from pagellm.ops.triton.norm import fused_add_rms_norm_triton, rms_norm_triton

    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(num_rows, hidden, generator=gen) * 3).to(device, dtype)
    residual = torch.randn(num_rows, hidden, generator=gen).to(device, dtype)
    weight = (1 + 0.1 * torch.randn(hidden, generator=gen)).to(device, dtype)
    x_before, residual_before = x.clone(), residual.clone()
    out = torch.full_like(x, float("nan"))
    rms_norm_triton(x, weight, 1e-6, out=out)
    plain_error = relative_error(out, rms_norm(x.float(), weight.float(), 1e-6))
    fused_out, new_residual = torch.full_like(x, float("nan")), torch.full_like(x, float("nan"))
    fused_add_rms_norm_triton(x, residual, weight, 1e-6, out=fused_out, residual_out=new_residual)
    ref_out, ref_residual = fused_add_rms_norm(x, residual, weight, 1e-6)   # same dtype: exact sum
    assert torch.equal(x, x_before) and torch.equal(residual, residual_before)
    return plain_error, relative_error(fused_out, ref_out), relative_error(new_residual, ref_residual)


def check_silu_and_mul(num_rows: int, d: int, *, dtype: torch.dtype = torch.bfloat16,
                       device: str = "cuda", seed: int = 0) -> float:
    from pagellm.ops.triton.activation import silu_and_mul_triton

    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(num_rows, 2 * d, generator=gen) * 2).to(device, dtype)
    out = torch.full((num_rows, d), float("nan"), dtype=dtype, device=device)
    silu_and_mul_triton(x, out=out)
    return relative_error(out, silu_and_mul(x.float()))


def check_backends_agree(query_lens: list[int], seq_lens: list[int], *, block_size: int = 16,
                         num_heads: int = 8, num_kv_heads: int = 2, head_dim: int = 64,
                         dtype: torch.dtype = torch.bfloat16, device: str = "cuda",
                         seed: int = 0, kv_cache_dtype: torch.dtype | None = None,
                         k_scale: float = 1.0, v_scale: float = 1.0) -> tuple[float, bool]:
    """Both backends' forward from the same cache and new K/V: (output error, caches equal).
    ``kv_cache_dtype`` fp8: an fp8 cache with those scales (bytes compared)."""
    query, kv_cache, meta = random_paged_batch(
        query_lens, seq_lens, block_size=block_size, num_heads=num_heads,
        num_kv_heads=num_kv_heads, head_dim=head_dim, dtype=dtype, device=device, seed=seed)
    if kv_cache_dtype is not None:
        kv_cache = kv_cache.to(kv_cache_dtype)
    gen = torch.Generator().manual_seed(seed + 1)
    key = torch.randn(meta.num_tokens, num_kv_heads, head_dim, generator=gen).to(device, dtype)
    value = torch.randn(meta.num_tokens, num_kv_heads, head_dim, generator=gen).to(device, dtype)
    torch_cache = kv_cache.clone()
    scales = (head_dim ** -0.5, k_scale, v_scale)
    ref = TorchAttentionBackend().forward(query, key, value, torch_cache, meta, *scales)
    out = TritonAttentionBackend().forward(query, key, value, kv_cache, meta, *scales)
    if kv_cache.element_size() == 1:
        kv_cache, torch_cache = kv_cache.view(torch.uint8), torch_cache.view(torch.uint8)
    return relative_error(out, ref), torch.equal(kv_cache, torch_cache)


def _qkv_views(num_tokens: int, num_heads: int, num_kv_heads: int, head_dim: int,
               dtype: torch.dtype, device: str, gen: torch.Generator):
    """q [T, H, D], k, v [T, KVH, D]: views of one fused QKV output, as the layer passes them."""
    sizes = [num_heads * head_dim, num_kv_heads * head_dim, num_kv_heads * head_dim]
    qkv = (torch.randn(num_tokens, sum(sizes), generator=gen) * 2).to(device, dtype)
    q, k, v = qkv.split(sizes, dim=-1)
    return (q.view(num_tokens, num_heads, head_dim), k.view(num_tokens, num_kv_heads, head_dim),
            v.view(num_tokens, num_kv_heads, head_dim))


def check_rotary_and_cache(num_tokens: int, *, num_heads: int, num_kv_heads: int, head_dim: int,
                           rotary_dim: int | None = None, qk_norm: bool = True,
                           num_padding: int = 0, block_size: int = 4,
                           dtype: torch.dtype = torch.bfloat16,
                           kv_cache_dtype: torch.dtype | None = None, k_scale: float = 1.0,
                           v_scale: float = 1.0, cache_oracle: str = "torch",
                           device: str = "cuda", seed: int = 0) -> tuple[float, float, bool]:
    """``qk_norm_rotary_and_cache_triton_`` vs its twin: (query error, cache error, rest
    intact). The last ``num_padding`` tokens have slot -1 (the kernel rotates their query and
    writes nothing; the twin gets only the other tokens). Caches start NaN-poisoned; "rest
    intact": key and value unchanged, and the cache's NaN pattern equals the twin's (every
    slot written, nothing else). The cache error compares the dequantized written caches.
    ``cache_oracle="triton"``: the twin's rotated key is stored by ``write_kv_cache_triton``
    instead of ``write_kv_cache`` (the interpreter rounds fp32 -> fp8 its own way)."""
    from pagellm.ops.rotary import apply_rotary, qk_norm_rotary_and_cache
    from pagellm.ops.triton.kv_cache import write_kv_cache_triton
    from pagellm.ops.triton.rotary import qk_norm_rotary_and_cache_triton_

    gen = torch.Generator().manual_seed(seed)
    q, k, v = _qkv_views(num_tokens, num_heads, num_kv_heads, head_dim, dtype, device, gen)
    cos_sin = rope_cos_sin_cache(rope_inv_freq(rotary_dim or head_dim, 10000.0), 4096).to(device)
    positions = torch.randint(0, 4096, (num_tokens,), generator=gen).to(device)
    num_blocks = -(-num_tokens // block_size) + 2
    slots = torch.randperm(num_blocks * block_size, generator=gen)[:num_tokens]
    slots[num_tokens - num_padding:] = -1
    slots = slots.to(device)
    weights = [(1 + 0.3 * torch.randn(head_dim, generator=gen)).to(device, dtype)
               for _ in range(2)] if qk_norm else [None, None]
    cache_dtype = kv_cache_dtype or dtype
    cache = torch.full((2, num_blocks, block_size, num_kv_heads, head_dim), float("nan"),
                       device=device).to(cache_dtype)
    expected = cache.clone()
    real = num_tokens - num_padding
    qk_norm_rotary_and_cache(q[:real], k[:real], v[:real], positions[:real], cos_sin, expected,
                             slots[:real], k_scale, v_scale, *weights, 1e-6)
    normed_q, normed_k = ((rms_norm(q, weights[0], 1e-6), rms_norm(k, weights[1], 1e-6))
                          if qk_norm else (q, k))
    ref_q, ref_k = apply_rotary(normed_q, normed_k, positions, cos_sin)
    if cache_oracle == "triton":              # the same rotated key, stored by the KV-write kernel
        write_kv_cache_triton(ref_k[:real], v[:real], expected, slots[:real], k_scale, v_scale)
    k_before, v_before = k.clone(), v.clone()
    out_q = qk_norm_rotary_and_cache_triton_(q, k, v, positions, cos_sin, cache, slots, k_scale,
                                             v_scale, *weights, 1e-6)
    assert out_q.data_ptr() == q.data_ptr()                          # in place
    intact = (torch.equal(k, k_before) and torch.equal(v, v_before)
              and torch.equal(cache.float().isnan(), expected.float().isnan()))
    scales = (k_scale, v_scale) if kv_cache_dtype is not None else (1.0, 1.0)
    cache_error = relative_error(dequantize_kv_cache(cache, torch.float32, *scales).nan_to_num(),
                                 dequantize_kv_cache(expected, torch.float32, *scales).nan_to_num())
    return relative_error(out_q, ref_q), cache_error, intact


def check_split_merge(seq_lens: list[int], num_kv_splits: int, *, num_heads: int = 8,
                      num_kv_heads: int = 2, head_dim: int = 64, block_size: int = 16,
                      dtype: torch.dtype = torch.bfloat16, device: str = "cuda",
                      kv_cache_dtype: torch.dtype | None = None, seed: int = 0,
                      ) -> tuple[bool, float]:
    """Split-KV decode merged in the split launch (ticket counters) vs the separate merge
    launch, into NaN-poisoned outputs, the merged path twice (the counters must be back at 0
    for the second run): (all three bit-identical and the counters all 0, error vs twin)."""
    from pagellm.ops.triton import paged_attention as pa

    query, kv_cache, meta = random_paged_batch(
        [1] * len(seq_lens), seq_lens, block_size=block_size, num_heads=num_heads,
        num_kv_heads=num_kv_heads, head_dim=head_dim, dtype=dtype, device=device, seed=seed)
    if kv_cache_dtype is not None:
        kv_cache = kv_cache.to(kv_cache_dtype)
    scale = head_dim ** -0.5
    outs = []
    for merge in (True, True, False):
        out = torch.full_like(query, float("nan"))
        pa.paged_attention_triton(query, kv_cache, meta.block_tables, meta.query_start_loc,
                                  meta.seq_lens, scale, max_query_len=1,
                                  max_seq_len=meta.max_seq_len, num_kv_splits=num_kv_splits,
                                  out=out, k_scale=0.5, v_scale=2.0, merge_in_split_kernel=merge)
        outs.append(out)
    fp8 = kv_cache_dtype is not None
    ref = paged_attention_torch(query.float(), dequantize_kv_cache(
        kv_cache, torch.float32, 0.5 if fp8 else 1.0, 2.0 if fp8 else 1.0),
        meta.block_tables, meta.seq_lens, meta.query_start_loc_cpu, meta.seq_lens_cpu, scale)
    counters_zero = all(int(c.abs().sum()) == 0 for c in pa._TICKET_COUNTERS.values())
    same = torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])
    return same and counters_zero, relative_error(outs[0], ref)


def check_layer_rotary_paths(query_lens: list[int], seq_lens: list[int], *, qk_norm: bool,
                             num_heads: int = 8, num_kv_heads: int = 2, head_dim: int = 64,
                             block_size: int = 16, dtype: torch.dtype = torch.bfloat16,
                             device: str = "cuda", seed: int = 0) -> tuple[float, float]:
    """The attention layer given the rotary (and q/k norms) on the Triton backend, fused
    (one launch before attention) and unfused (norm, rotary, KV-write launches), vs the torch
    backend on the same inputs: (fused error, unfused error) of the outputs; the fused and
    unfused caches must equal the torch one up to the same tolerance."""
    from pagellm.layers.attention import Attention
    from pagellm.layers.norm import RMSNorm
    from pagellm.layers.rotary import RotaryEmbedding

    query, kv_cache, meta = random_paged_batch(
        query_lens, seq_lens, block_size=block_size, num_heads=num_heads,
        num_kv_heads=num_kv_heads, head_dim=head_dim, dtype=dtype, device=device, seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    _, key, value = _qkv_views(meta.num_tokens, num_heads, num_kv_heads, head_dim, dtype, device,
                               gen)
    positions = torch.cat([torch.arange(s - q, s) for q, s in zip(query_lens, seq_lens)]).to(device)
    rotary = RotaryEmbedding(head_dim, 4096, 10000.0).to(device)
    norms = [RMSNorm(head_dim, 1e-6, dtype).to(device) for _ in range(2)] if qk_norm else [None] * 2
    for norm in norms if qk_norm else ():
        norm.weight.data.copy_(1 + 0.3 * torch.randn(head_dim, generator=gen))
    results = []
    for backend in (TorchAttentionBackend(), TritonAttentionBackend(True),
                    TritonAttentionBackend(False)):
        layer = Attention(num_heads, num_kv_heads, head_dim, head_dim ** -0.5, backend)
        cache = kv_cache.clone()
        with torch.inference_mode():                 # as the model runner runs layers
            out = layer(query.clone(), key.clone(), value.clone(), cache, meta, positions,
                        rotary, *norms)
        results.append((out, cache))
    (ref, ref_cache), fused, unfused = results
    for _, cache in (fused, unfused):
        assert relative_error(cache, ref_cache) < (1e-5 if dtype == torch.float32 else 1e-2)
    return relative_error(fused[0], ref), relative_error(unfused[0], ref)
