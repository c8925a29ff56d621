"""``EngineStats``: the engine core's counters after a step. One msgspec Struct serves the
in-process engine and the ZMQ messages of the process split (no copy type to keep in sync).

The engine-core process pushes one with every output batch, and a stats-only batch when the
gauges change without a step producing outputs (a request scheduled, a request aborted): the API
process keeps the latest, so ``/metrics`` and the periodic log line never wait on a step."""

from __future__ import annotations

from dataclasses import dataclass

import msgspec


@dataclass
class SpecDecodingStats:
    """Speculative decoding counters since start (the scheduler's; vLLM's names)."""

    num_drafts: int
    """Requests' decode steps that ran with at least one draft token."""
    num_draft_tokens: int
    """Draft tokens scheduled (verified by the target model)."""
    num_accepted_tokens: int
    """Of those, accepted."""
    num_accepted_tokens_per_pos: list[int]
    """[num_speculative_tokens]: drafts accepted at position i (0 = first draft)."""

    @classmethod
    def new(cls, num_speculative_tokens: int) -> "SpecDecodingStats":
        return cls(0, 0, 0, [0] * num_speculative_tokens)

    def observe(self, num_draft_tokens: int, num_accepted_tokens: int) -> None:
        """One request's verified step: ``num_draft_tokens`` drafts, the first
        ``num_accepted_tokens`` of them accepted."""
        self.num_drafts += 1
        self.num_draft_tokens += num_draft_tokens
        self.num_accepted_tokens += num_accepted_tokens
        for position in range(num_accepted_tokens):
            self.num_accepted_tokens_per_pos[position] += 1


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
    iteration_tokens: list[int] = msgspec.field(default_factory=list)
    """Tokens (prompt + generated) run by each forward pass since the previous pushed stats,
    oldest first (vLLM's ``iteration_tokens_total`` histogram); empty in a ``stats()`` call's
    answer and in a report sent before a step runs."""
    spec_decode_num_drafts: int = 0
    """Speculative decoding (totals since start): request steps verified with drafts."""
    spec_decode_num_draft_tokens: int = 0
    """Draft tokens verified."""
    spec_decode_num_accepted_tokens: int = 0
    """Draft tokens accepted."""
    spec_decode_num_accepted_tokens_per_pos: list[int] = msgspec.field(default_factory=list)
    """Accepted drafts by position in the draft (0 = first); empty when speculation is off."""
    running_lora_adapters: list[str] = msgspec.field(default_factory=list)
    """enable_lora: names of the adapters of running requests, sorted."""
    waiting_lora_adapters: list[str] = msgspec.field(default_factory=list)
    """enable_lora: names of the adapters of waiting requests, sorted."""
    num_requests_received: list[int] = msgspec.field(default_factory=list)
    """Core requests received since start from each client, by client index (the engine-core
    process fills it; empty in process). A DP balancer subtracts it from what it sent to
    learn which of its requests are still in flight (``pagellm.engine.dp_balancer``)."""

    def same_gauges(self, other: "EngineStats | None") -> bool:
        """True when ``other`` shows the same running/waiting counts, KV usage and adapters."""
        return other is not None and (
            self.num_running, self.num_waiting, self.kv_cache_usage, self.running_lora_adapters,
            self.waiting_lora_adapters) == (other.num_running, other.num_waiting,
                                            other.kv_cache_usage, other.running_lora_adapters,
                                            other.waiting_lora_adapters)
