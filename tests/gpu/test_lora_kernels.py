"""The Triton LoRA shrink/expand kernels equal the torch twin (per adapter group) on odd
shapes, with base tokens (-1) left bit-identical (also expanding into a column slice, as fully
sharded row-parallel layers do); and a LoRA engine on CUDA (Triton path, eager; default and
fully sharded LoRA; fully sharded at TP=2 when two GPUs exist) gives the same greedy tokens as
on CPU (torch twin); and decode steps with adapters replay the LoRA CUDA graphs, base-only steps
the base graphs, with the eager engine's tokens."""

from __future__ import annotations

import pytest
import torch

from tests.gpu.lora_cases import check_lora_kernels

pytestmark = pytest.mark.gpu

TOLERANCE = {torch.float32: 2e-5, torch.bfloat16: 1.6e-2, torch.float16: 2e-3}
"""Relative to the output's largest magnitude: about two ulps of bf16 (2^-7) and fp16 (2^-10)."""


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [
    # (tokens, slots, rank, in, out): decode, odd sizes, packed qkv rank 3 * 16, Llama-8B qkv
    (1, 1, 8, 64, 64), (7, 3, 8, 130, 70), (33, 4, 48, 4096, 6144), (300, 8, 16, 4096, 1024),
    (5, 2, 24, 14336, 4096),
])
def test_lora_kernels_match_twin(dtype, shape):
    num_tokens, num_slots, rank, in_features, out_features = shape
    error = check_lora_kernels(num_tokens, num_slots, rank, in_features, out_features, "cuda",
                               dtype)
    assert error < TOLERANCE[dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_lora_expand_into_column_slice_matches_twin(dtype):
    # fully sharded Llama-8B at tp=2: q|k|v A holds 3 x 16 / 2 rank rows; o_proj's expand
    # writes rank 1's 2048 columns of the 4096-wide partial output
    error = check_lora_kernels(33, 4, 24, 4096, 2048, "cuda", dtype, column_offset=2048)
    assert error < TOLERANCE[dtype]


def _engine_tokens(model, requests, prompts, **kwargs) -> list[list[int]]:
    from pagellm import LLM, SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
    llm = LLM(str(model), kv_cache_memory_bytes=16 * 2**20, enable_lora=True, max_lora_rank=8,
              max_loras=2, dtype="float32", **kwargs)
    try:
        outputs = llm.generate(prompts, params, use_tqdm=False, lora_request=requests)
    finally:
        llm.shutdown()
    return [o.outputs[0].token_ids for o in outputs]


def _model_and_requests(tmp_path):
    from pagellm import LoRARequest
    from tests.helpers.tiny_lora import make_peft_adapter
    from tests.helpers.tiny_models import make_tiny_model_dir

    model = make_tiny_model_dir(tmp_path, "llama")
    adapters = [make_peft_adapter(model, tmp_path / f"a{i}", seed=i) for i in (1, 2)]
    requests = [None, LoRARequest("a1", 1, str(adapters[0])),
                LoRARequest("a2", 2, str(adapters[1]))]
    return model, requests, [[5, 6, 7, 8], [40, 41], [100, 3, 77]]


@pytest.mark.parametrize("fully_sharded_loras", [False, True])
def test_lora_engine_cuda_equals_cpu(tmp_path, fully_sharded_loras):
    model, requests, prompts = _model_and_requests(tmp_path)
    cpu = _engine_tokens(model, requests, prompts, device="cpu")
    gpu = _engine_tokens(model, requests, prompts, device="cuda",
                         fully_sharded_loras=fully_sharded_loras)
    assert gpu == cpu


def test_fully_sharded_lora_tp2_cuda_equals_cpu(tmp_path):
    """NCCL all-gather / all-reduce of the LoRA shrink between the Triton kernels."""
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA devices")
    model, requests, prompts = _model_and_requests(tmp_path)
    cpu = _engine_tokens(model, requests, prompts, device="cpu")
    assert _engine_tokens(model, requests, prompts, device="cuda", tensor_parallel_size=2,
                          fully_sharded_loras=True) == cpu


def test_lora_decode_replays_cuda_graphs_and_equals_eager(tmp_path):
    from pagellm import LLM, LoRARequest, SamplingParams
    from tests.helpers.tiny_lora import make_peft_adapter
    from tests.helpers.tiny_models import make_tiny_model_dir

    model = make_tiny_model_dir(tmp_path, "llama")
    adapters = [make_peft_adapter(model, tmp_path / f"a{i}", seed=i) for i in (1, 2, 3)]
    mixed = [None, LoRARequest("a1", 1, str(adapters[0])), LoRARequest("a2", 2, str(adapters[1])),
             LoRARequest("a3", 3, str(adapters[2])), LoRARequest("a1", 1, str(adapters[0]))]
    prompts = [[5, 6, 7, 8], [40, 41], [100, 3, 77], [9, 9], [12, 13, 14]]
    params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    args = dict(kv_cache_memory_bytes=16 * 2**20, enable_lora=True, max_lora_rank=8,
                max_loras=2, dtype="float32", device="cuda")     # 3 adapters, 2 slots: evictions
    eager = LLM(str(model), enforce_eager=True, **args)
    graphed = LLM(str(model), **args)
    runner = graphed.llm_engine.engine_core.executor.worker.runner
    assert runner.cuda_graphs is not None and runner.cuda_graphs.lora_context is not None
    for requests in (mixed, [None] * len(prompts)):
        before = dict(runner.cuda_graphs.num_lora_replays)
        want = eager.generate(prompts, params, use_tqdm=False, lora_request=requests)
        got = graphed.generate(prompts, params, use_tqdm=False, lora_request=requests)
        assert [o.outputs[0].token_ids for o in got] == [o.outputs[0].token_ids for o in want]
        lora_replays = sum(runner.cuda_graphs.num_lora_replays.values()) - sum(before.values())
        assert (lora_replays > 0) == (requests is mixed)
    assert sum(runner.cuda_graphs.num_replays.values()) > sum(
        runner.cuda_graphs.num_lora_replays.values())           # base-only steps replayed too
