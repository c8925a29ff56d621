"""``EngineStats``: the engine core's counters after a step. One msgspec Struct serves the
in-process engine and the ZMQ messages of the process split (no copy type to keep in sync)."""

from __future__ import annotations

import msgspec


class EngineStats(msgspec.Struct, array_like=True):
    num_running: int
    """Requests in the running batch."""
    num_waiting: int
    """Requests waiting for a batch slot (including preempted ones)."""
    kv_cache_usage: float
    """Fraction of KV blocks in use, 0..1."""
    num_preemptions: int
    """Preemptions since start."""
    prefix_cache_queries: int
    """Prompt tokens looked up in the prefix cache since start."""
    prefix_cache_hits: int
    """Of those, tokens found."""
    num_steps: int
    """Forward passes since start."""
    prompt_tokens: int = 0
    """Prompt tokens of the requests that produced their first token so far."""
    generation_tokens: int = 0
    """Tokens generated so far."""
