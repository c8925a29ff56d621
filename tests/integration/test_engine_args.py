"""Engine arguments: unknown names and later-issue features are rejected clearly."""

from __future__ import annotations

import pytest

from pagellm import LLM, ClientError, NotSupportedError
from pagellm.config.engine_args import create_engine_config


@pytest.mark.parametrize("name, value", [
    ("cpu_offload_gb", 4), ("enable_expert_parallel", True),
])
def test_later_features_not_silently_ignored(name, value):
    with pytest.raises(NotSupportedError, match=name):
        LLM("default", **{name: value})


def test_unknown_argument_suggests_name():
    with pytest.raises(ClientError, match="did you mean 'max_num_seqs'"):
        create_engine_config(max_num_seq=8)


@pytest.mark.parametrize("kwargs, field", [
    (dict(gpu_memory_utilization=1.5), "gpu_memory_utilization"),
    (dict(block_size=3), "block_size"), (dict(max_num_seqs=0), "max_num_seqs"),
    (dict(preemption_mode="drop"), "preemption_mode"), (dict(dtype="int4"), "dtype"),
    (dict(swap_space=-1), "swap_space"), (dict(policy="lifo"), "policy"),
    (dict(data_parallel_size=0), "data_parallel_size"),
    (dict(kv_cache_dtype="fp8_e4m3fn"), "kv_cache_dtype"),
])
def test_out_of_range_values_name_the_field(kwargs, field):
    with pytest.raises(ClientError, match=field):
        create_engine_config(**kwargs)


def test_max_model_len_must_fit_kv_cache():
    with pytest.raises(ClientError, match="max_model_len"):
        LLM("default", kv_cache_memory_bytes=2**20, max_model_len=8192)


def test_chunked_off_needs_budget_for_whole_prompt():
    with pytest.raises(ClientError, match="max_num_batched_tokens"):
        LLM("default", enable_chunked_prefill=False, max_num_batched_tokens=512, max_model_len=1024)
