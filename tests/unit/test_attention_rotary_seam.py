"""The attention layer given its rotary (and Qwen3's q/k norms) on the torch backend: one
``rotary_and_cache`` op before attention gives the bits the modules gave run one by one before
the seam existed (norms, rotary, then the backend's own KV write), for every cache the layer
meets; the backend does not write K/V again after it."""

from __future__ import annotations

import pytest
import torch

from pagellm.layers.attention import Attention, TorchAttentionBackend
from pagellm.layers.norm import RMSNorm
from pagellm.layers.rotary import RotaryEmbedding
from tests.helpers.paged import build_attn_metadata, positions_for, random_block_tables

NUM_HEADS, NUM_KV_HEADS, HEAD_DIM = 6, 2, 16
QUERY_LENS, SEQ_LENS = [1, 5, 1], [9, 5, 14]          # decode, prefill, decode


def _layer_inputs(qk_norm: bool, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    meta = build_attn_metadata(QUERY_LENS, SEQ_LENS, random_block_tables(SEQ_LENS, 4, 12, gen), 4)
    qkv = torch.randn(meta.num_tokens, (NUM_HEADS + 2 * NUM_KV_HEADS) * HEAD_DIM, generator=gen)
    kv_size = NUM_KV_HEADS * HEAD_DIM
    q, k, v = qkv.split([NUM_HEADS * HEAD_DIM, kv_size, kv_size], -1)
    norms = [RMSNorm(HEAD_DIM, 1e-6) for _ in range(2)] if qk_norm else [None, None]
    for norm in norms if qk_norm else ():
        norm.weight.data.copy_(1 + 0.3 * torch.randn(HEAD_DIM, generator=gen))
    cache = torch.randn(2, 12, 4, NUM_KV_HEADS, HEAD_DIM, generator=gen)
    return (q.reshape(-1, NUM_HEADS, HEAD_DIM), k.reshape(-1, NUM_KV_HEADS, HEAD_DIM),
            v.reshape(-1, NUM_KV_HEADS, HEAD_DIM), cache, meta, norms)


@pytest.mark.parametrize("cache_dtype", [torch.float32, torch.float8_e4m3fn, None])
@pytest.mark.parametrize("qk_norm", [True, False])
@torch.inference_mode()
def test_fused_seam_gives_the_module_path_bits(qk_norm, cache_dtype):
    query, key, value, cache, meta, (q_norm, k_norm) = _layer_inputs(qk_norm)
    cache = None if cache_dtype is None else cache.to(cache_dtype)
    positions = positions_for(QUERY_LENS, SEQ_LENS)
    rotary = RotaryEmbedding(HEAD_DIM, 64, 10000.0)
    layer = Attention(NUM_HEADS, NUM_KV_HEADS, HEAD_DIM, HEAD_DIM ** -0.5, TorchAttentionBackend())
    layer.k_scale, layer.v_scale = 0.5, 2.0
    seam_cache = None if cache is None else cache.clone()
    out = layer(query, key, value, seam_cache, meta, positions, rotary, q_norm, k_norm)

    q, k = (q_norm(query), k_norm(key)) if qk_norm else (query, key)
    q, k = rotary(positions, q, k)
    module_cache = None if cache is None else cache.clone()
    expected = layer(q, k, value, module_cache, meta)            # no rotary given: as before
    assert torch.equal(out, expected)
    if cache is not None:
        assert torch.equal(seam_cache.view(torch.uint8), module_cache.view(torch.uint8))
        assert not torch.equal(seam_cache.view(torch.uint8), cache.view(torch.uint8))


@torch.inference_mode()
def test_backend_does_not_write_what_is_already_written():
    query, key, value, cache, meta, _ = _layer_inputs(False)
    before = cache.clone()
    backend = TorchAttentionBackend()
    backend.forward(query, key.fill_(float("nan")), value, cache, meta, 0.25, kv_written=True)
    assert torch.equal(cache, before)
    backend.forward(query, key, value, cache, meta, 0.25)
    assert cache.isnan().any()                       # the same call without it writes
