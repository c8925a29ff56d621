"""The messages between the API process and the engine core: every message type round-trips
through msgpack with every field set away from its default (samples are built from the
types, so a field added later is covered); the core's own types travel as they are (no
mirror types): a Request comes back equal field for field through ``EngineCoreRequest``, a
scheduler's columnar ``EngineCoreOutputs`` (logprob arrays included) comes back equal; unknown
messages are rejected, and nothing on that path pickles."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import typing
from pathlib import Path

import msgspec
import numpy as np
import pytest

import pagellm.engine
from pagellm.core.request import Request
from pagellm.core.sched_output import (EngineCoreOutputs, ModelRunnerOutput, TopLogprobs)
from pagellm.core.stats import EngineStats
from pagellm.engine import messages
from pagellm.engine.messages import (ClientMessage, CoreMessage, EngineCoreRequest, EngineReady,
                                     UtilityResult, client_message_decoder,
                                     core_message_decoder, encoder)
from pagellm.lora.request import LoRARequest
from pagellm.sampling_params import SamplingParams, StructuredOutputsParams
from tests.helpers.message_samples import (assert_same, leaves_at_default, sample_params,
                                           sample_struct)
from tests.unit.core.builders import make_request, make_scheduler

REQUEST_ARGS = [p for p in inspect.signature(Request.__init__).parameters if p != "self"]


def _request() -> Request:
    return Request("1_abc", [5, 6, 7], sample_params(), max_tokens=100, eos_token_id=0,
                   arrival_time=123.5, priority=-1, group_id="abc", cache_salt="salt",
                   lora_request=LoRARequest("a1", 3, "/adapters/a1", "base"))


def _roundtrip(message, decoder):
    decoded = decoder.decode(encoder.encode(message))
    assert_same(decoded, message)
    return decoded


def test_samples_set_every_field():
    params, reference = sample_params(), SamplingParams()
    assert [f.name for f in dataclasses.fields(params)
            if getattr(params, f.name) == getattr(reference, f.name)] == []
    request, reference = _request(), Request("", [], SamplingParams(), 0)
    assert [n for n in REQUEST_ARGS if getattr(request, n) == getattr(reference, n)] == []


def test_the_wire_carries_the_core_types_themselves():
    """No mirror types: the request message holds SamplingParams and LoRARequest, the output
    message is the scheduler's own EngineCoreOutputs, and messages.py defines no Struct
    besides the control messages."""
    hints = typing.get_type_hints(EngineCoreRequest)
    assert hints["sampling_params"] is SamplingParams
    assert hints["lora_request"] == LoRARequest | None
    assert EngineCoreOutputs in typing.get_args(CoreMessage)
    # the Request's own fields, plus the routing field of several API servers
    assert list(EngineCoreRequest.__struct_fields__) == [*REQUEST_ARGS, "client_index"]
    defined = {name for name, value in vars(messages).items()
               if isinstance(value, type) and issubclass(value, msgspec.Struct)
               and value.__module__ == messages.__name__}
    assert defined == {"EngineCoreRequest", "AbortRequests", "UtilityCall", "UtilityResult",
                       "EngineReady", "EngineDead"}


def test_request_roundtrips_into_an_equal_core_request():
    request = _request()
    decoded = _roundtrip(EngineCoreRequest.from_request(request),
                         client_message_decoder).to_request()
    for name in REQUEST_ARGS:
        if name != "sampling_params":
            assert getattr(decoded, name) == getattr(request, name), name
    for field in dataclasses.fields(SamplingParams):
        assert getattr(decoded.sampling_params, field.name) == \
            getattr(request.sampling_params, field.name), field.name
    assert decoded.sampling_params.logit_bias == {5: -2.5}
    assert decoded.sampling_params.structured_outputs == StructuredOutputsParams(
        json={"type": "object"}, disable_any_whitespace=True)


def _logprobs(rows: int, k: int, seed: int) -> TopLogprobs:
    ids = np.arange(seed, seed + rows * (k + 1), dtype=np.int64).reshape(rows, k + 1)
    return TopLogprobs(ids, -ids.astype(np.float32) / 7, np.arange(1, rows + 1, dtype=np.int64))


def test_scheduler_outputs_roundtrip_columns_and_logprob_rows():
    """A real step: a finished request (EOS), a running one, logprobs rows of the kept tokens
    and prompt logprobs; the message is what ``update_from_output`` returned, unchanged."""
    scheduler = make_scheduler()
    for request_id in ("a", "b"):
        scheduler.add_request(make_request(request_id, 3, max_tokens=8, logprobs=2))
    sched = scheduler.schedule()
    runner = ModelRunnerOutput(["a", "b"], [2, 9], logprobs=_logprobs(2, 2, 40),
                               prompt_logprobs={"b": (1, _logprobs(2, 1, 70))})
    outputs = scheduler.update_from_output(sched, runner)
    assert outputs.req_ids == ["a", "b"] and outputs.new_token_ids == [2, 9]
    assert outputs.finish_reasons == ["stop", None] and outputs.num_new_tokens == [1, 1]
    assert outputs.new_logprobs.token_ids.tolist() == [[40, 41, 42], [43, 44, 45]]
    outputs.stats, outputs.timestamp = sample_struct(EngineStats), 99.0
    _roundtrip(outputs, core_message_decoder)


@pytest.mark.parametrize("message_type", [*typing.get_args(ClientMessage),
                                          *typing.get_args(CoreMessage)],
                         ids=lambda t: t.__name__)
def test_every_message_roundtrips_with_every_field_set(message_type):
    message = sample_struct(message_type)
    assert leaves_at_default(message) == []
    decoder = (client_message_decoder if message_type in typing.get_args(ClientMessage)
               else core_message_decoder)
    _roundtrip(message, decoder)


def test_a_dropped_field_would_show():
    message = sample_struct(EngineCoreOutputs)
    changed = msgspec.structs.replace(message, num_new_tokens=[7])
    with pytest.raises(AssertionError, match="message.num_new_tokens"):
        assert_same(core_message_decoder.decode(encoder.encode(changed)), message)


def test_stats_roundtrip_with_every_field_set():
    stats = sample_struct(EngineStats)
    decoded = core_message_decoder.decode(encoder.encode(UtilityResult(6, stats=stats))).stats
    assert_same(decoded, stats)
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
