"""The token-budget scheduler."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SchedulerConfig:
    max_num_seqs: int = 256
    """Most requests running in one step."""
    max_num_batched_tokens: int | None = None
    """Token budget of one step (default 8192 with chunked prefill, else max(max_model_len, 8192))."""
    enable_chunked_prefill: bool = True
    """Split long prompts across steps so decodes keep running; off = whole prompts only."""
    preemption_mode: str = "recompute"
    """What to do with a preempted request's KV blocks: recompute (drop) or swap (copy to CPU)."""
    scheduler_delay_factor: float = 0.0
    """Admit new prompts only after the oldest waiting one has waited this factor × the last
    prompt step's latency (0 = off), so prompts batch up."""
    policy: str = "fcfs"
    """fcfs, or priority (lower value first; ties by arrival)."""
    max_num_queued_requests: int | None = None
    """Reject new requests once this many wait (server returns 503); None = unbounded."""

    def __post_init__(self) -> None:
        from pagellm.config.checks import check_choice, check_range

        check_range("max_num_seqs", self.max_num_seqs, 1)
        if self.max_num_batched_tokens is not None:
            check_range("max_num_batched_tokens", self.max_num_batched_tokens, 1)
        check_choice("preemption_mode", self.preemption_mode, ("recompute", "swap"))
        check_range("scheduler_delay_factor", self.scheduler_delay_factor, 0)
        check_choice("policy", self.policy, ("fcfs", "priority"))
        if self.max_num_queued_requests is not None:
            check_range("max_num_queued_requests", self.max_num_queued_requests, 1)
