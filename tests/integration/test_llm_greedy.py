"""Greedy generation equals HF transformers on the same weights, and the engine's memory
features (prefix caching, chunked prefill, preemption) never change greedy output."""

from __future__ import annotations

import pytest
from transformers import AutoModelForCausalLM

from pagellm import LLM, SamplingParams
from tests.helpers.hf_reference import hf_greedy
from tests.integration.conftest import PROMPTS

MAX_TOKENS = 24
GREEDY = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)


def _token_ids(outputs) -> list[list[int]]:
    return [output.outputs[0].token_ids for output in outputs]


@pytest.fixture(scope="module")
def default_reference(default_llm, hf_default_model):
    tokenizer = default_llm.get_tokenizer()
    prompt_ids = [tokenizer.encode(p) for p in PROMPTS]
    return prompt_ids, [hf_greedy(hf_default_model, ids, MAX_TOKENS) for ids in prompt_ids]


def test_default_model_matches_hf_batched(default_llm, default_reference):
    prompt_ids, expected = default_reference
    assert len({len(ids) for ids in prompt_ids}) >= 8, "prompts of different lengths"
    outputs = default_llm.generate(PROMPTS, GREEDY, use_tqdm=False)
    assert _token_ids(outputs) == expected
    assert [o.prompt_token_ids for o in outputs] == prompt_ids
    assert all(o.finished and o.outputs[0].finish_reason == "length" for o in outputs)
    tokenizer = default_llm.get_tokenizer()
    assert outputs[0].outputs[0].text == tokenizer.decode(expected[0], skip_special_tokens=True)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
def test_tiny_models_match_hf(arch, tiny_model_dirs):
    model_dir = str(tiny_model_dirs[arch])
    hf_model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="float32").eval()
    llm = LLM(model_dir, kv_cache_memory_bytes=8 * 2**20, dtype="float32", block_size=4)
    prompts = [list(range(3, 3 + n)) for n in (1, 5, 8, 13, 30)]
    outputs = llm.generate(prompts, GREEDY, use_tqdm=False)
    assert _token_ids(outputs) == [hf_greedy(hf_model, p, MAX_TOKENS) for p in prompts]


ENGINE_VARIANTS = {
    "no_prefix_caching": dict(enable_prefix_caching=False),
    "chunked_small_budget": dict(max_num_batched_tokens=16, enable_chunked_prefill=True),
    "no_chunking": dict(enable_chunked_prefill=False, max_num_batched_tokens=2048),
    # 20 blocks of 16 tokens (737,280 bytes each in fp32) for ~28 blocks of demand
    "preempt_recompute": dict(kv_cache_memory_bytes=20 * 737280, max_model_len=256,
                              preemption_mode="recompute"),
    "preempt_swap": dict(kv_cache_memory_bytes=20 * 737280, max_model_len=256,
                         preemption_mode="swap", swap_space=0.1),
    # async scheduling (off by default on CPU): steps scheduled before the previous one's
    # tokens are back, with chunking and both preemption modes
    "async_chunked": dict(async_scheduling=True, max_num_batched_tokens=16),
    "async_preempt_recompute": dict(async_scheduling=True, kv_cache_memory_bytes=20 * 737280,
                                    max_model_len=256, preemption_mode="recompute"),
    "async_preempt_swap": dict(async_scheduling=True, kv_cache_memory_bytes=20 * 737280,
                               max_model_len=256, preemption_mode="swap", swap_space=0.1),
}


@pytest.mark.parametrize("variant", list(ENGINE_VARIANTS))
def test_engine_variants_keep_greedy_output(variant, default_model_path, default_reference):
    args = dict(kv_cache_memory_bytes=256 * 2**20, max_model_len=512, dtype="float32")
    args.update(ENGINE_VARIANTS[variant])
    llm = LLM(default_model_path, **args)
    _, expected = default_reference
    outputs = llm.generate(PROMPTS, GREEDY, use_tqdm=False)
    assert _token_ids(outputs) == expected
    stats = llm.llm_engine.stats()
    if "preempt" in variant:
        assert stats.num_preemptions > 0
    kv = llm.llm_engine.engine_core.scheduler.kv
    if variant.endswith("preempt_swap"):
        # Swapping really happened (a fallback to recompute would keep the output too), and
        # every block swapped out came back.
        assert kv.num_swapped_out_blocks > 0
        assert kv.num_swapped_in_blocks == kv.num_swapped_out_blocks
    else:
        assert kv.num_swapped_out_blocks == kv.num_swapped_in_blocks == 0
    assert stats.kv_cache_usage == 0.0          # everything freed
    runner = llm.llm_engine.engine_core.executor.worker.runner
    if variant.startswith("async"):
        # decode inputs really came from the previous step's sampled ids on the device
        assert runner.num_device_input_tokens >= len(PROMPTS) * (MAX_TOKENS // 2)
        assert llm.llm_engine.engine_core.max_batches_in_flight == 2
    else:
        assert runner.num_device_input_tokens == 0


def test_prefix_caching_hits_and_keeps_output(default_llm, default_reference):
    prompt_ids, expected = default_reference
    shared = "You are a helpful assistant. Answer briefly and precisely. " * 4
    prompts = [shared + p for p in PROMPTS[:4]]
    first = default_llm.generate(prompts, GREEDY, use_tqdm=False)
    before = default_llm.llm_engine.stats()
    second = default_llm.generate(prompts, GREEDY, use_tqdm=False)
    after = default_llm.llm_engine.stats()
    assert _token_ids(first) == _token_ids(second)
    assert after.prefix_cache_hits - before.prefix_cache_hits >= 4 * 48
    assert all(o.num_cached_tokens >= 48 for o in second)
    # Same output as a cache-free engine would give: the first request of a batch can't hit.
    cold = LLM(default_llm.llm_engine.config.model.model, enable_prefix_caching=False,
               kv_cache_memory_bytes=64 * 2**20, max_model_len=512, dtype="float32")
    assert _token_ids(cold.generate(prompts, GREEDY, use_tqdm=False)) == _token_ids(second)
