"""Speculative decoding on top of async scheduling (forced on CPU through async_scheduling=True):
greedy output token-for-token equal with speculation on/off, async on/off and adaptive k on/off
(a tiny model, batched); the async runs overlap steps (two batches in flight, tokens fed from
the previous step on the device) and still verify and accept drafts."""

from __future__ import annotations

import pytest

from pagellm import LLM, SamplingParams

NGRAM = {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 3,
         "prompt_lookup_min": 1}
PROMPTS = [[9, 8] * 10, [5, 6, 7, 8] * 6 + [10, 11], [40] * 3, list(range(60, 75))]
PARAMS = SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True)


def _generate(model_dir: str, **args):
    llm = LLM(model_dir, kv_cache_memory_bytes=8 * 2**20, dtype="float32", block_size=4, **args)
    outputs = llm.generate(PROMPTS, PARAMS, use_tqdm=False)
    return llm, [list(o.outputs[0].token_ids) for o in outputs]


@pytest.fixture(scope="module")
def expected(tiny_model_dirs):
    return _generate(str(tiny_model_dirs["llama"]))[1]


@pytest.mark.parametrize("adaptive", [False, True])
def test_async_speculation_greedy_identical(adaptive, expected, tiny_model_dirs):
    llm, tokens = _generate(str(tiny_model_dirs["llama"]), async_scheduling=True,
                            speculative_config=dict(NGRAM, adaptive=adaptive))
    assert tokens == expected
    core = llm.llm_engine.engine_core
    assert core.scheduler.async_scheduling and core.max_batches_in_flight == 2
    stats = core.scheduler.spec_stats
    assert stats.num_drafts > 0 and stats.num_accepted_tokens > 0
    assert sum(stats.num_accepted_tokens_per_pos) == stats.num_accepted_tokens
    runner = core.executor.worker.runner
    assert runner.num_device_input_tokens > 0       # plain steps overlapped the one in flight
    assert core.num_generation_tokens == sum(len(t) for t in expected)
    assert core.scheduler.kv_cache_usage() == 0.0 and not core.scheduler._drafts_in_flight


def test_async_without_speculation_and_sync_speculation_identical(expected, tiny_model_dirs):
    llm, tokens = _generate(str(tiny_model_dirs["llama"]), async_scheduling=True)
    assert tokens == expected and llm.llm_engine.engine_core.max_batches_in_flight == 2
    llm, tokens = _generate(str(tiny_model_dirs["llama"]), speculative_config=NGRAM)
    assert tokens == expected
    assert llm.llm_engine.engine_core.scheduler.spec_stats.num_accepted_tokens > 0
