"""Triton kernels vs their torch twins on CUDA (bf16/fp16 relative error < 1e-2)."""

from __future__ import annotations

import pytest
import torch

from tests.gpu.kernel_cases import (check_backends_agree, check_paged_attention, check_rms_norm,
                                    check_silu_and_mul, check_write_kv_cache)

pytestmark = pytest.mark.gpu

HALF_DTYPES = [torch.bfloat16, torch.float16]
# (num_heads, num_kv_heads): GQA ratios 1, 4 and 8
HEAD_LAYOUTS = [(8, 8), (16, 4), (32, 4)]
TOLERANCE = 1e-2

MIXED_QUERY_LENS = [1, 37, 1, 128, 5, 1, 64]
MIXED_SEQ_LENS = [300, 37, 17, 700, 5, 1, 64]     # prefill, chunk on prefix, decodes


@pytest.mark.parametrize("dtype", HALF_DTYPES)
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("heads", HEAD_LAYOUTS)
def test_mixed_batch(heads, head_dim, dtype):
    error = check_paged_attention(MIXED_QUERY_LENS, MIXED_SEQ_LENS, num_heads=heads[0],
                                  num_kv_heads=heads[1], head_dim=head_dim, dtype=dtype)
    assert error < TOLERANCE


@pytest.mark.parametrize("dtype", HALF_DTYPES)
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("heads", HEAD_LAYOUTS)
def test_decode_batch(heads, head_dim, dtype):
    seq_lens = [1, 15, 16, 17, 31, 32, 33, 250, 1000]
    error = check_paged_attention([1] * len(seq_lens), seq_lens, num_heads=heads[0],
                                  num_kv_heads=heads[1], head_dim=head_dim, dtype=dtype)
    assert error < TOLERANCE


@pytest.mark.parametrize("block_size", [1, 5, 16, 32])
def test_block_boundaries(block_size):
    seq_lens = [block_size - 1 or 1, block_size, block_size + 1, 2 * block_size, 3 * block_size + 1]
    query_lens = [seq_lens[0], 1, block_size, 1, block_size + 1]   # prefill, decodes, chunks
    assert check_paged_attention(query_lens, seq_lens, block_size=block_size) < TOLERANCE
    assert check_paged_attention([1] * 5, seq_lens, block_size=block_size,
                                 num_kv_splits=3) < TOLERANCE


@pytest.mark.parametrize("dtype", HALF_DTYPES)
@pytest.mark.parametrize("heads", [(8, 8), (32, 8), (32, 4)])
@pytest.mark.parametrize("num_kv_splits", [None, 1])     # heuristic (split-KV here) vs unified
def test_long_context_decode(heads, dtype, num_kv_splits):
    seq_lens = [8192, 8000, 4097]
    error = check_paged_attention([1] * 3, seq_lens, num_heads=heads[0], num_kv_heads=heads[1],
                                  head_dim=128, dtype=dtype, num_kv_splits=num_kv_splits)
    assert error < TOLERANCE


def test_long_context_chunk_and_decodes():
    error = check_paged_attention([256, 1, 1], [8192, 8192, 3000], num_heads=32, num_kv_heads=8,
                                  head_dim=128)
    assert error < TOLERANCE


def test_odd_head_dim_and_split_counts():
    for num_kv_splits in (2, 7, 64):
        assert check_paged_attention([1] * 4, [100, 513, 2048, 9], head_dim=80,
                                     num_kv_splits=num_kv_splits) < TOLERANCE
    assert check_paged_attention([3, 40], [60, 40], head_dim=80) < TOLERANCE


def test_float32_is_tight():
    assert check_paged_attention(MIXED_QUERY_LENS, MIXED_SEQ_LENS, dtype=torch.float32) < 1e-5
    assert check_paged_attention([1, 1], [3000, 70], dtype=torch.float32,
                                 num_kv_splits=5) < 1e-5


@pytest.mark.parametrize("seed", range(6))
def test_random_mixed_batches(seed):
    gen = torch.Generator().manual_seed(seed)
    num_reqs = int(torch.randint(1, 20, (1,), generator=gen))
    seq_lens = torch.randint(1, 2000, (num_reqs,), generator=gen).tolist()
    query_lens = [int(torch.randint(1, s + 1, (1,), generator=gen)) if torch.rand(1, generator=gen) < 0.4
                  else 1 for s in seq_lens]
    heads = HEAD_LAYOUTS[seed % 3]
    error = check_paged_attention(query_lens, seq_lens, num_heads=heads[0], num_kv_heads=heads[1],
                                  block_size=[16, 32, 8][seed % 3], seed=seed)
    assert error < TOLERANCE


@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_backends_agree_and_write_same_cache(dtype):
    error, caches_equal = check_backends_agree(MIXED_QUERY_LENS, MIXED_SEQ_LENS, num_heads=32,
                                               num_kv_heads=8, head_dim=128, dtype=dtype)
    assert caches_equal and error < TOLERANCE


@pytest.mark.parametrize("dtype", HALF_DTYPES + [torch.float32])
@pytest.mark.parametrize("num_kv_heads,head_dim", [(1, 64), (8, 128), (3, 80)])
def test_write_kv_cache(num_kv_heads, head_dim, dtype):
    for num_tokens in (1, 17, 300):
        assert check_write_kv_cache(num_tokens, num_kv_heads=num_kv_heads, head_dim=head_dim,
                                    dtype=dtype)


@pytest.mark.parametrize("dtype", HALF_DTYPES)
@pytest.mark.parametrize("num_rows,hidden", [(1, 64), (37, 4096), (5, 5120), (3, 8192)])
def test_rms_norm(num_rows, hidden, dtype):
    plain_error, fused_error, residual_error = check_rms_norm(num_rows, hidden, dtype=dtype)
    assert plain_error < TOLERANCE and fused_error < TOLERANCE and residual_error == 0.0


@pytest.mark.parametrize("dtype", HALF_DTYPES)
@pytest.mark.parametrize("num_rows,d", [(1, 64), (33, 11008), (7, 14336)])
def test_silu_and_mul(num_rows, d, dtype):
    assert check_silu_and_mul(num_rows, d, dtype=dtype) < TOLERANCE


FP8_DTYPES = [torch.float8_e4m3fn, torch.float8_e5m2]


@pytest.mark.parametrize("kv_cache_dtype", FP8_DTYPES)
@pytest.mark.parametrize("num_kv_heads,head_dim", [(1, 64), (3, 80)])
def test_write_kv_cache_fp8(kv_cache_dtype, num_kv_heads, head_dim):
    """Bytes equal to the torch twin's, saturation included (K/V x100, odd scales)."""
    for num_tokens in (1, 17, 300):
        assert check_write_kv_cache(num_tokens, num_kv_heads=num_kv_heads, head_dim=head_dim,
                                    dtype=kv_cache_dtype, k_scale=0.37, v_scale=1.9)


@pytest.mark.parametrize("kv_cache_dtype", FP8_DTYPES)
@pytest.mark.parametrize("dtype", HALF_DTYPES)
@pytest.mark.parametrize("num_kv_splits", [None, 1, 4])
def test_paged_attention_fp8_cache(kv_cache_dtype, dtype, num_kv_splits):
    """The kernels read an fp8 cache like the twin reads its dequantization: mixed batches and
    (split-KV) decodes over odd lengths and scales."""
    scales = dict(kv_cache_dtype=kv_cache_dtype, k_scale=0.37, v_scale=1.9)
    assert check_paged_attention(MIXED_QUERY_LENS, MIXED_SEQ_LENS, num_heads=16, num_kv_heads=4,
                                 dtype=dtype, num_kv_splits=num_kv_splits, **scales) < TOLERANCE
    assert check_paged_attention([1, 1, 1], [1, 777, 2049], num_heads=32, num_kv_heads=8,
                                 head_dim=128, dtype=dtype, num_kv_splits=num_kv_splits,
                                 **scales) < TOLERANCE


@pytest.mark.parametrize("kv_cache_dtype", FP8_DTYPES)
def test_backends_agree_fp8_cache(kv_cache_dtype):
    error, caches_equal = check_backends_agree(
        MIXED_QUERY_LENS, MIXED_SEQ_LENS, num_heads=32, num_kv_heads=8, head_dim=128,
        dtype=torch.bfloat16, kv_cache_dtype=kv_cache_dtype, k_scale=0.5, v_scale=0.25)
    assert caches_equal and error < TOLERANCE
