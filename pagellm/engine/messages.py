"""Typed messages between the API-server process and the engine-core process.

Everything that crosses the process boundary is one of the msgspec Structs below (or the
core's own Structs they hold), encoded with ``msgspec.msgpack`` (never pickle): a tagged union
per direction, so the decoder rejects anything that is not a known message. There are no
mirror types and no per-field converters: ``SamplingParams`` and ``LoRARequest`` travel as the
dataclasses they are, once per request inside ``EngineCoreRequest`` (decoding runs their
``__post_init__`` checks again, which accept what they produced); the step output is the
scheduler's own columnar ``EngineCoreOutputs`` (``pagellm.core.sched_output``), numpy
arrays (logprobs) as (dtype, shape, bytes).

client -> core: ``EngineCoreRequest``, ``AbortRequests``, ``UtilityCall``
core -> client: ``EngineReady`` (once, after start-up), ``EngineCoreOutputs`` (after each
step that produced something: request ids, new-token counts, the tokens flattened, finish
reasons, logprob arrays, with the core's ``EngineStats``), ``UtilityResult``, ``EngineDead``
(last message before the core exits on an error)
"""

from __future__ import annotations

from typing import Literal

import msgspec

from pagellm.core.request import Request
from pagellm.core.sched_output import EngineCoreOutputs, decode_array, encode_array
from pagellm.core.stats import EngineStats
from pagellm.lora.request import LoRARequest
from pagellm.sampling_params import SamplingParams

# ---- client -> core ------------------------------------------------------------------------


class EngineCoreRequest(msgspec.Struct, tag="add", array_like=True):
    """One core request (an n > 1 prompt sends one per child)."""
    request_id: str
    prompt_token_ids: list[int]
    sampling_params: SamplingParams
    max_tokens: int                  # resolved: never None here
    eos_token_id: int | None
    arrival_time: float
    priority: int = 0
    group_id: str | None = None
    cache_salt: str | None = None
    lora_request: LoRARequest | None = None
    client_index: int = 0
    """The API server that sent it (``--api-server-count``): its outputs go back there."""

    @classmethod
    def from_request(cls, request: Request, client_index: int = 0) -> "EngineCoreRequest":
        return cls(request.request_id, request.prompt_token_ids, request.sampling_params,
                   request.max_tokens, request.eos_token_id, request.arrival_time,
                   request.priority, request.group_id, request.cache_salt, request.lora_request,
                   client_index)

    def to_request(self) -> Request:
        """The scheduler's ``Request`` for this message."""
        return Request(self.request_id, self.prompt_token_ids, self.sampling_params,
                       self.max_tokens, self.eos_token_id, self.arrival_time, self.priority,
                       group_id=self.group_id, cache_salt=self.cache_salt,
                       lora_request=self.lora_request)


class AbortRequests(msgspec.Struct, tag="abort", array_like=True):
    request_ids: list[str]
    finished: bool = False
    """The requests already finished in the API process (a stop string matched there): the
    core frees them, and this is no abort in the log."""


UtilityMethod = Literal["stats", "ping", "shutdown"]


class UtilityCall(msgspec.Struct, tag="utility", array_like=True):
    """A call answered by one ``UtilityResult`` with the same ``call_id``. ``shutdown``
    aborts every request, answers, and ends the core process with exit code 0."""
    call_id: int
    method: UtilityMethod
    client_index: int = 0
    """The API server that called: the result goes back there."""


ClientMessage = EngineCoreRequest | AbortRequests | UtilityCall

# ---- core -> client ------------------------------------------------------------------------


class UtilityResult(msgspec.Struct, tag="result", array_like=True):
    call_id: int
    stats: EngineStats | None = None        # for "stats" calls


class EngineReady(msgspec.Struct, tag="ready", array_like=True):
    """Sent once the model is loaded and the KV cache allocated."""
    vocab_size: int
    num_blocks: int
    pid: int
    num_swap_blocks: int = 0        # CPU swap blocks (0 unless preemption_mode='swap')


class EngineDead(msgspec.Struct, tag="dead", array_like=True):
    """The core failed (at start-up or in a step) and exits non-zero after sending this."""
    error: str                       # the exception, one line
    traceback: str = ""
    client_error: bool = False       # a ClientError at start-up (e.g. the KV cache does not fit)


CoreMessage = EngineReady | EngineCoreOutputs | UtilityResult | EngineDead

# One encoder per process is enough; decoders are typed by direction.
encoder = msgspec.msgpack.Encoder(enc_hook=encode_array)
client_message_decoder = msgspec.msgpack.Decoder(ClientMessage)
core_message_decoder = msgspec.msgpack.Decoder(CoreMessage, dec_hook=decode_array)
