"""Typed messages between the scheduler, the runner and the output side (torch-free).

The runner keeps per-request state across steps; the scheduler sends it diffs: whole state
for requests it has not seen (new, or resumed after preemption), new block ids and counts for
the rest, and the ids to forget (finished, aborted or preempted).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pagellm.lora.request import LoRARequest
from pagellm.sampling_params import SamplingParams


@dataclass(slots=True)
class NewRequestData:
    request_id: str
    token_ids: list[int]          # prompt + output tokens so far
    num_prompt_tokens: int
    sampling_params: SamplingParams
    block_ids: list[int]
    num_computed_tokens: int      # tokens whose KV is already in the cache (prefix hits, swap-in)
    lora_request: LoRARequest | None = None   # None: the base model


@dataclass(slots=True)
class CachedRequestData:
    request_id: str
    new_block_ids: list[int]
    num_computed_tokens: int
    new_token_ids: list[int] = field(default_factory=list)
    """Pipeline parallelism only: the output tokens from position ``max(num_computed_tokens,
    num_prompt_tokens)`` on (the token sampled since the runner last ran this request). The ranks of earlier stages
    never sample, so they learn the tokens this way; empty otherwise."""


@dataclass
class SchedulerOutput:
    scheduled_new_reqs: list[NewRequestData]
    scheduled_cached_reqs: list[CachedRequestData]
    num_scheduled_tokens: dict[str, int]
    total_num_scheduled_tokens: int
    finished_req_ids: set[str]                  # the runner drops their state first
    preempted_req_ids: set[str] = field(default_factory=set)
    """Dropped from the batch but alive: the runner keeps their sampling generators."""
    blocks_to_swap_out: list[tuple[int, int]] = field(default_factory=list)  # (gpu, cpu)
    blocks_to_swap_in: list[tuple[int, int]] = field(default_factory=list)   # (cpu, gpu)
    num_preempted: int = 0
    structured_output_request_ids: dict[str, int] = field(default_factory=dict)
    """Structured outputs: request id -> its first row in ``grammar_bitmask``, for the
    constrained requests that sample this step (1 row each; 1 + k with k draft tokens)."""
    scheduled_spec_decode_tokens: dict[str, list[int]] = field(default_factory=dict)
    """Speculative decoding: request id -> the draft tokens scheduled after its last token
    (its ``num_scheduled_tokens`` = 1 + len(drafts)); absent for requests without drafts."""
    grammar_bitmask: np.ndarray | None = None
    """[rows, ceil(vocab_size / 32)] int32: bit ``t % 32`` of word ``t // 32`` set = token t
    allowed (structured_output.backend); None when no sampling request is constrained."""
    has_structured_output_requests: bool = False
    """Async scheduling: constrained requests sample this step but their bitmask comes later,
    in a ``GrammarOutput`` (the runner runs the forward, then waits for
    ``sample_tokens(grammar_output)``); the two fields above are then empty."""

    @property
    def is_empty(self) -> bool:
        return self.total_num_scheduled_tokens == 0


@dataclass
class GrammarOutput:
    """The late bitmask of a step with ``has_structured_output_requests`` (vLLM's
    ``GrammarOutput``): built once the step before it is back and its tokens accepted by the
    matchers; the same layout as ``SchedulerOutput.grammar_bitmask`` (None: no row, e.g.
    every constrained request of the step has finished meanwhile)."""
    structured_output_request_ids: dict[str, int]
    grammar_bitmask: np.ndarray | None


@dataclass(slots=True)
class TopLogprobs:
    """Logprobs at some positions: row r is [sampled/actual token, top-1, ..., top-k]."""
    token_ids: list[list[int]]
    logprobs: list[list[float]]
    ranks: list[int]              # rank of column 0's token (1 = most likely)


@dataclass
class ModelRunnerOutput:
    req_ids: list[str]                         # requests that sampled a token this step
    sampled_token_ids: list[int | list[int]]
    """One int per request; with speculative decoding (a step with drafts) a list per request:
    the accepted drafts then the target's own token (1 to 1 + len(drafts) tokens)."""
    logprobs: TopLogprobs | None = None
    """Rows aligned with the tokens of ``sampled_token_ids`` flattened in request order."""
    prompt_logprobs: dict[str, tuple[int, TopLogprobs]] = field(default_factory=dict)
    """request id -> (first prompt position covered, logprobs of the following positions)."""
    spec_token_ids: list[list[int]] | None = None
    """Speculative decoding: per request (aligned with req_ids) the drafts proposed after
    its new tokens, for the next step; None when speculation is off."""

    @property
    def num_sampled_tokens(self) -> int:
        """New tokens of all requests (several per request under speculation)."""
        return sum(len(t) if isinstance(t, list) else 1 for t in self.sampled_token_ids)


@dataclass(slots=True)
class EngineCoreOutput:
    request_id: str
    new_token_ids: list[int]
    new_logprobs: TopLogprobs | None = None
    new_prompt_logprobs: tuple[int, TopLogprobs] | None = None
    finish_reason: str | None = None           # stop | length | abort | error
    stop_reason: int | str | None = None
    num_cached_tokens: int = 0
    first_scheduled_time: float | None = None
    num_preemptions: int = 0

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None
