"""Request: the scheduler's view of one sequence, as token counts (no prefill/decode phase)."""

from __future__ import annotations

import enum
import time

from pagellm.core.spec_adaptive import SpecAcceptance
from pagellm.sampling_params import SamplingParams


class RequestStatus(enum.IntEnum):
    WAITING = 0
    RUNNING = 1
    PREEMPTED = 2           # recompute: back in the waiting queue with no KV blocks
    SWAPPED = 3             # swap: KV blocks live in CPU swap space
    WAITING_FOR_FSM = 4     # structured outputs: waiting (not scheduled) for its grammar compile
    FINISHED_STOPPED = 5    # EOS, a stop token id, or the grammar's end
    FINISHED_LENGTH = 6     # max_tokens or max_model_len
    FINISHED_ABORTED = 7    # client abort or stop string found by the detokenizer
    FINISHED_ERROR = 8      # the grammar failed to compile (structured outputs)

    @property
    def finished(self) -> bool:
        return self >= RequestStatus.FINISHED_STOPPED


FINISH_REASONS = {
    RequestStatus.FINISHED_STOPPED: "stop",
    RequestStatus.FINISHED_LENGTH: "length",
    RequestStatus.FINISHED_ABORTED: "abort",
    RequestStatus.FINISHED_ERROR: "error",
}


class Request:
    """One sequence. ``all_token_ids`` = prompt + output; tokens ``[0, num_computed_tokens)``
    have KV in the cache. The scheduler owns the mutable fields; the runner never sees this."""

    __slots__ = ("request_id", "prompt_token_ids", "output_token_ids", "all_token_ids",
                 "sampling_params", "max_tokens", "eos_token_id", "arrival_time", "priority",
                 "status", "num_computed_tokens", "num_output_placeholders", "num_cached_tokens", "block_hashes",
                 "stop_reason", "num_preemptions", "group_id", "first_scheduled_time",
                 "cache_salt", "structured_output", "spec_token_ids", "spec_base", "spec_acceptance",
                 "lora_request")

    def __init__(self, request_id: str, prompt_token_ids: list[int],
                 sampling_params: SamplingParams, max_tokens: int,
                 eos_token_id: int | None = None, arrival_time: float | None = None,
                 priority: int = 0, group_id: str | None = None, cache_salt: str | None = None,
                 lora_request=None):
        self.request_id = request_id
        self.prompt_token_ids = list(prompt_token_ids)
        self.output_token_ids: list[int] = []
        self.all_token_ids = list(prompt_token_ids)
        self.sampling_params = sampling_params
        self.max_tokens = max_tokens
        self.eos_token_id = eos_token_id
        self.arrival_time = time.time() if arrival_time is None else arrival_time
        self.priority = priority
        self.status = RequestStatus.WAITING
        self.num_computed_tokens = 0
        # async scheduling: tokens sampled by steps in flight, not appended yet (their
        # positions are already scheduled)
        self.num_output_placeholders = 0
        self.num_cached_tokens = -1      # prefix-cache hit tokens at first scheduling
        self.block_hashes: list[bytes] = []
        self.stop_reason: int | str | None = None
        self.num_preemptions = 0
        self.group_id = group_id         # parent id for n > 1 children
        self.first_scheduled_time: float | None = None
        self.cache_salt = cache_salt
        self.spec_token_ids: list[int] = []
        """Speculative decoding: the draft tokens the runner proposed after this request's
        last sampled token, scheduled (perhaps cut) with its next decode step."""
        self.spec_base = 0
        """``num_tokens`` when ``spec_token_ids`` were proposed: they draft the tokens from
        that position on (stale once tokens are appended or in flight since)."""
        self.spec_acceptance = SpecAcceptance()
        """Adaptive speculation: this request's recent draft acceptance."""
        self.lora_request = lora_request
        """The ``LoRARequest`` this request runs with; None = the base model."""
        self.structured_output = None
        """Structured outputs: the scheduler's ``StructuredOutputRequest`` (compile future,
        then grammar matcher), set by ``Scheduler.add_request``; None when unconstrained."""

    @property
    def lora_int_id(self) -> int:
        """The adapter's id, 0 for the base model."""
        return self.lora_request.lora_int_id if self.lora_request is not None else 0

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.all_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    @property
    def is_finished(self) -> bool:
        return self.status.finished

    def append_output_token(self, token_id: int) -> None:
        self.output_token_ids.append(token_id)
        self.all_token_ids.append(token_id)

    def __repr__(self) -> str:
        return (f"Request({self.request_id!r}, status={self.status.name}, "
                f"computed={self.num_computed_tokens}/{self.num_tokens})")
