"""``InputBatch``: the runner's persistent rows follow the scheduler's diffs exactly (rows
taken and given back, tokens appended, block tables extended), and a step's flattened inputs
(token ids, positions, slot mapping, sampling rows) are read off those rows."""

from __future__ import annotations

import numpy as np
import torch

from pagellm.core.sched_output import CachedRequestData, NewRequestData, SchedulerOutput
from pagellm.sampling_params import SamplingParams
from pagellm.worker.input_batch import InputBatch
from tests.unit.core.builders import make_request, make_scheduler, play_runner

CPU = torch.device("cpu")
GREEDY = SamplingParams(temperature=0.0)


def sched_output(new=(), cached=None, num_scheduled=None, finished=(),
                 preempted=()) -> SchedulerOutput:
    num_scheduled = num_scheduled or {}
    return SchedulerOutput(list(new), cached or CachedRequestData(), num_scheduled,
                           sum(num_scheduled.values()),
                           set(finished), preempted_req_ids=set(preempted))


def two_request_batch() -> InputBatch:
    """Rows 0 and 1: "a" (5-token prompt over blocks 3, 7) and "b" (2 tokens, block 1)."""
    batch = InputBatch(max_num_reqs=4, max_model_len=16, block_size=4)
    batch.apply(sched_output(
        new=[NewRequestData("a", [10, 11, 12, 13, 14], 5, GREEDY, [3, 7], 0),
             NewRequestData("b", [20, 21], 2, SamplingParams(temperature=0.5, top_k=3), [1], 0)],
        num_scheduled={"a": 5, "b": 2}))
    return batch


def test_new_requests_take_rows_and_write_their_state():
    batch = two_request_batch()
    assert batch.row_of == {"a": 0, "b": 1}
    assert batch.free_rows == [3, 2]
    assert batch.token_ids[0, :6].tolist() == [10, 11, 12, 13, 14, 0]
    assert batch.token_ids[1, :3].tolist() == [20, 21, 0]
    assert batch.num_tokens.tolist() == [5, 2, 0, 0]
    assert batch.num_prompt_tokens.tolist() == [5, 2, 0, 0]
    assert batch.num_computed.tolist() == [0, 0, 0, 0]
    assert batch.block_table.tolist() == [[3, 7, 0, 0], [1, 0, 0, 0], [0] * 4, [0] * 4]
    assert batch.num_blocks.tolist() == [2, 1, 0, 0]
    assert batch.temperature.tolist() == [0.0, 0.5, 0.0, 0.0]
    assert batch.top_k.tolist() == [0, 3, 0, 0]
    assert batch.sampling_params[:2] == [GREEDY, SamplingParams(temperature=0.5, top_k=3)]


def test_prefill_step_inputs():
    batch = two_request_batch()
    sched = sched_output(num_scheduled={"a": 5, "b": 2})
    inputs = batch.build_step_inputs(sched, CPU)
    assert inputs.request_ids == ["a", "b"] and inputs.rows.tolist() == [0, 1]
    assert inputs.input_ids.tolist() == [10, 11, 12, 13, 14, 20, 21]
    assert inputs.positions.tolist() == [0, 1, 2, 3, 4, 0, 1]
    meta = inputs.attn_metadata
    # a's tokens 0..3 fill block 3 (slots 12..15), token 4 opens block 7 (slot 28)
    assert meta.slot_mapping.tolist() == [12, 13, 14, 15, 28, 4, 5]
    assert meta.query_start_loc.tolist() == [0, 5, 7] and meta.seq_lens.tolist() == [5, 2]
    assert meta.block_tables.tolist() == [[3, 7], [1, 0]]
    assert (meta.num_reqs, meta.num_tokens, meta.max_query_len, meta.max_seq_len) == (2, 7, 5, 5)
    assert inputs.sample_rows == [0, 1] and inputs.logits_indices.tolist() == [4, 6]
    assert (inputs.starts, inputs.counts) == ([0, 0], [5, 2])


def test_sampled_tokens_append_and_decode_reads_them():
    batch = two_request_batch()
    batch.append_sampled(np.array([0, 1]), [15, 22])
    assert batch.num_tokens.tolist() == [6, 3, 0, 0]
    assert batch.output_token_ids(0) == [15] and batch.output_token_ids(1) == [22]
    assert batch.prompt_token_ids(0).tolist() == [10, 11, 12, 13, 14]
    sched = sched_output(cached=CachedRequestData(["a", "b"], [5, 2], [None, None]),
                         num_scheduled={"a": 1, "b": 1})
    batch.apply(sched)
    assert batch.num_computed.tolist() == [5, 2, 0, 0]
    inputs = batch.build_step_inputs(sched, CPU)
    assert inputs.input_ids.tolist() == [15, 22] and inputs.positions.tolist() == [5, 2]
    assert inputs.attn_metadata.slot_mapping.tolist() == [7 * 4 + 1, 1 * 4 + 2]
    assert inputs.attn_metadata.seq_lens.tolist() == [6, 3]
    assert inputs.attn_metadata.is_all_decode
    assert inputs.sample_rows == [0, 1] and inputs.logits_indices.tolist() == [0, 1]


def test_cached_requests_extend_their_block_tables():
    batch = two_request_batch()
    batch.apply(sched_output(cached=CachedRequestData(["b"], [2], [[9, 11]]),
                             num_scheduled={"b": 1}))
    assert batch.block_table[1].tolist() == [1, 9, 11, 0]
    assert batch.num_blocks.tolist() == [2, 3, 0, 0]
    assert batch.block_table[0].tolist() == [3, 7, 0, 0]      # a untouched
    assert batch.num_computed.tolist() == [0, 2, 0, 0]


def test_finished_and_preempted_rows_are_given_back_and_reused():
    batch = two_request_batch()
    batch.apply(sched_output(
        new=[NewRequestData("c", [30, 31, 32], 3, SamplingParams(seed=5), [2], 0)],
        finished=["a"], num_scheduled={"c": 3}))
    assert batch.row_of == {"b": 1, "c": 0}                  # c reuses a's row
    assert batch.token_ids[0, :3].tolist() == [30, 31, 32]
    assert (batch.num_tokens[0], batch.num_prompt_tokens[0], batch.num_blocks[0]) == (3, 3, 1)
    assert batch.block_table[0, 0] == 2
    assert batch.seeded.tolist() == [True, False, False, False]
    batch.apply(sched_output(preempted=["b"], finished=["c"]))
    assert batch.row_of == {} and sorted(batch.free_rows) == [0, 1, 2, 3]
    assert batch.sampling_params == [None] * 4
    # Unknown ids (e.g. a request finished before it ever reached the runner) are ignored.
    batch.apply(sched_output(finished=["never-seen"]))
    assert sorted(batch.free_rows) == [0, 1, 2, 3]


def test_resumed_and_prefix_hit_requests_start_after_their_computed_tokens():
    batch = InputBatch(max_num_reqs=2, max_model_len=16, block_size=4)
    # 6 tokens, the first 4 already in block 5 (a prefix hit); this step runs 2 of the rest.
    sched = sched_output(new=[NewRequestData("r", [1, 2, 3, 4, 5, 6, 7], 6, GREEDY, [5, 8], 4)],
                         num_scheduled={"r": 2})
    batch.apply(sched)
    inputs = batch.build_step_inputs(sched, CPU)
    assert inputs.input_ids.tolist() == [5, 6] and inputs.positions.tolist() == [4, 5]
    assert inputs.attn_metadata.slot_mapping.tolist() == [32, 33]
    assert inputs.sample_rows == []                          # token 7 is not computed yet
    assert batch.output_token_ids(0) == [7]


def test_a_partial_prefill_chunk_samples_nothing():
    batch = InputBatch(max_num_reqs=2, max_model_len=16, block_size=4)
    sched = sched_output(new=[NewRequestData("long", list(range(40, 50)), 10, GREEDY, [0, 1, 2], 0),
                              NewRequestData("short", [60, 61], 2, GREEDY, [3], 0)],
                         num_scheduled={"long": 4, "short": 2})
    batch.apply(sched)
    inputs = batch.build_step_inputs(sched, CPU)
    assert inputs.input_ids.tolist() == [40, 41, 42, 43, 60, 61]
    assert inputs.sample_rows == [1] and inputs.logits_indices.tolist() == [5]
    assert inputs.attn_metadata.seq_lens.tolist() == [4, 2]


def test_batch_tracks_a_real_scheduler_through_preemption():
    """Driven by a real scheduler short of blocks (recompute preemption): after every step the
    rows hold exactly the running requests, their tokens, block tables and computed counts."""
    scheduler = make_scheduler(num_blocks=10, block_size=4, max_num_batched_tokens=16)
    for index, length in enumerate((7, 3, 10, 5)):
        scheduler.add_request(make_request(f"r{index}", length, max_tokens=12, eos=False))
    batch = InputBatch(max_num_reqs=16, max_model_len=256, block_size=4)
    num_preempted = 0
    for step in range(200):
        if not scheduler.has_unfinished_requests():
            break
        sched = scheduler.schedule()
        num_preempted += sched.num_preempted
        batch.apply(sched)
        assert set(batch.row_of) == {r.request_id for r in scheduler.running}
        for request in scheduler.running:
            row = batch.row_of[request.request_id]
            scheduled = sched.num_scheduled_tokens.get(request.request_id, 0)
            assert batch.num_computed[row] == request.num_computed_tokens - scheduled
            assert batch.token_ids[row, :batch.num_tokens[row]].tolist() == request.all_token_ids
            blocks = scheduler.kv.block_ids(request.request_id)
            assert batch.block_table[row, :batch.num_blocks[row]].tolist() == blocks
        if sched.is_empty:
            continue
        inputs = batch.build_step_inputs(sched, CPU)
        runner_output = play_runner(scheduler, sched, {f"r{i}": 50 + step + i for i in range(4)})
        rows = np.array([batch.row_of[r] for r in runner_output.req_ids], dtype=np.int64)
        assert rows.tolist() == inputs.rows[inputs.sample_rows].tolist()
        batch.append_sampled(rows, runner_output.sampled_token_ids)
        scheduler.update_from_output(sched, runner_output)
    assert not scheduler.has_unfinished_requests()
    assert num_preempted > 0
