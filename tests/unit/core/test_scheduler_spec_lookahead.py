"""Draft-model / EAGLE speculative decoding in the core: lookahead slots reserved past each
step (cut at max_model_len, counted in swap-in), and EAGLE's prefix hashes that cover the
token after each block, checked at exact state."""

from __future__ import annotations

from pagellm.config.cache import CacheConfig
from pagellm.config.scheduler import SchedulerConfig
from pagellm.core.block_hash import extend_block_hashes, hash_block
from pagellm.core.kv_cache_manager import KVCacheManager
from pagellm.core.sched_output import ModelRunnerOutput
from pagellm.core.scheduler import Scheduler
from tests.unit.core.builders import make_request, runner_output


def lookahead_scheduler(max_model_len: int = 256, num_blocks: int = 64) -> Scheduler:
    return Scheduler(SchedulerConfig(max_num_batched_tokens=64, max_num_seqs=8),
                     CacheConfig(block_size=4, enable_prefix_caching=True), max_model_len,
                     num_blocks, num_speculative_tokens=3, num_lookahead_tokens=3)


def test_lookahead_slots_reserved_after_every_step():
    scheduler = lookahead_scheduler()
    request = make_request("a", 6)
    scheduler.add_request(request)
    sched = scheduler.schedule()                  # 6 prompt tokens + 3 lookahead = 9 slots
    assert sched.num_scheduled_tokens == {"a": 6}
    assert len(scheduler.kv.block_ids("a")) == 3
    scheduler.update_from_output(sched, runner_output(["a"], [[7]], spec_token_ids=[[8, 9, 10]]))
    sched = scheduler.schedule()                  # 6 + 1 + 3 drafts = 10, + 3 lookahead = 13
    assert sched.num_scheduled_tokens == {"a": 4}
    assert len(scheduler.kv.block_ids("a")) == 4
    scheduler.update_from_output(sched, runner_output(["a"], [[8, 5]], spec_token_ids=[[1]]))
    assert request.num_computed_tokens == 8 and request.num_tokens == 9
    sched = scheduler.schedule()                  # 8 + 2 = 10, + 3 = 13: the blocks held do
    assert sched.num_scheduled_tokens == {"a": 2}
    assert len(scheduler.kv.block_ids("a")) == 4


def test_lookahead_stops_at_max_model_len():
    scheduler = lookahead_scheduler(max_model_len=8)
    scheduler.add_request(make_request("a", 6))
    scheduler.schedule()
    assert len(scheduler.kv.block_ids("a")) == 2  # 6 + min(3, 8 - 6) = 8 slots


def test_swap_in_counts_lookahead():
    manager = KVCacheManager(num_blocks=4, block_size=4, enable_prefix_caching=False,
                             num_swap_blocks=4, num_lookahead_tokens=3)
    request = make_request("a", 7)
    assert len(manager.allocate_slots(request, 7)) == 3          # 7 + 3 lookahead slots
    request.num_computed_tokens = 7
    assert manager.swap_out(request) == [(0, 0), (1, 1)] and manager.pool.num_free_blocks == 4
    assert len(manager.allocate_slots(make_request("b", 4), 4)) == 2
    assert not manager.can_swap_in(request, 1)    # 8 + 3 = 11 slots: 3 blocks, 2 free
    manager.num_lookahead_tokens = 0
    assert manager.can_swap_in(request, 1)        # 8 slots: 2 blocks


def test_eagle_block_hash_covers_the_next_token():
    hashes: list[bytes] = []
    extend_block_hashes(hashes, [1, 2, 3, 4, 5, 6, 7, 8], 4, next_tokens=1)
    assert hashes == [hash_block(None, [1, 2, 3, 4, 5])]   # block 2 waits for a 9th token
    manager = KVCacheManager(num_blocks=8, block_size=4, enable_prefix_caching=True,
                             use_eagle=True)
    first = make_request("a", [1, 2, 3, 4, 5, 6, 7, 8, 9])
    assert manager.allocate_slots(first, 9) is not None
    other_next = make_request("b", [1, 2, 3, 4, 6, 6, 7, 8, 9])
    same_next = make_request("c", [1, 2, 3, 4, 5, 0, 0])
    assert manager.get_computed_blocks(other_next)[1] == 0
    blocks, num_tokens = manager.get_computed_blocks(same_next)
    assert num_tokens == 4 and [b.block_id for b in blocks] == manager.block_ids("a")[:1]
