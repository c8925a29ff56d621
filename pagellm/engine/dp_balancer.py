"""The data-parallel load balancer: which engine core (replica) serves a new request.

Pure bookkeeping over the replicas' pushed ``EngineStats`` (no processes, no I/O), so it is
unit-tested in isolation. The policy:

1. **Load** of a replica = ``WAITING_WEIGHT * waiting + running + KV_USAGE_WEIGHT *
   kv_cache_usage`` (vLLM's DP balancer scores ``4 * waiting + running``; a replica whose KV
   cache is full is about to queue or preempt, so its usage counts too). ``waiting`` and
   ``running`` come from the replica's latest pushed stats, plus this API server's requests
   still **in flight** to it: sent but not yet received by the core when it made those stats
   (what this client sent minus the core's ``num_requests_received`` count for this client).
   Replacing the count by each push instead forgot those, so in a burst the replica that
   pushed most often looked idlest and took more (W4 at rate inf, DP=2, two API servers:
   562 / 439 requests, benchmarks/RESULTS.md, session 8).
2. **Prefix affinity** (beyond vLLM): the API process hashes the prompt's leading full blocks
   exactly as the engine core's prefix cache does (``core.block_hash``, cache salt included)
   and keeps a bounded LRU map block hash -> the replica that last served it. The replica
   holding the longest matching prefix gets the request unless it is overloaded: its load
   exceeds the least-loaded replica's by more than ``affinity_abs_slack`` *and* by a factor
   over ``affinity_rel_slack`` (SGLang's cache-aware router uses the same two thresholds).
3. Otherwise the least-loaded replica; ties rotate (so equal replicas take turns).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from pagellm.core.block_hash import hash_block
from pagellm.core.stats import EngineStats

WAITING_WEIGHT = 4.0
"""A waiting request weighs as much as four running ones (vLLM's DP score)."""
KV_USAGE_WEIGHT = 4.0
"""A full KV cache (usage 1.0) weighs as much as one waiting request."""
MAX_AFFINITY_BLOCKS = 64
"""Leading blocks hashed per prompt: a longer shared prefix decides nothing new."""


def prefix_block_hashes(token_ids: list[int], block_size: int, cache_salt: str | None = None,
                        max_blocks: int = MAX_AFFINITY_BLOCKS) -> list[bytes]:
    """The chained hashes of the first ``min(len(token_ids) // block_size, max_blocks)`` full
    blocks, equal to the engine core's prefix-cache keys (``KVCacheManager``: the cache salt is
    the only extra key of a prefix-cached request)."""
    extra_keys = (cache_salt,) if cache_salt else ()
    hashes, parent = [], None
    num_blocks = min(len(token_ids) // block_size, max_blocks)
    for index in range(num_blocks):
        parent = hash_block(parent, token_ids[index * block_size:(index + 1) * block_size],
                            extra_keys)
        hashes.append(parent)
    return hashes


@dataclass
class ReplicaLoad:
    """What the balancer knows of one replica."""

    num_waiting: int = 0
    """Waiting requests in its latest stats plus this client's requests in flight to it."""
    num_running: int = 0
    kv_cache_usage: float = 0.0
    """0..1, from its latest stats."""
    num_routed: int = 0
    """Requests routed to it since start (n > 1 children counted once: one parent)."""
    num_affinity_routed: int = 0
    """Of those, routed by prefix affinity."""
    num_core_requests_sent: int = 0
    """Core requests (n > 1 children each) this client sent it since start."""

    @property
    def load(self) -> float:
        return (WAITING_WEIGHT * self.num_waiting + self.num_running
                + KV_USAGE_WEIGHT * self.kv_cache_usage)


@dataclass
class DPLoadBalancer:
    """Chooses a replica per request (see the module docstring). Not thread-safe: the API
    process calls it from its event loop only."""

    num_engines: int
    client_index: int = 0
    """This API server's index among the cores' clients (``num_requests_received``)."""
    max_affinity_entries: int = 65536
    """Bound of the hash -> replica map (LRU); the DP client sets it to the replicas' total
    KV blocks, since no replica can hold more cached blocks than that."""
    affinity_abs_slack: float = 8.0
    """Load units (one waiting request = WAITING_WEIGHT) an affine replica may carry above
    the least-loaded one and still get the request."""
    affinity_rel_slack: float = 1.5
    """... or, when above that, the factor over the least-loaded one it may carry."""
    replicas: list[ReplicaLoad] = field(default_factory=list)
    _affinity: OrderedDict[bytes, int] = field(default_factory=OrderedDict)
    _next_tie: int = 0

    def __post_init__(self) -> None:
        if self.num_engines < 1:
            raise ValueError(f"num_engines must be >= 1, got {self.num_engines}")
        if not self.replicas:
            self.replicas = [ReplicaLoad() for _ in range(self.num_engines)]

    def update_stats(self, engine_index: int, stats: EngineStats) -> None:
        """Replica ``engine_index`` pushed ``stats``: its waiting/running counts and KV usage
        replace what was known; this client's requests it had not received yet count as
        waiting on top (stats without ``num_requests_received``, an in-process engine's: none)."""
        replica = self.replicas[engine_index]
        received = stats.num_requests_received
        in_flight = (replica.num_core_requests_sent - received[self.client_index]
                     if self.client_index < len(received) else 0)
        replica.num_waiting = stats.num_waiting + max(0, in_flight)
        replica.num_running = stats.num_running
        replica.kv_cache_usage = stats.kv_cache_usage

    def choose(self, block_hashes: list[bytes] = (), num_requests: int = 1) -> int:
        """The replica for a request whose prompt's leading block hashes are ``block_hashes``
        (``prefix_block_hashes``; empty: no affinity) and that becomes ``num_requests`` core
        requests (n > 1 children stay together). Records the choice: the replica counts them
        as waiting, and the hashes now point at it."""
        least = self._least_loaded()
        chosen, by_affinity = least, False
        affine = self._affine_replica(block_hashes)
        if affine is not None and not self._overloaded(affine, least):
            chosen, by_affinity = affine, True
        replica = self.replicas[chosen]
        replica.num_waiting += num_requests
        replica.num_core_requests_sent += num_requests
        replica.num_routed += 1
        replica.num_affinity_routed += by_affinity
        self._remember(block_hashes, chosen)
        return chosen

    def _least_loaded(self) -> int:
        """Lowest load; among equal ones the first at or after the rotating tie pointer."""
        loads = [replica.load for replica in self.replicas]
        lowest = min(loads)
        for offset in range(self.num_engines):
            index = (self._next_tie + offset) % self.num_engines
            if loads[index] == lowest:
                self._next_tie = (index + 1) % self.num_engines
                return index
        raise AssertionError("unreachable: some replica has the lowest load")

    def _affine_replica(self, block_hashes) -> int | None:
        """The replica that served the longest known prefix of these blocks (chained hashes:
        a deeper match is a longer common prefix), or None."""
        for block_hash in reversed(block_hashes):
            engine_index = self._affinity.get(block_hash)
            if engine_index is not None:
                return engine_index
        return None

    def _overloaded(self, engine_index: int, least: int) -> bool:
        load, lowest = self.replicas[engine_index].load, self.replicas[least].load
        return (load - lowest > self.affinity_abs_slack
                and load > self.affinity_rel_slack * lowest)

    def _remember(self, block_hashes, engine_index: int) -> None:
        affinity = self._affinity
        for block_hash in block_hashes:
            affinity[block_hash] = engine_index
            affinity.move_to_end(block_hash)
        while len(affinity) > self.max_affinity_entries:
            affinity.popitem(last=False)

    def num_affinity_entries(self) -> int:
        return len(self._affinity)
