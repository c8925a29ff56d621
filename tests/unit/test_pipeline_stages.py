"""Pipeline-parallel pieces that need no process group: the stage layer split (balanced,
remainder on the stages before the last, custom partition), its validation, and the input
batch taking the last stage's sampled tokens from the SchedulerOutput."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from pagellm import ClientError
from pagellm.config.parallel import ParallelConfig, stage_layer_counts, stage_layer_range
from pagellm.core.sched_output import CachedRequestData, NewRequestData, SchedulerOutput
from pagellm.sampling_params import SamplingParams
from pagellm.worker.input_batch import InputBatch


@pytest.mark.parametrize("num_layers, pp, counts", [
    (4, 2, [2, 2]), (5, 2, [3, 2]), (7, 4, [2, 2, 2, 1]), (3, 3, [1, 1, 1]), (32, 1, [32])])
def test_balanced_split_puts_the_remainder_before_the_last_stage(num_layers, pp, counts):
    assert stage_layer_counts(num_layers, pp) == counts
    ranges = [stage_layer_range(num_layers, pp, stage) for stage in range(pp)]
    assert ranges[0][0] == 0 and ranges[-1][1] == num_layers
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))


def test_custom_partition():
    config = ParallelConfig(pipeline_parallel_size=2, pipeline_layer_partition="1,3")
    assert config.layer_partition() == [1, 3]
    assert stage_layer_range(4, 2, 1, config.layer_partition()) == (1, 4)
    assert config.output_rank == 1
    assert ParallelConfig(tensor_parallel_size=2, pipeline_parallel_size=3).output_rank == 4


@pytest.mark.parametrize("text", ["3", "3,x", "4,0", "1,2,3"])
def test_partition_must_be_one_positive_count_per_stage(text):
    with pytest.raises(ClientError, match="pipeline_layer_partition must be 2 positive"):
        ParallelConfig(pipeline_parallel_size=2, pipeline_layer_partition=text)


def test_layer_split_checked_against_the_model():
    model = SimpleNamespace(num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                            intermediate_size=128)
    with pytest.raises(ClientError, match=r"pipeline_parallel_size=3 is larger than .*=2"):
        ParallelConfig(pipeline_parallel_size=3).verify_with_model(model)
    with pytest.raises(ClientError, match="sums to 3, but the model has num_hidden_layers=2"):
        ParallelConfig(pipeline_parallel_size=2,
                       pipeline_layer_partition="2,1").verify_with_model(model)
    fits = ParallelConfig(pipeline_parallel_size=2, pipeline_layer_partition="1,1")
    fits.verify_with_model(model)


def test_uni_executor_cannot_run_two_stages():
    with pytest.raises(ClientError, match="pipeline_parallel_size=2 = 2: use 'mp'"):
        ParallelConfig(pipeline_parallel_size=2, distributed_executor_backend="uni")


def _sched(new=(), cached=None) -> SchedulerOutput:
    cached = cached or CachedRequestData()
    counts = {request_id: 1 for request_id in [*(r.request_id for r in new), *cached.req_ids]}
    return SchedulerOutput(list(new), cached, counts, len(counts), set())


def test_input_batch_takes_sampled_tokens_from_the_scheduler_output():
    batch = InputBatch(max_num_reqs=2, max_model_len=16, block_size=4)
    params = SamplingParams(temperature=0.0)
    batch.apply(_sched(new=[NewRequestData("a", [5, 6, 7], 3, params, [0], 0)]))
    row = batch.row_of["a"]
    # an earlier stage: it never sampled, the token comes with the next step
    batch.apply(_sched(cached=CachedRequestData(["a"], [3], [None], [[42]])))
    assert batch.token_ids[row, :4].tolist() == [5, 6, 7, 42] and batch.num_tokens[row] == 4
    # the last stage appended the token itself: writing it again changes nothing
    batch.append_sampled([row], [43])
    batch.apply(_sched(cached=CachedRequestData(["a"], [4], [[1]], [[43]])))
    assert batch.token_ids[row, :5].tolist() == [5, 6, 7, 42, 43] and batch.num_tokens[row] == 5
    assert batch.block_table[row, :2].tolist() == [0, 1]
