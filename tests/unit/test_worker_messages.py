"""The executor <-> worker messages (``pagellm.distributed.worker_proc``): every call and reply
type round-trips through msgpack with every field, nested ones included (SchedulerOutput with
its columnar CachedRequestData, ModelRunnerOutput with its logprob arrays, the grammar
bitmask), set away from its default; samples are built from the types, so a field added later
is covered. A real scheduler's steps round-trip too, and a request's SamplingParams cross
only with the step that brings the request, never with the steps after."""

from __future__ import annotations

import typing

import msgspec
import numpy as np
import pytest

from pagellm.core.sched_output import CachedRequestData, ModelRunnerOutput, TopLogprobs
from pagellm.distributed.worker_proc import (ExecuteModel, ExecutorCall, StepResult, WorkerReply,
                                             call_decoder, encoder, reply_decoder)
from tests.helpers.message_samples import MI, assert_same, leaves_at_default, sample
from tests.unit.core.builders import make_request, make_scheduler, play_runner


@pytest.mark.parametrize("message_type", typing.get_args(ExecutorCall) + typing.get_args(WorkerReply),
                         ids=lambda t: t.__name__)
def test_every_worker_message_roundtrips_with_every_field_set(message_type):
    message = sample(MI.type_info(message_type))
    assert leaves_at_default(message) == []
    decoder = call_decoder if message_type in typing.get_args(ExecutorCall) else reply_decoder
    assert_same(decoder.decode(encoder.encode(message)), message)


def test_a_dropped_field_would_show():
    message = sample(MI.type_info(typing.get_args(WorkerReply)[0]))
    changed = msgspec.structs.replace(message, rank=message.rank + 1)
    with pytest.raises(AssertionError, match="message.rank"):
        assert_same(reply_decoder.decode(encoder.encode(changed)), message)


def test_cached_request_columns_are_set_in_the_sample():
    cached = sample(MI.type_info(ExecuteModel)).scheduler_output.scheduled_cached_reqs
    assert isinstance(cached, CachedRequestData)
    assert all(len(column) == 1 for column in (cached.req_ids, cached.num_computed_tokens,
                                               cached.new_block_ids, cached.new_token_ids))


def test_scheduler_steps_roundtrip_and_params_cross_once():
    """Step 1 brings two requests whole (their SamplingParams inside); step 2 is the
    columns only: the params' stop string is not in its bytes."""
    scheduler = make_scheduler(block_size=4)
    for request_id in ("a", "b"):
        scheduler.add_request(make_request(request_id, 8, stop=["UNIQUE-STOP-MARK"]))
    first = scheduler.schedule()
    scheduler.update_from_output(first, play_runner(scheduler, first))
    second = scheduler.schedule()
    first_bytes, second_bytes = (encoder.encode(ExecuteModel(s)) for s in (first, second))
    assert b"UNIQUE-STOP-MARK" in first_bytes and b"UNIQUE-STOP-MARK" not in second_bytes
    assert second.scheduled_new_reqs == []
    assert second.scheduled_cached_reqs.req_ids == ["a", "b"]
    assert second.scheduled_cached_reqs.num_computed_tokens == [8, 8]
    # position 8 opens each request's third block
    assert second.scheduled_cached_reqs.new_block_ids == [
        scheduler.kv.block_ids(request_id)[2:] for request_id in ("a", "b")]
    assert all(len(ids) == 1 for ids in second.scheduled_cached_reqs.new_block_ids)
    for message, raw in ((ExecuteModel(first), first_bytes), (ExecuteModel(second), second_bytes)):
        assert_same(call_decoder.decode(raw), message)


def test_runner_output_with_drafts_and_logprobs_roundtrips():
    ids = np.arange(12, dtype=np.int64).reshape(4, 3)
    output = ModelRunnerOutput(["a", "b"], [5, 6, 7, 8], [3, 1],
                               TopLogprobs(ids, -ids.astype(np.float32), np.ones(4, np.int64)),
                               spec_token_ids=[[1, 2], []])
    decoded = reply_decoder.decode(encoder.encode(StepResult(0, output))).output
    assert_same(decoded, output)
    assert decoded.tokens_per_request() == [[5, 6, 7], [8]]
