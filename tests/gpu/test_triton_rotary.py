"""The Triton rotary kernel (one launch, in place on views of the fused QKV output) equals
its torch twin, apply_rotary, and leaves V and the rest of the row alone."""

from __future__ import annotations

import pytest
import torch

from pagellm.ops.rotary import apply_rotary, llama3_scale_inv_freq, rope_cos_sin_cache, rope_inv_freq

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("heads", [(32, 8), (9, 3), (4, 1), (16, 16)])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("num_tokens", [1, 7, 300])
def test_rotary_triton_matches_twin(dtype, heads, head_dim, num_tokens):
    from pagellm.ops.triton.rotary import apply_rotary_triton_

    num_heads, num_kv_heads = heads
    inv_freq = llama3_scale_inv_freq(rope_inv_freq(head_dim, 500000.0), 8.0, 1.0, 4.0, 8192)
    cache = rope_cos_sin_cache(inv_freq, 4096).cuda()
    sizes = [num_heads * head_dim, num_kv_heads * head_dim, num_kv_heads * head_dim]
    qkv = torch.randn(num_tokens, sum(sizes), dtype=dtype, device="cuda")
    positions = torch.randint(0, 4096, (num_tokens,), device="cuda")
    q, k, v = qkv.split(sizes, dim=-1)
    q = q.view(num_tokens, num_heads, head_dim)
    k = k.view(num_tokens, num_kv_heads, head_dim)
    want_q, want_k = apply_rotary(q.clone(), k.clone(), positions, cache)
    v_before = v.clone()
    got_q, got_k = apply_rotary_triton_(q, k, positions, cache)
    assert got_q.data_ptr() == q.data_ptr()                  # in place, in the QKV buffer
    tolerance = 0 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(got_q, want_q, rtol=tolerance, atol=tolerance or 1e-5)
    torch.testing.assert_close(got_k, want_k, rtol=tolerance, atol=tolerance or 1e-5)
    assert torch.equal(v, v_before)
