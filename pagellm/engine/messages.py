"""Typed messages between the API-server process and the engine-core process.

Everything that crosses the process boundary is one of the msgspec Structs below, encoded
with ``msgspec.msgpack`` (never pickle): a tagged union per direction, so the decoder
rejects anything that is not a known message. The helpers convert to and from the core's
own types (``Request``, ``EngineCoreOutput``, ``EngineStats``).

client -> core: ``EngineCoreRequest``, ``AbortRequests``, ``UtilityCall``
core -> client: ``EngineReady`` (once, after start-up), ``EngineCoreOutputs`` (after each
step that produced something), ``UtilityResult``, ``EngineDead`` (last message before the
core exits on an error)
"""

from __future__ import annotations

from typing import Literal

import msgspec

from pagellm.core.request import Request
from pagellm.core.sched_output import EngineCoreOutput, TopLogprobs
from pagellm.core.stats import EngineStats
from pagellm.lora.request import LoRARequest
from pagellm.sampling_params import SamplingParams, StructuredOutputsParams

# ---- client -> core ------------------------------------------------------------------------


class SamplingParamsMsg(msgspec.Struct, array_like=True, forbid_unknown_fields=True):
    """``SamplingParams`` field for field; ``all_stop_token_ids`` travels as a list."""
    n: int
    presence_penalty: float
    frequency_penalty: float
    repetition_penalty: float
    temperature: float
    top_p: float
    top_k: int
    min_p: float
    seed: int | None
    stop: list[str]
    stop_token_ids: list[int]
    ignore_eos: bool
    max_tokens: int | None
    min_tokens: int
    logprobs: int | None
    prompt_logprobs: int | None
    detokenize: bool
    skip_special_tokens: bool
    spaces_between_special_tokens: bool
    include_stop_str_in_output: bool
    logit_bias: dict[int, float] | None
    structured_outputs: StructuredOutputsParams | None
    output_kind: str
    all_stop_token_ids: list[int]


class LoRARequestMsg(msgspec.Struct, array_like=True):
    """``LoRARequest`` field for field."""
    lora_name: str
    lora_int_id: int
    lora_path: str
    base_model_name: str | None = None


class EngineCoreRequest(msgspec.Struct, tag="add", array_like=True):
    """One core request (an n > 1 prompt sends one per child)."""
    request_id: str
    prompt_token_ids: list[int]
    sampling_params: SamplingParamsMsg
    max_tokens: int                  # resolved: never None here
    eos_token_id: int | None
    arrival_time: float
    priority: int = 0
    group_id: str | None = None
    cache_salt: str | None = None
    lora_request: LoRARequestMsg | None = None


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


ClientMessage = EngineCoreRequest | AbortRequests | UtilityCall

# ---- core -> client ------------------------------------------------------------------------


class TopLogprobsMsg(msgspec.Struct, array_like=True):
    token_ids: list[list[int]]
    logprobs: list[list[float]]
    ranks: list[int]


class EngineCoreOutputMsg(msgspec.Struct, array_like=True):
    """``EngineCoreOutput`` field for field."""
    request_id: str
    new_token_ids: list[int]
    new_logprobs: TopLogprobsMsg | None = None
    new_prompt_logprobs: tuple[int, TopLogprobsMsg] | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    num_cached_tokens: int = 0
    first_scheduled_time: float | None = None
    num_preemptions: int = 0


class EngineCoreOutputs(msgspec.Struct, tag="outputs", array_like=True):
    outputs: list[EngineCoreOutputMsg]
    stats: EngineStats
    timestamp: float


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

# ---- conversions ---------------------------------------------------------------------------


def params_to_msg(params: SamplingParams) -> SamplingParamsMsg:
    fields = {name: getattr(params, name) for name in SamplingParamsMsg.__struct_fields__}
    fields["all_stop_token_ids"] = sorted(params.all_stop_token_ids)
    return SamplingParamsMsg(**fields)


def params_from_msg(msg: SamplingParamsMsg) -> SamplingParams:
    fields = {name: getattr(msg, name) for name in msg.__struct_fields__}
    fields["all_stop_token_ids"] = set(fields["all_stop_token_ids"])
    # Validated in the API process that built them; not checked a second time here.
    return SamplingParams.from_validated(**fields)


def request_to_msg(request: Request) -> EngineCoreRequest:
    return EngineCoreRequest(
        request.request_id, request.prompt_token_ids, params_to_msg(request.sampling_params),
        request.max_tokens, request.eos_token_id, request.arrival_time, request.priority,
        request.group_id, request.cache_salt, _lora_to_msg(request.lora_request))


def _lora_to_msg(lora_request) -> LoRARequestMsg | None:
    if lora_request is None:
        return None
    return LoRARequestMsg(lora_request.lora_name, lora_request.lora_int_id,
                          lora_request.lora_path, lora_request.base_model_name)


def request_from_msg(msg: EngineCoreRequest) -> Request:
    return Request(msg.request_id, msg.prompt_token_ids, params_from_msg(msg.sampling_params),
                   msg.max_tokens, msg.eos_token_id, msg.arrival_time, msg.priority,
                   group_id=msg.group_id, cache_salt=msg.cache_salt,
                   lora_request=None if msg.lora_request is None else LoRARequest(
                       msg.lora_request.lora_name, msg.lora_request.lora_int_id,
                       msg.lora_request.lora_path, msg.lora_request.base_model_name))


def _logprobs_to_msg(logprobs: TopLogprobs | None) -> TopLogprobsMsg | None:
    if logprobs is None:
        return None
    return TopLogprobsMsg(logprobs.token_ids, logprobs.logprobs, logprobs.ranks)


def _logprobs_from_msg(msg: TopLogprobsMsg | None) -> TopLogprobs | None:
    return None if msg is None else TopLogprobs(msg.token_ids, msg.logprobs, msg.ranks)


def output_to_msg(out: EngineCoreOutput) -> EngineCoreOutputMsg:
    prompt_logprobs = out.new_prompt_logprobs
    if prompt_logprobs is not None:
        prompt_logprobs = (prompt_logprobs[0], _logprobs_to_msg(prompt_logprobs[1]))
    return EngineCoreOutputMsg(
        out.request_id, out.new_token_ids, _logprobs_to_msg(out.new_logprobs), prompt_logprobs,
        out.finish_reason, out.stop_reason, out.num_cached_tokens, out.first_scheduled_time,
        out.num_preemptions)


def output_from_msg(msg: EngineCoreOutputMsg) -> EngineCoreOutput:
    prompt_logprobs = msg.new_prompt_logprobs
    if prompt_logprobs is not None:
        prompt_logprobs = (prompt_logprobs[0], _logprobs_from_msg(prompt_logprobs[1]))
    return EngineCoreOutput(
        msg.request_id, msg.new_token_ids, _logprobs_from_msg(msg.new_logprobs), prompt_logprobs,
        msg.finish_reason, msg.stop_reason, msg.num_cached_tokens, msg.first_scheduled_time,
        msg.num_preemptions)


# One encoder per process is enough; decoders are typed by direction.
encoder = msgspec.msgpack.Encoder()
client_message_decoder = msgspec.msgpack.Decoder(ClientMessage)
core_message_decoder = msgspec.msgpack.Decoder(CoreMessage)
