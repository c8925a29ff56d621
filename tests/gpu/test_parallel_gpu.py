"""Tensor and pipeline parallelism on two GPUs (NCCL, one worker process per rank) give one
GPU's greedy tokens on a tiny random model, with CUDA graphs on and off for TP."""

from __future__ import annotations

import gc

import pytest
import torch

from pagellm import LLM, SamplingParams
from tests.helpers.tiny_models import make_tiny_model_dir

pytestmark = pytest.mark.gpu

GREEDY = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True, logprobs=1)
PROMPTS = [list(range(3, 3 + n)) for n in (1, 5, 17, 33, 64, 120, 7, 90)]
COMMON = dict(device="cuda", dtype="float32", kv_cache_memory_bytes=256 * 2**20,
              max_model_len=512)
# four heads and two KV heads, four layers: tp=2 splits both, pp=2 gives two layers a stage
SHAPES = dict(num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=4)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA devices")
    return make_tiny_model_dir(tmp_path_factory.mktemp("parallel_gpu"), "qwen3", **SHAPES)


@pytest.fixture(scope="module")
def expected(model_dir):
    llm = LLM(str(model_dir), **COMMON)
    outputs = llm.generate(PROMPTS, GREEDY, use_tqdm=False)
    llm.shutdown()
    del llm
    gc.collect()
    torch.cuda.empty_cache()
    return outputs


def _check(llm: LLM, expected) -> None:
    try:
        outputs = llm.generate(PROMPTS, GREEDY, use_tqdm=False)
    finally:
        llm.shutdown()
    assert [o.outputs[0].token_ids for o in outputs] == \
        [o.outputs[0].token_ids for o in expected]
    for got, want in zip(outputs, expected):
        for got_pos, want_pos in zip(got.outputs[0].logprobs, want.outputs[0].logprobs):
            token = next(iter(want_pos))
            assert abs(got_pos[token].logprob - want_pos[token].logprob) < 1e-3


@pytest.mark.parametrize("enforce_eager", [True, False])
def test_tp2_on_two_gpus_equals_one_gpu(model_dir, expected, enforce_eager):
    _check(LLM(str(model_dir), tensor_parallel_size=2, enforce_eager=enforce_eager, **COMMON),
           expected)


def test_pp2_on_two_gpus_equals_one_gpu(model_dir, expected):
    llm = LLM(str(model_dir), pipeline_parallel_size=2, **COMMON)
    core = llm.llm_engine.engine_core
    _check(llm, expected)
    assert core.max_batches_in_flight == 2


def test_tp2_custom_all_reduce_equals_nccl_in_bf16(model_dir):
    """The one-shot all-reduce, plain and fused with the add + RMSNorm after it, is measured at
    start-up and taken for decode-sized messages on two H200s; greedy tokens equal NCCL's (two ranks: both add the same two numbers), with
    CUDA graphs and async scheduling on."""
    prompts = PROMPTS[:4]
    params = SamplingParams(temperature=0.0, max_tokens=32, ignore_eos=True)
    common = dict(COMMON, dtype="bfloat16", tensor_parallel_size=2)
    nccl = LLM(str(model_dir), disable_custom_all_reduce=True, **common)
    try:
        assert nccl.llm_engine.engine_core.executor.custom_all_reduce_max_bytes == [0, 0]
        want = [o.outputs[0].token_ids for o in nccl.generate(prompts, params, use_tqdm=False)]
    finally:
        nccl.shutdown()
    custom = LLM(str(model_dir), **common)
    try:
        executor = custom.llm_engine.engine_core.executor
        sizes = executor.custom_all_reduce_max_bytes
        assert sizes[0] == sizes[1] >= 8192, sizes    # a batch-1 Llama-8B message is 8 KiB
        fused = executor.fused_all_reduce_max_bytes   # the tiny model's rows: 128 bytes each
        assert fused[0] == fused[1] >= 8192, fused
        got = [o.outputs[0].token_ids for o in custom.generate(prompts, params, use_tqdm=False)]
        assert custom.llm_engine.engine_core.max_batches_in_flight == 2   # async scheduling
    finally:
        custom.shutdown()
    assert got == want
