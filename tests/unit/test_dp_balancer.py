"""The data-parallel load balancer over stats snapshots: queue length, KV usage, prefix
affinity with an overload limit, a bounded affinity map, and stats merging."""

from __future__ import annotations

import pytest

from pagellm.core.block_hash import extend_block_hashes
from pagellm.core.stats import EngineStats
from pagellm.engine.dp_balancer import DPLoadBalancer, prefix_block_hashes
from pagellm.engine.dp_client import (cpu_threads_per_replica, merge_stats,
                                      replica_environments)
from pagellm.config.engine_args import create_engine_config
from pagellm.errors import ClientError

BLOCK = 4


def stats(running=0, waiting=0, kv=0.0, **totals) -> EngineStats:
    return EngineStats(num_running=running, num_waiting=waiting, kv_cache_usage=kv,
                       num_preemptions=totals.get("preemptions", 0),
                       prefix_cache_queries=totals.get("queries", 0),
                       prefix_cache_hits=totals.get("hits", 0), num_steps=totals.get("steps", 0))


def hashes(token_ids, salt=None):
    return prefix_block_hashes(list(token_ids), BLOCK, salt)


def test_prefix_hashes_equal_the_engine_cores_prefix_cache_keys():
    tokens = list(range(23))
    engine_side: list[bytes] = []
    extend_block_hashes(engine_side, tokens, BLOCK)
    assert hashes(tokens) == engine_side and len(engine_side) == 5     # full blocks only
    salted: list[bytes] = []
    extend_block_hashes(salted, tokens, BLOCK, ("s",))
    assert hashes(tokens, salt="s") == salted != engine_side
    assert prefix_block_hashes(tokens, BLOCK, max_blocks=2) == engine_side[:2]
    assert hashes(tokens[:3]) == []


def test_idle_replicas_take_turns_and_a_burst_between_pushes_is_spread():
    balancer = DPLoadBalancer(3)
    assert [balancer.choose() for _ in range(6)] == [0, 1, 2, 0, 1, 2]
    assert [r.num_waiting for r in balancer.replicas] == [2, 2, 2]
    assert [r.num_routed for r in balancer.replicas] == [2, 2, 2]


def test_queue_length_weighs_waiting_four_times_running():
    balancer = DPLoadBalancer(2)
    balancer.update_stats(0, stats(running=3))              # load 3
    balancer.update_stats(1, stats(running=0, waiting=1))   # load 4
    assert balancer.choose() == 0                           # now 0 has load 3 + 4 = 7
    assert balancer.choose() == 1
    balancer.update_stats(0, stats(running=0, waiting=0))   # the push replaces the count
    assert balancer.replicas[0].num_waiting == 0
    assert balancer.choose() == 0


def test_requests_in_flight_to_a_replica_survive_its_stats_push():
    """A push made before the core received this client's last requests must not forget
    them (the W4 DP=2 burst went 562 / 439 when pushes replaced the count)."""
    balancer = DPLoadBalancer(2, client_index=1)
    assert [balancer.choose() for _ in range(10)] == [0, 1] * 5
    # replica 0 has received 2 of the 5 sent by client 1 (and 4 from client 0): 6 waiting
    pushed = stats(waiting=6)
    pushed.num_requests_received = [4, 2]
    balancer.update_stats(0, pushed)
    assert balancer.replicas[0].num_waiting == 6 + 3
    # replica 1 has everything: its count is the core's; it takes the next ones
    caught_up = stats(waiting=5)
    caught_up.num_requests_received = [0, 5]
    balancer.update_stats(1, caught_up)
    assert balancer.replicas[1].num_waiting == 5
    assert [balancer.choose() for _ in range(4)] == [1, 1, 1, 1]
    # a push without per-client counts (an in-process core) counts nothing in flight
    balancer.update_stats(0, stats(waiting=1))
    assert balancer.replicas[0].num_waiting == 1


def test_kv_usage_breaks_equal_queues():
    balancer = DPLoadBalancer(2)
    balancer.update_stats(0, stats(running=2, kv=0.9))
    balancer.update_stats(1, stats(running=2, kv=0.1))
    assert balancer.choose() == 1
    # a nearly full cache weighs about one waiting request: 2 + 3.6 < 2 + 4 + 0.4
    assert balancer.choose() == 0


def test_prefix_affinity_keeps_a_shared_prefix_on_its_replica():
    balancer = DPLoadBalancer(2)
    shared = list(range(100, 116))                          # four full blocks
    first = balancer.choose(hashes(shared + [1, 2, 3, 4]))
    balancer.update_stats(first, stats(running=1))          # busier than the other one
    assert balancer.choose(hashes(shared + [5, 6, 7, 8])) == first
    assert balancer.choose(hashes(shared[:8] + [9] * 8)) == first   # a shorter common prefix
    assert balancer.choose(hashes([7] * 16)) == 1 - first   # unrelated: least loaded
    assert balancer.replicas[first].num_affinity_routed == 2
    assert balancer.replicas[1 - first].num_affinity_routed == 0


def test_longest_matching_prefix_wins():
    balancer = DPLoadBalancer(2)
    base = list(range(8))                                   # blocks A, B
    assert balancer.choose(hashes(base)) == 0
    balancer.update_stats(0, stats(waiting=3))              # overloaded: the next goes to 1
    assert balancer.choose(hashes(base[:4] + [50] * 4)) == 1     # blocks A, C: A -> 1 now
    balancer.update_stats(0, stats())
    balancer.update_stats(1, stats())
    assert balancer.choose(hashes(base)) == 0               # B (two blocks deep) beats A


def test_an_overloaded_affine_replica_loses_the_request():
    balancer = DPLoadBalancer(2, affinity_abs_slack=8.0, affinity_rel_slack=1.5)
    prompt = hashes(range(16))
    assert balancer.choose(prompt) == 0
    balancer.update_stats(0, stats(waiting=2, running=0))   # load 8: within the slack of 0
    balancer.update_stats(1, stats())
    assert balancer.choose(prompt) == 0
    balancer.update_stats(0, stats(waiting=3))              # load 12 > 0 + 8 and > 1.5 x 0
    assert balancer.choose(prompt) == 1
    # the map now points at 1; the relative slack keeps affinity between busy replicas
    balancer.update_stats(0, stats(running=40))
    balancer.update_stats(1, stats(running=50))             # 10 above, but < 1.5 x 40
    assert balancer.choose(prompt) == 1


def test_n_children_count_as_that_many_waiting_requests():
    balancer = DPLoadBalancer(2)
    assert balancer.choose(num_requests=4) == 0
    assert balancer.replicas[0].num_waiting == 4 and balancer.replicas[0].num_routed == 1
    assert [balancer.choose() for _ in range(4)] == [1, 1, 1, 1]


def test_affinity_map_is_a_bounded_lru():
    balancer = DPLoadBalancer(2, max_affinity_entries=3)
    old = hashes(range(8))                                  # 2 entries
    balancer.choose(old)
    balancer.choose(hashes(range(50, 58)))                  # 2 more: the oldest goes
    assert balancer.num_affinity_entries() == 3
    assert balancer._affine_replica(old[:1]) is None
    assert balancer._affine_replica(old) == 0


def test_bad_engine_count_is_rejected():
    with pytest.raises(ValueError, match="num_engines"):
        DPLoadBalancer(0)


def test_merge_stats_sums_counts_and_averages_kv_usage():
    merged = merge_stats([stats(running=2, waiting=1, kv=0.5, hits=3, queries=10, steps=4),
                          stats(running=1, waiting=0, kv=0.1, hits=1, queries=5, steps=6)])
    assert (merged.num_running, merged.num_waiting) == (3, 1)
    assert merged.kv_cache_usage == pytest.approx(0.3)
    assert (merged.prefix_cache_hits, merged.prefix_cache_queries, merged.num_steps) == (4, 15, 10)


def test_each_replica_gets_its_own_cuda_devices():
    config = create_engine_config(data_parallel_size=2, tensor_parallel_size=2)
    envs = replica_environments(config, is_cuda=True, visible_devices=["4", "5", "6", "7"])
    assert envs == [{"CUDA_VISIBLE_DEVICES": "4,5"}, {"CUDA_VISIBLE_DEVICES": "6,7"}]
    assert replica_environments(config, is_cuda=False) == [
        {"OMP_NUM_THREADS": str(cpu_threads_per_replica(2))}] * 2
    with pytest.raises(ClientError, match="data_parallel_size=2.*4 devices.*only 3"):
        replica_environments(config, is_cuda=True, visible_devices=["0", "1", "2"])


def test_cpu_replicas_share_the_hosts_threads(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "8")
    assert cpu_threads_per_replica(2) == 4 and cpu_threads_per_replica(3) == 2
    assert cpu_threads_per_replica(16) == 1
    monkeypatch.delenv("OMP_NUM_THREADS")
    import os
    assert cpu_threads_per_replica(1) == len(os.sched_getaffinity(0))
