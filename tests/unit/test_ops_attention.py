import pytest
import torch

from pagellm.layers.attention import TorchAttentionBackend, get_attn_backend
from pagellm.ops.attention import gather_context, write_kv_cache
from pagellm.platforms import current_platform
from tests.helpers.paged import build_attn_metadata, random_block_tables

NUM_HEADS, NUM_KV_HEADS, HEAD_DIM = 4, 2, 16


def dense_causal_reference(query, key, value, scale):
    """query: [q_len, H, D] = the last q_len positions of key/value [kv_len, KVH, D]; float64."""
    q_len, kv_len = query.shape[0], key.shape[0]
    groups = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(groups, 1).double(), value.repeat_interleave(groups, 1).double()
    scores = torch.einsum("qhd,khd->hqk", query.double(), key) * scale
    query_pos = torch.arange(kv_len - q_len, kv_len)[:, None]
    scores = scores.masked_fill(torch.arange(kv_len)[None, :] > query_pos, float("-inf"))
    return torch.einsum("hqk,khd->qhd", scores.softmax(-1), value).to(query.dtype)


def run_case(query_lens, seq_lens, block_size, num_blocks=64, seed=0, dtype=torch.float32):
    """Fill each request's cached prefix, run the backend on the new tokens, compare every
    request with dense causal attention over its full context."""
    gen = torch.Generator().manual_seed(seed)
    tables = random_block_tables(seq_lens, block_size, num_blocks, gen)
    kv_cache = torch.randn(2, num_blocks, block_size, NUM_KV_HEADS, HEAD_DIM, generator=gen).to(dtype)
    full_k = [torch.randn(s, NUM_KV_HEADS, HEAD_DIM, generator=gen).to(dtype) for s in seq_lens]
    full_v = [torch.randn(s, NUM_KV_HEADS, HEAD_DIM, generator=gen).to(dtype) for s in seq_lens]
    # Cached prefixes go in first, through a prefill-only metadata of just those tokens.
    prefix_lens = [s - q for q, s in zip(query_lens, seq_lens)]
    cached = [i for i, p in enumerate(prefix_lens) if p > 0]
    if cached:
        cached_lens = [prefix_lens[i] for i in cached]
        cached_tables = [tables[i] for i in cached]
        prefix_meta = build_attn_metadata(cached_lens, cached_lens, cached_tables, block_size)
        write_kv_cache(torch.cat([full_k[i][:prefix_lens[i]] for i in cached]),
                       torch.cat([full_v[i][:prefix_lens[i]] for i in cached]),
                       kv_cache, prefix_meta.slot_mapping)
    meta = build_attn_metadata(query_lens, seq_lens, tables, block_size)
    query = torch.randn(sum(query_lens), NUM_HEADS, HEAD_DIM, generator=gen).to(dtype)
    key = torch.cat([k[p:] for k, p in zip(full_k, prefix_lens)])
    value = torch.cat([v[p:] for v, p in zip(full_v, prefix_lens)])
    out = TorchAttentionBackend().forward(query, key, value, kv_cache, meta, HEAD_DIM ** -0.5)
    assert out.shape == query.shape and out.dtype == dtype
    for i in range(len(query_lens)):
        start, end = meta.query_start_loc_cpu[i], meta.query_start_loc_cpu[i + 1]
        expected = dense_causal_reference(query[start:end], full_k[i], full_v[i], HEAD_DIM ** -0.5)
        tol = 1e-5 if dtype == torch.float32 else 2e-2
        torch.testing.assert_close(out[start:end], expected, atol=tol, rtol=tol)
    for i in range(len(seq_lens)):  # the cache now holds every request's whole context
        for cache, full in ((kv_cache[0], full_k[i]), (kv_cache[1], full_v[i])):
            torch.testing.assert_close(gather_context(cache, meta.block_tables[i], seq_lens[i]), full)


@pytest.mark.parametrize("block_size", [1, 4, 16])
def test_prefill_only(block_size):
    run_case([5, 16, 1, 33], [5, 16, 1, 33], block_size, num_blocks=128)


@pytest.mark.parametrize("block_size", [4, 16])
def test_all_decode_uses_batched_path(block_size):
    # seq lens on, just before and just after block boundaries
    run_case([1] * 6, [1, 4, 5, 16, 17, 40], block_size, num_blocks=64)


def test_mixed_prefill_on_cached_prefix_and_decodes():
    run_case([1, 7, 1, 12, 3], [9, 20, 1, 12, 35], block_size=4, num_blocks=64)


def test_chunk_ending_on_block_boundary():
    run_case([8, 4], [16, 12], block_size=8, num_blocks=16)


def test_bfloat16_cache():
    run_case([1, 6, 1], [10, 6, 23], block_size=4, dtype=torch.bfloat16)


def test_no_cache_is_causal_per_request():
    gen = torch.Generator().manual_seed(1)
    query_lens = [3, 7]
    meta = build_attn_metadata(query_lens, query_lens, [[0], [1, 2]], block_size=4)
    query = torch.randn(10, NUM_HEADS, HEAD_DIM, generator=gen)
    key = torch.randn(10, NUM_KV_HEADS, HEAD_DIM, generator=gen)
    value = torch.randn(10, NUM_KV_HEADS, HEAD_DIM, generator=gen)
    out = TorchAttentionBackend().forward(query, key, value, None, meta, 0.25)
    torch.testing.assert_close(out[:3], dense_causal_reference(query[:3], key[:3], value[:3], 0.25))
    torch.testing.assert_close(out[3:], dense_causal_reference(query[3:], key[3:], value[3:], 0.25))


def test_write_kv_cache_touches_only_given_slots():
    kv_cache = torch.zeros(2, 4, 2, 1, 3)
    key, value = torch.ones(2, 1, 3), 2 * torch.ones(2, 1, 3)
    write_kv_cache(key, value, kv_cache, torch.tensor([5, 0]))
    written = kv_cache.view(2, 8, 3)
    assert written[0, 5].eq(1).all() and written[0, 0].eq(1).all() and written[1, 5].eq(2).all()
    assert written[:, [1, 2, 3, 4, 6, 7]].eq(0).all()


def test_get_attn_backend_on_cpu_is_torch():
    assert isinstance(get_attn_backend(current_platform("cpu")), TorchAttentionBackend)


@pytest.mark.parametrize("seed", range(4))
def test_random_mixed_batches(seed):
    gen = torch.Generator().manual_seed(100 + seed)
    num_reqs = int(torch.randint(1, 7, (1,), generator=gen))
    seq_lens = torch.randint(1, 50, (num_reqs,), generator=gen).tolist()
    query_lens = [int(torch.randint(1, s + 1, (1,), generator=gen)) for s in seq_lens]
    block_size = [2, 4, 8][seed % 3]
    run_case(query_lens, seq_lens, block_size, num_blocks=160, seed=seed)
