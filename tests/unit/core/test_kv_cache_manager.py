"""KVCacheManager: exact block tables, prefix hits, LRU eviction, sharing, swap bookkeeping."""

from __future__ import annotations

from pagellm.core.kv_cache_manager import KVCacheManager
from pagellm.core.request import Request
from tests.unit.core.builders import make_request

BLOCK_SIZE = 4


def make_kv(num_blocks: int = 8, enable_prefix_caching: bool = True,
            num_swap_blocks: int = 0) -> KVCacheManager:
    return KVCacheManager(num_blocks, BLOCK_SIZE, enable_prefix_caching, num_swap_blocks)


def admit(kv: KVCacheManager, request: Request, num_new_tokens: int | None = None):
    """What the scheduler does for a fresh request: look up hits, allocate, advance."""
    hit_blocks, num_hit_tokens = kv.get_computed_blocks(request)
    if num_new_tokens is None:
        num_new_tokens = request.num_tokens - num_hit_tokens
    new_blocks = kv.allocate_slots(request, num_new_tokens, hit_blocks)
    assert new_blocks is not None
    request.num_computed_tokens += num_new_tokens
    return [b.block_id for b in new_blocks]


def run(kv: KVCacheManager, request: Request, num_new_tokens: int) -> list[int]:
    """A later chunk of a running request (no prefix lookup)."""
    new_blocks = kv.allocate_slots(request, num_new_tokens)
    assert new_blocks is not None
    request.num_computed_tokens += num_new_tokens
    return [b.block_id for b in new_blocks]


def decode(kv: KVCacheManager, request: Request, token_id: int = 7) -> list[int]:
    """Append a sampled token and run it (one decode step)."""
    request.append_output_token(token_id)
    kv.update_block_hashes(request)
    return run(kv, request, 1)


def refs(kv: KVCacheManager) -> list[int]:
    return [b.ref_cnt for b in kv.pool.blocks]


def test_exact_block_ids_across_steps():
    kv = make_kv()
    request = make_request("a", 10)
    assert kv.get_computed_blocks(request) == ([], 0)
    assert admit(kv, request, 6) == [0, 1]              # chunk 1: tokens 0..5
    assert run(kv, request, 4) == [2]                   # chunk 2: tokens 6..9
    assert kv.block_ids("a") == [0, 1, 2]
    assert kv.num_cached_blocks["a"] == 2
    assert [kv.pool.blocks[i].block_hash for i in (0, 1)] == request.block_hashes
    assert decode(kv, request) == []                    # token 11 fits block 2
    assert decode(kv, request) == []                    # token 12 fills block 2
    assert kv.pool.blocks[2].block_hash == request.block_hashes[2]
    assert decode(kv, request) == [3]                   # token 13 needs block 3
    assert kv.block_ids("a") == [0, 1, 2, 3]
    assert refs(kv) == [1, 1, 1, 1, 0, 0, 0, 0]
    assert kv.pool.free_queue.block_ids() == [4, 5, 6, 7]

    kv.free(request)
    assert kv.block_ids("a") == []
    assert refs(kv) == [0] * 8
    assert kv.pool.free_queue.block_ids() == [4, 5, 6, 7, 3, 2, 1, 0]   # tail first


def test_prefix_hit_takes_the_longest_cached_run():
    kv = make_kv(num_blocks=16)
    first = make_request("a", 16)
    admit(kv, first)
    kv.free(first)

    diverging = make_request("b", list(range(100, 109)) + [5, 5, 5])   # same first 9 tokens
    blocks, num_tokens = kv.get_computed_blocks(diverging)
    assert ([b.block_id for b in blocks], num_tokens) == ([0, 1], 8)

    same_and_more = make_request("c", list(range(100, 116)) + [5])
    blocks, num_tokens = kv.get_computed_blocks(same_and_more)
    assert ([b.block_id for b in blocks], num_tokens) == ([0, 1, 2, 3], 16)


def test_prefix_hit_leaves_at_least_one_token():
    kv = make_kv()
    first = make_request("a", 8)                        # exactly two full blocks
    admit(kv, first)
    kv.free(first)
    same = make_request("b", 8)
    blocks, num_tokens = kv.get_computed_blocks(same)
    assert ([b.block_id for b in blocks], num_tokens) == ([0], 4)
    assert admit(kv, same) == [2]                        # the last 4 tokens recomputed
    assert same.num_computed_tokens == 8
    assert kv.block_ids("b") == [0, 2]


def test_prefix_lookup_with_prompt_logprobs_skips_the_cache():
    kv = make_kv()
    admit(kv, make_request("a", 9))
    scored = make_request("b", 9, prompt_logprobs=1)
    assert kv.get_computed_blocks(scored) == ([], 0)


def test_eviction_is_lru_and_a_requests_last_block_goes_first():
    kv = make_kv()
    first = make_request("a", 12)                       # blocks 0, 1, 2
    admit(kv, first)
    kv.free(first)
    assert kv.pool.free_queue.block_ids() == [3, 4, 5, 6, 7, 2, 1, 0]

    assert admit(kv, make_request("x", list(range(20)))) == [3, 4, 5, 6, 7]
    assert admit(kv, make_request("y", [1, 2, 3])) == [2]   # evicts a's last block
    assert kv.pool.blocks[2].block_hash is None
    assert len(kv.pool.cached_blocks) == 2 + 5              # a's first two, x's five

    again = make_request("a2", 12)
    blocks, num_tokens = kv.get_computed_blocks(again)
    assert ([b.block_id for b in blocks], num_tokens) == ([0, 1], 8)


def test_shared_prefix_ref_counts():
    kv = make_kv()
    first = make_request("a", 12)
    admit(kv, first)
    second = make_request("b", list(range(100, 108)) + [1, 2, 3, 4])
    assert admit(kv, second) == [3]
    assert kv.block_ids("b") == [0, 1, 3]
    assert second.num_computed_tokens == 12
    assert refs(kv)[:4] == [2, 2, 1, 1]

    kv.free(first)
    assert refs(kv)[:4] == [1, 1, 0, 1]
    assert kv.pool.free_queue.block_ids() == [4, 5, 6, 7, 2]
    kv.free(second)
    assert refs(kv) == [0] * 8
    assert kv.pool.free_queue.block_ids() == [4, 5, 6, 7, 2, 3, 1, 0]


def test_siblings_share_without_prefix_caching():
    kv = make_kv(enable_prefix_caching=False)
    sibling0 = make_request("g-0", 9, group_id="g")
    sibling1 = make_request("g-1", 9, group_id="g")
    stranger = make_request("u", 9)
    other_group = make_request("h-0", 9, group_id="h")

    assert admit(kv, sibling0) == [0, 1, 2]
    blocks, num_tokens = kv.get_computed_blocks(sibling1)
    assert ([b.block_id for b in blocks], num_tokens) == ([0, 1], 8)
    assert kv.get_computed_blocks(stranger) == ([], 0)
    assert kv.get_computed_blocks(other_group) == ([], 0)
    assert admit(kv, sibling1) == [3]
    assert admit(kv, stranger) == [4, 5, 6]
    assert stranger.block_hashes == []
    assert refs(kv)[:7] == [2, 2, 1, 1, 1, 1, 1]
    assert kv.caches(sibling0) and not kv.caches(stranger)


def test_cache_salt_separates():
    kv = make_kv()
    admit(kv, make_request("a", 9, cache_salt="x"))
    assert kv.get_computed_blocks(make_request("b", 9, cache_salt="y")) == ([], 0)
    assert kv.get_computed_blocks(make_request("c", 9)) == ([], 0)
    blocks, num_tokens = kv.get_computed_blocks(make_request("d", 9, cache_salt="x"))
    assert ([b.block_id for b in blocks], num_tokens) == ([0, 1], 8)


def snapshot(kv: KVCacheManager):
    return (kv.pool.free_queue.block_ids(), refs(kv), dict(kv.pool.cached_blocks),
            [b.block_hash for b in kv.pool.blocks], {k: list(v) for k, v in kv.req_to_blocks.items()},
            dict(kv.num_cached_blocks))


def test_allocate_slots_short_returns_none_and_changes_nothing():
    kv = make_kv(num_blocks=4)
    running = make_request("a", 8)
    admit(kv, running)
    before = snapshot(kv)
    big = make_request("b", 12)
    assert kv.allocate_slots(big, 12) is None
    assert snapshot(kv) == before
    assert big.num_computed_tokens == 0


def test_allocate_slots_counts_free_hit_blocks_as_taken():
    kv = make_kv(num_blocks=4)
    first = make_request("a", 12)
    admit(kv, first)
    kv.free(first)
    assert kv.pool.free_queue.block_ids() == [3, 2, 1, 0]

    # 20 tokens: 2 hit blocks (both in the free queue) + 3 new = 5 > 4.
    longer = make_request("b", list(range(100, 108)) + [9] * 12)
    hit_blocks, num_hit_tokens = kv.get_computed_blocks(longer)
    assert ([b.block_id for b in hit_blocks], num_hit_tokens) == ([0, 1], 8)
    before = snapshot(kv)
    assert kv.allocate_slots(longer, 12, hit_blocks) is None
    assert snapshot(kv) == before
    assert longer.num_computed_tokens == 0

    # 16 tokens: 2 hits + 2 new fits exactly; block 2 loses a's hash.
    fits = make_request("c", list(range(100, 108)) + [9] * 8)
    hit_blocks, _ = kv.get_computed_blocks(fits)
    new_blocks = kv.allocate_slots(fits, 8, hit_blocks)
    assert [b.block_id for b in new_blocks] == [3, 2]
    assert fits.num_computed_tokens == 8
    assert kv.block_ids("c") == [0, 1, 3, 2]
    assert kv.pool.num_free_blocks == 0
    assert first.block_hashes[2] not in kv.pool.cached_blocks


def test_swap_out_and_in_mappings():
    kv = make_kv(enable_prefix_caching=False, num_swap_blocks=4)
    other = make_request("o", 4)
    admit(kv, other)                                    # block 0
    swapped = make_request("a", 10)
    assert admit(kv, swapped) == [1, 2, 3]

    assert kv.swap_out(swapped) == [(1, 0), (2, 1), (3, 2)]
    assert kv.block_ids("a") == []
    assert kv.req_to_swap_blocks == {"a": [0, 1, 2]}
    assert kv.free_swap_blocks == [3]
    assert kv.pool.free_queue.block_ids() == [4, 5, 6, 7, 3, 2, 1]
    assert swapped.num_computed_tokens == 10           # its KV lives on in swap space

    # Swap space short: nothing changes.
    short = make_request("b", 8)
    admit(kv, short)
    before = (snapshot(kv), list(kv.free_swap_blocks), dict(kv.req_to_swap_blocks))
    assert kv.swap_out(short) is None
    assert (snapshot(kv), list(kv.free_swap_blocks), dict(kv.req_to_swap_blocks)) == before

    swapped.append_output_token(7)
    assert kv.can_swap_in(swapped, 1)
    assert kv.swap_in(swapped) == [(0, 6), (1, 7), (2, 3)]
    assert kv.block_ids("a") == [6, 7, 3]
    assert kv.req_to_swap_blocks == {}
    assert sorted(kv.free_swap_blocks) == [0, 1, 2, 3]
    assert kv.allocate_slots(swapped, 1) == []          # 11 tokens fit 3 blocks


def test_can_swap_in_needs_room_for_the_new_tokens():
    kv = make_kv(num_blocks=4, enable_prefix_caching=False, num_swap_blocks=4)
    swapped = make_request("a", 8)
    admit(kv, swapped)
    assert kv.swap_out(swapped) == [(0, 0), (1, 1)]
    holder = make_request("h", 8)
    admit(kv, holder)                                   # 2 of 4 blocks left
    swapped.append_output_token(7)
    assert not kv.can_swap_in(swapped, 1)               # 9 tokens need 3 blocks
    kv.free(holder)
    assert kv.can_swap_in(swapped, 1)


def test_free_returns_swap_blocks():
    kv = make_kv(enable_prefix_caching=False, num_swap_blocks=2)
    swapped = make_request("a", 6)
    admit(kv, swapped)
    kv.swap_out(swapped)
    assert kv.free_swap_blocks == []
    kv.free(swapped)                                    # aborted while swapped
    assert sorted(kv.free_swap_blocks) == [0, 1]
    assert kv.req_to_swap_blocks == {}


def test_prefix_stats_are_recorded():
    kv = make_kv()
    kv.record_prefix_lookup(10, 0)
    kv.record_prefix_lookup(10, 8)
    assert (kv.prefix_stats.queries, kv.prefix_stats.hits) == (20, 8)
