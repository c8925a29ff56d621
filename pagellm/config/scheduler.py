"""The token-budget scheduler."""

from __future__ import annotations

from dataclasses import dataclass


DEFAULT_MAX_NUM_BATCHED_TOKENS = {"cuda": 8192, "cpu": 256}
"""Per-platform step budgets with chunked prefill on (vLLM also picks them per platform)."""


@dataclass(frozen=True)
class SchedulerConfig:
    max_num_seqs: int = 256
    """Most requests running in one step."""
    max_num_batched_tokens: int | None = None
    """Token budget of one step. Default with chunked prefill: 8192 on CUDA, 256 on CPU (a CPU
    step costs about 2-10 ms per prompt token for the default 135M model, so a larger chunk
    would stall every running stream for seconds behind one long prompt; measured in
    benchmarks/RESULTS.md, 2026-11-30). Without chunked prefill: max(max_model_len, 8192), and
    an explicit value must be >= max_model_len (a whole prompt runs in one step)."""
    enable_chunked_prefill: bool = True
    """Split long prompts across steps so decodes keep running; off = whole prompts only."""
    long_prefill_token_threshold: int = 0
    """Decode-first prompt chunks (vLLM's name; 0 = off). While any running request decodes,
    the prompt tokens of one step, all prompts together, are capped at this many (running
    requests, decodes among them, are scheduled before waiting prompts, as always); so a step
    with D decodes runs at most D + threshold tokens and a long prompt arriving during
    decodes raises their inter-token latency by at most one threshold-sized chunk per step
    instead of a max_num_batched_tokens-sized one. With nothing decoding, prompts take the whole
    max_num_batched_tokens (TTFT of an idle server unchanged). The guides' advice for
    max_num_batched_tokens (small, e.g. 256-2048, for latency; large for throughput) applies
    to this cap instead, without shrinking idle-time prefill. Needs enable_chunked_prefill."""
    preemption_mode: str = "recompute"
    """What to do with a preempted request's KV blocks: recompute (drop) or swap (copy to CPU)."""
    scheduler_delay_factor: float = 0.0
    """Admit new prompts only after the oldest waiting one has waited this factor × the last
    prompt step's latency (0 = off), so prompts batch up."""
    policy: str = "fcfs"
    """fcfs, or priority (lower value first; ties by arrival)."""
    max_num_queued_requests: int | None = None
    """Reject new requests once this many wait (server returns 503); None = unbounded."""
    async_scheduling: bool | None = None
    """Schedule and prepare step N+1 while step N runs; step N's sampled tokens feed step N+1 on
    the device and reach the host one step later (vLLM's async_scheduling). Default: on for
    CUDA, off on CPU (CPU kernels run synchronously, so nothing would overlap). Not with
    pipeline parallelism (its batch queue already keeps the stages busy)."""

    def default_max_num_batched_tokens(self, max_model_len: int, device_type: str) -> int:
        """The budget when none was given (see ``max_num_batched_tokens``); ``device_type``
        is the resolved platform, "cpu" or "cuda"."""
        if not self.enable_chunked_prefill:
            return max(max_model_len, DEFAULT_MAX_NUM_BATCHED_TOKENS["cuda"])
        return DEFAULT_MAX_NUM_BATCHED_TOKENS[device_type]

    def __post_init__(self) -> None:
        from pagellm.config.checks import check_choice, check_range

        check_range("max_num_seqs", self.max_num_seqs, 1)
        if self.max_num_batched_tokens is not None:
            check_range("max_num_batched_tokens", self.max_num_batched_tokens, 1)
        check_choice("preemption_mode", self.preemption_mode, ("recompute", "swap"))
        check_range("scheduler_delay_factor", self.scheduler_delay_factor, 0)
        check_range("long_prefill_token_threshold", self.long_prefill_token_threshold, 0)
        check_choice("policy", self.policy, ("fcfs", "priority"))
        if self.max_num_queued_requests is not None:
            check_range("max_num_queued_requests", self.max_num_queued_requests, 1)
