"""The messages between the API process and the engine core: every message type round-trips
through msgpack with every field set away from its default (samples are built from the
types, so a field added later is covered), the core's own types (Request, SamplingParams,
EngineCoreOutput) come back equal field for field, unknown messages are rejected, and nothing
on that path pickles."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import typing
from pathlib import Path

import msgspec
import pytest

import pagellm.engine
from pagellm.lora.request import LoRARequest
from pagellm.core.request import Request
from pagellm.core.sched_output import EngineCoreOutput, TopLogprobs
from pagellm.core.stats import EngineStats
from pagellm.engine.messages import (ClientMessage, CoreMessage, EngineCoreOutputMsg,
                                     EngineCoreOutputs, EngineCoreRequest, EngineReady,
                                     SamplingParamsMsg, UtilityResult, client_message_decoder,
                                     core_message_decoder, encoder, output_from_msg,
                                     output_to_msg, request_from_msg, request_to_msg)
from pagellm.sampling_params import SamplingParams, StructuredOutputsParams


# ---- samples with every field away from its default, so a dropped field shows ---------------


def sample_value(info: msgspec.inspect.Type, default=msgspec.NODEFAULT, seed: int = 1):
    """A value of the msgspec type ``info`` that differs from ``default`` (optional types get
    a value, never None; containers one element). Raises TypeError for a type it cannot make."""
    mi = msgspec.inspect
    if isinstance(info, mi.BoolType):
        return not default if isinstance(default, bool) else True
    if isinstance(info, mi.IntType):
        return 1000 + seed
    if isinstance(info, mi.FloatType):
        return 0.5 + seed
    if isinstance(info, mi.StrType):
        return f"s{seed}"
    if isinstance(info, mi.LiteralType):
        return next(v for v in info.values if v != default)
    if isinstance(info, mi.UnionType):
        return sample_value(next(t for t in info.types if not isinstance(t, mi.NoneType)),
                            default, seed)
    if isinstance(info, mi.ListType):
        return [sample_value(info.item_type, seed=seed + 1)]
    if isinstance(info, (mi.SetType, mi.FrozenSetType)):
        return {sample_value(info.item_type, seed=seed + 1)}
    if isinstance(info, mi.TupleType):
        return tuple(sample_value(t, seed=seed + i) for i, t in enumerate(info.item_types))
    if isinstance(info, mi.DictType):
        return {sample_value(info.key_type, seed=seed): sample_value(info.value_type, seed=seed)}
    if isinstance(info, mi.StructType):
        return sample_struct(info.cls, seed)
    if isinstance(info, mi.DataclassType) and info.cls is StructuredOutputsParams:
        # exactly one constraint may be set; the options away from their defaults
        return StructuredOutputsParams(regex=f"s{seed}", disable_any_whitespace=True,
                                       disable_additional_properties=True,
                                       whitespace_pattern="")
    raise TypeError(f"no sample for {info}: extend sample_value")


def sample_struct(cls: type[msgspec.Struct], seed: int = 1) -> msgspec.Struct:
    """An instance of ``cls`` with every field set away from its default (nested too)."""
    fields = msgspec.inspect.type_info(cls).fields
    return cls(**{f.name: sample_value(f.type, f.default, seed + i) for i, f in enumerate(fields)})


def assert_no_field_at_default(sample, reference) -> None:
    """Every field of ``sample`` differs from ``reference`` (an instance built with the
    defaults): a field the test leaves at its default could be dropped unnoticed."""
    names = (sample.__struct_fields__ if isinstance(sample, msgspec.Struct)
             else [f.name for f in dataclasses.fields(sample)])
    at_default = [n for n in names if getattr(sample, n) == getattr(reference, n)]
    assert not at_default, f"{type(sample).__name__} sample leaves {at_default} at the default"


def assert_fields_equal(decoded, original, names) -> None:
    for name in names:
        assert getattr(decoded, name) == getattr(original, name), name


def _params() -> SamplingParams:
    params = SamplingParams(n=2, presence_penalty=0.5, frequency_penalty=-0.5,
                            repetition_penalty=1.1, temperature=0.7, top_p=0.9, top_k=5, min_p=0.1,
                            seed=2**62, stop=["\n\n", "END"], stop_token_ids=[7, 9],
                            ignore_eos=True, max_tokens=None, min_tokens=2, logprobs=3,
                            prompt_logprobs=1, detokenize=False, skip_special_tokens=False,
                            spaces_between_special_tokens=False, include_stop_str_in_output=True,
                            logit_bias={"5": -2.5}, output_kind="delta",
                            structured_outputs=StructuredOutputsParams(
                                json={"type": "object"}, disable_any_whitespace=True))
    params.all_stop_token_ids = {0, 2}
    return params


REQUEST_ARGS = [p for p in inspect.signature(Request.__init__).parameters if p != "self"]


def _request() -> Request:
    return Request("1_abc", [5, 6, 7], _params(), max_tokens=100, eos_token_id=0,
                   arrival_time=123.5, priority=-1, group_id="abc", cache_salt="salt",
                   lora_request=LoRARequest("a1", 3, "/adapters/a1", "base"))


def _output() -> EngineCoreOutput:
    return EngineCoreOutput(
        "a", [4], TopLogprobs([[4, 4, 8]], [[-0.5, -0.5, -1.25]], [1]),
        (1, TopLogprobs([[6, 5], [7, 7]], [[-3.0, -1.0], [-0.1, -0.1]], [2, 1])),
        finish_reason="stop", stop_reason=9, num_cached_tokens=16, first_scheduled_time=10.5,
        num_preemptions=1)


def _roundtrip(message, decoder):
    decoded = decoder.decode(encoder.encode(message))
    assert type(decoded) is type(message) and decoded == message
    return decoded


def test_samples_set_every_field():
    assert_no_field_at_default(_params(), SamplingParams())
    assert_no_field_at_default(_output(), EngineCoreOutput("", []))
    request, reference = _request(), Request("", [], SamplingParams(), 0)
    assert [n for n in REQUEST_ARGS if getattr(request, n) == getattr(reference, n)] == []


def test_message_types_carry_their_core_types_field_for_field():
    assert list(SamplingParamsMsg.__struct_fields__) == [
        f.name for f in dataclasses.fields(SamplingParams)]
    assert list(EngineCoreOutputMsg.__struct_fields__) == [
        f.name for f in dataclasses.fields(EngineCoreOutput)]
    assert list(EngineCoreRequest.__struct_fields__) == REQUEST_ARGS


def test_request_roundtrips_into_an_equal_core_request():
    request = _request()
    decoded = request_from_msg(_roundtrip(request_to_msg(request), client_message_decoder))
    assert_fields_equal(decoded, request, [n for n in REQUEST_ARGS if n != "sampling_params"])
    assert_fields_equal(decoded.sampling_params, request.sampling_params,
                        [f.name for f in dataclasses.fields(SamplingParams)])
    assert decoded.sampling_params.logit_bias == {5: -2.5}
    assert decoded.sampling_params.structured_outputs == StructuredOutputsParams(
        json={"type": "object"}, disable_any_whitespace=True)


def test_outputs_roundtrip_into_equal_core_outputs():
    outputs = [_output(), EngineCoreOutput("b", [9], finish_reason="stop", stop_reason="END"),
               EngineCoreOutput("c", [])]
    batch = EngineCoreOutputs([output_to_msg(o) for o in outputs], sample_struct(EngineStats), 99.0)
    decoded = [output_from_msg(m) for m in _roundtrip(batch, core_message_decoder).outputs]
    for got, sent in zip(decoded, outputs, strict=True):
        assert_fields_equal(got, sent, [f.name for f in dataclasses.fields(EngineCoreOutput)])


@pytest.mark.parametrize("message_type", [*typing.get_args(ClientMessage),
                                          *typing.get_args(CoreMessage)],
                         ids=lambda t: t.__name__)
def test_every_message_roundtrips_with_every_field_set(message_type):
    message = sample_struct(message_type)
    assert_no_field_at_default(message, message_type(**{
        f.name: f.default if f.default is not msgspec.NODEFAULT else None
        for f in msgspec.inspect.type_info(message_type).fields}))
    decoder = (client_message_decoder if message_type in typing.get_args(ClientMessage)
               else core_message_decoder)
    decoded = _roundtrip(message, decoder)
    assert msgspec.to_builtins(decoded) == msgspec.to_builtins(message)


def test_stats_roundtrip_with_every_field_set():
    stats = sample_struct(EngineStats)
    decoded = core_message_decoder.decode(encoder.encode(UtilityResult(6, stats=stats))).stats
    assert isinstance(decoded, EngineStats)
    assert_fields_equal(decoded, stats, EngineStats.__struct_fields__)
    _roundtrip(UtilityResult(5), core_message_decoder)


@pytest.mark.parametrize("raw", [
    msgspec.msgpack.encode({"request_ids": ["a"]}),          # untagged
    msgspec.msgpack.encode(["nonsense", 1]),                 # unknown tag
    msgspec.msgpack.encode(["utility", 1, "exec"]),          # not a utility method
])
def test_decoder_rejects_unknown_messages(raw):
    with pytest.raises(msgspec.ValidationError):
        client_message_decoder.decode(raw)


def test_core_messages_do_not_decode_as_client_messages():
    with pytest.raises(msgspec.ValidationError):
        client_message_decoder.decode(encoder.encode(EngineReady(1, 1, 1)))


PROCESS_BOUNDARY_MODULES = ("messages.py", "core_proc.py", "core_client.py", "async_engine.py")
PICKLING_MODULES = {"pickle", "cloudpickle", "dill", "_pickle", "copyreg"}
PICKLING_CALLS = {"send_pyobj", "recv_pyobj", "send_serialized", "recv_serialized"}


@pytest.mark.parametrize("name", PROCESS_BOUNDARY_MODULES)
def test_nothing_on_the_process_boundary_pickles(name):
    tree = ast.parse((Path(pagellm.engine.__file__).parent / name).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            assert not {a.name.split(".")[0] for a in node.names} & PICKLING_MODULES
        elif isinstance(node, ast.ImportFrom):
            assert (node.module or "").split(".")[0] not in PICKLING_MODULES
        elif isinstance(node, ast.Attribute):
            assert node.attr not in PICKLING_CALLS, f"{name} calls {node.attr}"
