"""``KVCache``: tensor layout, and swap copies of whole blocks (every layer, K and V) from
the device cache to CPU swap space and back, bit for bit, touching no other block."""

from __future__ import annotations

import torch

from pagellm.worker.kv_cache import KVCache, KVCacheSpec

SPEC = KVCacheSpec(num_layers=2, block_size=4, num_kv_heads=2, head_dim=3, dtype=torch.float32)


def filled_cache(num_blocks: int = 6, num_swap_blocks: int = 4) -> KVCache:
    """A CPU cache whose every element is distinct (so a wrong block or layer shows)."""
    cache = KVCache(SPEC, num_blocks, num_swap_blocks, torch.device("cpu"), pin_memory=False)
    for index, layer in enumerate(cache.layers):
        layer.copy_(torch.arange(layer.numel(), dtype=torch.float32).view(layer.shape)
                    + 10_000 * index)
    return cache


def test_spec_sizes_and_shapes():
    assert SPEC.bytes_per_block == 2 * 2 * 4 * 2 * 3 * 4   # layers, K/V, tokens, heads, dim, fp32
    assert KVCacheSpec(2, 4, 2, 3, torch.bfloat16).bytes_per_block == SPEC.bytes_per_block // 2
    assert SPEC.layer_shape(7) == (2, 7, 4, 2, 3)


def test_layout_has_a_scratch_block_and_zeroed_swap_space():
    cache = KVCache(SPEC, 6, 4, torch.device("cpu"), pin_memory=False)
    assert cache.scratch_block == 6
    assert [tuple(layer.shape) for layer in cache.layers] == [SPEC.layer_shape(7)] * 2
    assert [tuple(swap.shape) for swap in cache.swap_layers] == [SPEC.layer_shape(4)] * 2
    assert all(not layer.any() for layer in cache.layers + cache.swap_layers)
    assert KVCache(SPEC, 6, 0, torch.device("cpu"), pin_memory=False).swap_layers == []


def test_swap_out_then_in_restores_blocks_exactly():
    cache = filled_cache()
    original = [layer.clone() for layer in cache.layers]
    cache.swap_out([(2, 0), (5, 3)])
    for layer, swap in zip(original, cache.swap_layers):
        assert torch.equal(swap[:, 0], layer[:, 2]) and torch.equal(swap[:, 3], layer[:, 5])
        assert not swap[:, 1:3].any()                        # untouched swap blocks
    for layer, before in zip(cache.layers, original):
        assert torch.equal(layer, before)                     # swap-out only reads the device
        layer[:, [2, 5]] = -1.0                               # the freed blocks get reused
    cache.swap_in([(0, 4), (3, 1)])
    for layer, before in zip(cache.layers, original):
        assert torch.equal(layer[:, 4], before[:, 2]) and torch.equal(layer[:, 1], before[:, 5])
        for block in (0, 3, 6):
            assert torch.equal(layer[:, block], before[:, block])
        assert (layer[:, [2, 5]] == -1.0).all()


def test_empty_swap_lists_copy_nothing():
    cache = filled_cache()
    original = [layer.clone() for layer in cache.layers]
    cache.swap_out([])
    cache.swap_in([])
    assert all(torch.equal(a, b) for a, b in zip(cache.layers, original))
    assert all(not swap.any() for swap in cache.swap_layers)
