"""The messages between the API process and the engine core: every type round-trips through
msgpack (and back into the core's own types), unknown messages are rejected, and nothing on
that path pickles."""

from __future__ import annotations

import ast
from pathlib import Path

import msgspec
import pytest

import pagellm.engine
from pagellm.core.request import Request
from pagellm.core.sched_output import EngineCoreOutput, TopLogprobs
from pagellm.core.stats import EngineStats
from pagellm.engine.messages import (AbortRequests, EngineCoreOutputs, EngineDead, EngineReady,
                                     UtilityCall, UtilityResult, client_message_decoder,
                                     core_message_decoder, encoder, output_from_msg,
                                     output_to_msg, request_from_msg, request_to_msg)
from pagellm.sampling_params import SamplingParams

STATS = EngineStats(num_running=2, num_waiting=1, kv_cache_usage=0.25, num_preemptions=3,
                    prefix_cache_queries=40, prefix_cache_hits=16, num_steps=9,
                    prompt_tokens=30, generation_tokens=12)


def _request() -> Request:
    params = SamplingParams(n=1, temperature=0.7, top_p=0.9, top_k=5, min_p=0.1, seed=2**62,
                            stop=["\n\n", "END"], stop_token_ids=[7, 9], max_tokens=None,
                            min_tokens=2, logprobs=3, prompt_logprobs=1, logit_bias={"5": -2.5},
                            include_stop_str_in_output=True, output_kind="delta")
    params.all_stop_token_ids = {0, 2}
    return Request("1_abc", [5, 6, 7], params, max_tokens=100, eos_token_id=0,
                   arrival_time=123.5, priority=-1, group_id="abc")


def _roundtrip(message, decoder):
    decoded = decoder.decode(encoder.encode(message))
    assert type(decoded) is type(message) and decoded == message
    return decoded


def test_request_roundtrips_into_an_equal_core_request():
    request = _request()
    decoded = request_from_msg(_roundtrip(request_to_msg(request), client_message_decoder))
    for name in ("request_id", "prompt_token_ids", "max_tokens", "eos_token_id", "arrival_time",
                 "priority", "group_id"):
        assert getattr(decoded, name) == getattr(request, name), name
    assert decoded.sampling_params == request.sampling_params
    assert decoded.sampling_params.all_stop_token_ids == {0, 2}
    assert decoded.sampling_params.logit_bias == {5: -2.5}


def test_control_messages_roundtrip():
    _roundtrip(AbortRequests(["a", "b"]), client_message_decoder)
    for method in ("stats", "ping", "shutdown"):
        _roundtrip(UtilityCall(4, method), client_message_decoder)
    _roundtrip(UtilityResult(4, stats=STATS), core_message_decoder)
    _roundtrip(UtilityResult(5), core_message_decoder)
    _roundtrip(EngineReady(vocab_size=259, num_blocks=512, pid=42), core_message_decoder)
    _roundtrip(EngineDead("RuntimeError: x", "Traceback ...", client_error=False),
               core_message_decoder)
    decoded = core_message_decoder.decode(encoder.encode(UtilityResult(6, stats=STATS)))
    assert isinstance(decoded.stats, EngineStats) and decoded.stats == STATS


def test_outputs_roundtrip_into_equal_core_outputs():
    logprobs = TopLogprobs([[4, 4, 8]], [[-0.5, -0.5, -1.25]], [1])
    prompt_logprobs = TopLogprobs([[6, 5], [7, 7]], [[-3.0, -1.0], [-0.1, -0.1]], [2, 1])
    outputs = [
        EngineCoreOutput("a", [4], logprobs, (1, prompt_logprobs), num_cached_tokens=16,
                         first_scheduled_time=10.5, num_preemptions=1),
        EngineCoreOutput("b", [9], finish_reason="stop", stop_reason=9),
        EngineCoreOutput("c", [], finish_reason="stop", stop_reason="END"),
        EngineCoreOutput("d", [3], finish_reason="length"),
    ]
    batch = EngineCoreOutputs([output_to_msg(o) for o in outputs], STATS, 99.0)
    decoded = _roundtrip(batch, core_message_decoder)
    assert [output_from_msg(m) for m in decoded.outputs] == outputs


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
