"""BlockPool and its O(1) LRU free queue: exact queue order, ref counts and the hash map."""

from __future__ import annotations

import pytest

from pagellm.core.block_pool import BlockPool, FreeBlockQueue, KVCacheBlock


def hash_of(name: str) -> bytes:
    return name.encode()


# ---- FreeBlockQueue ---------------------------------------------------------------------------

def test_free_queue_starts_in_the_given_order():
    queue = FreeBlockQueue([KVCacheBlock(i) for i in (3, 1, 2)])
    assert queue.block_ids() == [3, 1, 2]
    assert queue.num_free_blocks == 3


def test_free_queue_popleft_append_remove():
    blocks = [KVCacheBlock(i) for i in range(5)]
    queue = FreeBlockQueue(blocks)

    assert queue.popleft() is blocks[0]
    assert queue.block_ids() == [1, 2, 3, 4]
    queue.remove(blocks[2])                 # from the middle
    assert queue.block_ids() == [1, 3, 4]
    assert blocks[2].prev_free is None and blocks[2].next_free is None
    queue.remove(blocks[4])                 # the tail
    queue.remove(blocks[1])                 # the head
    assert queue.block_ids() == [3]
    queue.append(blocks[0])
    queue.append(blocks[2])
    assert queue.block_ids() == [3, 0, 2]
    assert queue.num_free_blocks == 3


def test_free_queue_popleft_empty_raises():
    queue = FreeBlockQueue([KVCacheBlock(0)])
    queue.popleft()
    assert queue.block_ids() == []
    assert queue.num_free_blocks == 0
    with pytest.raises(IndexError):
        queue.popleft()


# ---- BlockPool ------------------------------------------------------------------------------

def test_pool_rejects_zero_blocks():
    with pytest.raises(ValueError, match="num_blocks"):
        BlockPool(0)


def test_get_new_blocks_takes_from_the_head():
    pool = BlockPool(4)
    blocks = pool.get_new_blocks(2)
    assert [b.block_id for b in blocks] == [0, 1]
    assert [b.ref_cnt for b in blocks] == [1, 1]
    assert pool.free_queue.block_ids() == [2, 3]
    assert pool.num_free_blocks == 2
    assert pool.usage() == 0.5


def test_get_new_blocks_short_raises_and_changes_nothing():
    pool = BlockPool(2)
    with pytest.raises(ValueError, match="asked for 3 blocks, 2 free"):
        pool.get_new_blocks(3)
    assert pool.free_queue.block_ids() == [0, 1]
    assert [b.ref_cnt for b in pool.blocks] == [0, 0]


def test_get_new_blocks_evicts_cached_hashes():
    pool = BlockPool(3)
    block0, block1 = pool.get_new_blocks(2)
    pool.cache_block(block0, hash_of("a"))
    pool.cache_block(block1, hash_of("b"))
    pool.free_blocks([block1, block0])
    assert pool.free_queue.block_ids() == [2, 1, 0]
    # Free blocks keep their hash until reused.
    assert pool.get_cached_block(hash_of("a")) is block0

    taken = pool.get_new_blocks(2)
    assert [b.block_id for b in taken] == [2, 1]
    assert block1.block_hash is None
    assert pool.get_cached_block(hash_of("b")) is None
    assert pool.get_cached_block(hash_of("a")) is block0
    assert pool.cached_blocks == {hash_of("a"): block0}


def test_touch_pulls_free_blocks_out_and_bumps_ref():
    pool = BlockPool(4)
    block0, block1 = pool.get_new_blocks(2)
    pool.free_blocks([block0])
    assert pool.free_queue.block_ids() == [2, 3, 0]

    pool.touch([block0, block1])
    assert (block0.ref_cnt, block1.ref_cnt) == (1, 2)
    assert pool.free_queue.block_ids() == [2, 3]
    assert pool.num_free_blocks == 2


def test_free_blocks_appends_in_given_order_and_only_at_zero():
    pool = BlockPool(4)
    blocks = pool.get_new_blocks(4)
    pool.touch([blocks[1]])                        # ref 2
    pool.free_blocks([blocks[3], blocks[1], blocks[2], blocks[0]])
    assert pool.free_queue.block_ids() == [3, 2, 0]
    assert blocks[1].ref_cnt == 1
    pool.free_blocks([blocks[1]])
    assert pool.free_queue.block_ids() == [3, 2, 0, 1]
    assert [b.ref_cnt for b in blocks] == [0, 0, 0, 0]


def test_double_free_raises():
    pool = BlockPool(2)
    (block,) = pool.get_new_blocks(1)
    pool.free_blocks([block])
    with pytest.raises(AssertionError, match="double free"):
        pool.free_blocks([block])
    assert pool.free_queue.block_ids() == [1, 0]
    assert block.ref_cnt == 0


def test_cache_block_first_wins():
    pool = BlockPool(3)
    block0, block1 = pool.get_new_blocks(2)
    pool.cache_block(block0, hash_of("a"))
    pool.cache_block(block1, hash_of("a"))      # a duplicate: keeps its hash, not mapped
    assert pool.get_cached_block(hash_of("a")) is block0
    assert block1.block_hash == hash_of("a")
    pool.cache_block(block0, hash_of("z"))      # an already hashed block keeps its hash
    assert block0.block_hash == hash_of("a")
    assert pool.cached_blocks == {hash_of("a"): block0}

    # Evicting the duplicate must not drop the mapped block.
    pool.free_blocks([block1])
    pool.get_new_blocks(2)                      # takes 2, then 1
    assert block1.block_hash is None
    assert pool.cached_blocks == {hash_of("a"): block0}


def test_reset_prefix_cache():
    pool = BlockPool(2)
    block0, block1 = pool.get_new_blocks(2)
    pool.cache_block(block0, hash_of("a"))
    pool.cache_block(block1, hash_of("b"))
    pool.free_blocks([block1])
    assert pool.reset_prefix_cache() is False   # block0 still in use
    assert len(pool.cached_blocks) == 2

    pool.free_blocks([block0])
    assert pool.reset_prefix_cache() is True
    assert pool.cached_blocks == {}
    assert [b.block_hash for b in pool.blocks] == [None, None]
    assert pool.free_queue.block_ids() == [1, 0]


def test_uncache_drops_the_hash_but_keeps_the_reference():
    pool = BlockPool(2)
    block0, block1 = pool.get_new_blocks(2)
    pool.cache_block(block0, hash_of("a"))
    pool.cache_block(block1, hash_of("a"))      # unmapped duplicate
    pool.uncache(block1)
    assert block1.block_hash is None
    assert pool.cached_blocks == {hash_of("a"): block0}
    pool.uncache(block0)
    assert (block0.block_hash, block0.ref_cnt) == (None, 1)
    assert pool.cached_blocks == {}
    assert pool.free_queue.block_ids() == []
