"""The step messages between the scheduler, the model runner and the output side (torch-free).

Every type here is a msgspec Struct that travels as it is: the executor -> worker messages
(``pagellm.distributed.worker_proc``) and the engine core -> API process messages
(``pagellm.engine.messages``) carry these Structs directly, encoded with msgpack (numpy
arrays through ``encode_array`` / ``decode_array``). There are no mirror types.

The shape is columnar (vLLM V1's): a step's input and output are a few parallel lists or
arrays, never one object per request.

- ``SchedulerOutput``: whole state only for requests the runner has not seen
  (``NewRequestData``: new, or resumed after preemption, whose rows the runner dropped; their
  ``SamplingParams`` cross here once), and for the rest one ``CachedRequestData`` of parallel
  lists (request ids, computed counts, new block ids, and under pipeline parallelism the
  tokens the earlier stages have not seen), plus the ids to forget.
- ``ModelRunnerOutput``: the sampled token ids of the step flattened in request order, with
  per-request counts only when some request got several (speculative decoding); logprobs as
  arrays (``TopLogprobs``) whose rows follow the flattened tokens.
- ``EngineCoreOutputs``: what the scheduler returns from ``update_from_output`` and the
  engine-core process sends as is: request ids, new-token counts and the flattened tokens,
  finish reasons (None while running), logprob arrays, prompt logprobs by request.
"""

from __future__ import annotations

import msgspec
import numpy as np

from pagellm.core.stats import EngineStats
from pagellm.lora.request import LoRARequest
from pagellm.sampling_params import SamplingParams


def encode_array(obj):
    """msgpack ``enc_hook``: a numpy array travels as (dtype, shape, bytes)."""
    if isinstance(obj, np.ndarray):
        return (obj.dtype.str, list(obj.shape), np.ascontiguousarray(obj).tobytes())
    raise NotImplementedError(f"cannot encode {type(obj).__name__}")


def decode_array(expected_type, obj):
    """msgpack ``dec_hook``, the inverse of ``encode_array`` (read-only, backed by the
    message's bytes)."""
    if expected_type is np.ndarray:
        dtype, shape, data = obj
        return np.frombuffer(data, dtype=np.dtype(dtype)).reshape(shape)
    raise NotImplementedError(f"cannot decode {expected_type}")


class NewRequestData(msgspec.Struct, array_like=True):
    """A request the runner has not seen (new, or resumed after a preemption)."""
    request_id: str
    token_ids: list[int]          # prompt + output tokens so far
    num_prompt_tokens: int
    sampling_params: SamplingParams
    block_ids: list[int]
    num_computed_tokens: int      # tokens whose KV is already in the cache (prefix hits, swap-in)
    lora_request: LoRARequest | None = None   # None: the base model


class CachedRequestData(msgspec.Struct, array_like=True):
    """The step's requests the runner already holds, as parallel lists (one entry each).
    A request resumed after a preemption is not here: the runner dropped its row, so it comes
    back whole in ``NewRequestData``."""
    req_ids: list[str] = msgspec.field(default_factory=list)
    num_computed_tokens: list[int] = msgspec.field(default_factory=list)
    """Tokens with KV in the cache before this step."""
    new_block_ids: list[list[int] | None] = msgspec.field(default_factory=list)
    """Blocks allocated to the request this step, appended to its block table; None when
    none (the common decode step)."""
    new_token_ids: list[list[int]] = msgspec.field(default_factory=list)
    """Pipeline parallelism only (else empty): per request, the output tokens from position
    ``max(num_computed_tokens, num_prompt_tokens)`` on (sampled since the runner last ran it).
    The ranks of earlier stages never sample, so they learn the tokens this way."""

    @property
    def num_reqs(self) -> int:
        return len(self.req_ids)


class SchedulerOutput(msgspec.Struct, array_like=True):
    scheduled_new_reqs: list[NewRequestData]
    scheduled_cached_reqs: CachedRequestData
    num_scheduled_tokens: dict[str, int]
    total_num_scheduled_tokens: int
    finished_req_ids: set[str]                  # the runner drops their state first
    preempted_req_ids: set[str] = msgspec.field(default_factory=set)
    """Dropped from the batch but alive: the runner keeps their sampling generators."""
    blocks_to_swap_out: list[tuple[int, int]] = msgspec.field(default_factory=list)  # (gpu, cpu)
    blocks_to_swap_in: list[tuple[int, int]] = msgspec.field(default_factory=list)   # (cpu, gpu)
    num_preempted: int = 0
    structured_output_request_ids: dict[str, int] = msgspec.field(default_factory=dict)
    """Structured outputs: request id -> its first row in ``grammar_bitmask``, for the
    constrained requests that sample this step (1 row each; 1 + k with k draft tokens)."""
    scheduled_spec_decode_tokens: dict[str, list[int]] = msgspec.field(default_factory=dict)
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


class GrammarOutput(msgspec.Struct, array_like=True):
    """The late bitmask of a step with ``has_structured_output_requests`` (vLLM's
    ``GrammarOutput``): built once the step before it is back and its tokens accepted by the
    matchers; the same layout as ``SchedulerOutput.grammar_bitmask`` (None: no row, e.g.
    every constrained request of the step has finished meanwhile)."""
    structured_output_request_ids: dict[str, int]
    grammar_bitmask: np.ndarray | None


class TopLogprobs(msgspec.Struct, array_like=True):
    """Logprobs at some positions, one row per position: column 0 is the sampled (or
    actual) token, columns 1..k the top-k."""
    token_ids: np.ndarray         # [rows, 1 + k] int64
    logprobs: np.ndarray          # [rows, 1 + k] float32
    ranks: np.ndarray             # [rows] int64: rank of column 0's token (1 = most likely)

    def rows(self, index) -> "TopLogprobs":
        """The rows at ``index`` (a slice, or an int array)."""
        return TopLogprobs(self.token_ids[index], self.logprobs[index], self.ranks[index])

    @property
    def num_rows(self) -> int:
        return len(self.ranks)


class ModelRunnerOutput(msgspec.Struct, array_like=True):
    req_ids: list[str]                         # requests that sampled this step
    sampled_token_ids: list[int]
    """The new tokens of all requests, flattened in ``req_ids`` order."""
    num_sampled_tokens: list[int] | None = None
    """Per request (aligned with req_ids), when some request got several tokens (speculative
    decoding: accepted drafts then the target's own token); None = one token each."""
    logprobs: TopLogprobs | None = None
    """Rows aligned with ``sampled_token_ids``."""
    prompt_logprobs: dict[str, tuple[int, TopLogprobs]] = msgspec.field(default_factory=dict)
    """request id -> (first prompt position covered, logprobs of the following positions)."""
    spec_token_ids: list[list[int]] | None = None
    """Speculative decoding: per request (aligned with req_ids) the drafts proposed after
    its new tokens, for the next step; None when speculation is off."""

    @property
    def num_tokens(self) -> int:
        """New tokens of all requests (several per request under speculation)."""
        return len(self.sampled_token_ids)

    def tokens_per_request(self) -> list[list[int]]:
        """The new tokens split per request (aligned with req_ids)."""
        tokens = self.sampled_token_ids
        if self.num_sampled_tokens is None:
            return [[t] for t in tokens]
        ends = np.cumsum(self.num_sampled_tokens).tolist()
        return [tokens[end - n:end] for end, n in zip(ends, self.num_sampled_tokens)]


class EngineCoreOutputs(msgspec.Struct, tag="outputs", array_like=True):
    """One step's outputs for the requests that produced something (tokens, prompt logprobs
    or a finish), as parallel lists; sent by the engine-core process as is, with ``stats``
    and ``timestamp`` filled there."""
    req_ids: list[str] = msgspec.field(default_factory=list)
    num_new_tokens: list[int] = msgspec.field(default_factory=list)
    """Per request: its tokens in ``new_token_ids`` (0: a prompt chunk or a finish alone)."""
    new_token_ids: list[int] = msgspec.field(default_factory=list)
    """Flattened in ``req_ids`` order."""
    finish_reasons: list[str | None] = msgspec.field(default_factory=list)
    """Per request: stop | length | abort | error, None while it runs."""
    stop_reasons: list[int | str | None] = msgspec.field(default_factory=list)
    """Per request: the stop token id or string that ended it, else None."""
    num_cached_tokens: list[int] = msgspec.field(default_factory=list)
    """Per request: prefix-cache hit tokens at its first scheduling."""
    first_scheduled_times: list[float | None] = msgspec.field(default_factory=list)
    """Per request: when it was first scheduled (time.time()), None if never."""
    num_preemptions: list[int] = msgspec.field(default_factory=list)
    new_logprobs: TopLogprobs | None = None
    """Rows aligned with ``new_token_ids``; None when no request asked for logprobs."""
    new_prompt_logprobs: dict[str, tuple[int, TopLogprobs]] = msgspec.field(default_factory=dict)
    """request id -> (first prompt position covered, logprobs of the following positions)."""
    stats: EngineStats | None = None
    """The engine core's counters after the step (set by the engine-core process)."""
    timestamp: float = 0.0

    def __len__(self) -> int:
        return len(self.req_ids)

    def token_offsets(self) -> list[int]:
        """[len(self) + 1]: request i's tokens are ``new_token_ids[offsets[i]:offsets[i+1]]``."""
        offsets = [0]
        offsets.extend(np.cumsum(self.num_new_tokens, dtype=np.int64).tolist())
        return offsets

    def finished_req_ids(self) -> list[str]:
        return [r for r, reason in zip(self.req_ids, self.finish_reasons) if reason is not None]
