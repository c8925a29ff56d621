"""The engine counts each prompt's tokens once (``EngineStats.prompt_tokens``), in the step
that samples its first token, with async scheduling on and off, chunked prompts included."""

from __future__ import annotations

import pytest

from pagellm import LLM, SamplingParams
from tests.helpers.tiny_models import make_tiny_model_dir


@pytest.mark.parametrize("async_scheduling", [False, True])
def test_prompt_tokens_counted_once(tmp_path, async_scheduling):
    path = str(make_tiny_model_dir(tmp_path, "llama"))
    llm = LLM(path, device="cpu", dtype="float32", kv_cache_memory_bytes=16 * 2**20,
              max_model_len=256, max_num_batched_tokens=32, async_scheduling=async_scheduling)
    prompts = [list(range(3, 3 + n)) for n in (5, 7, 40)]        # 40: chunked over 2 steps
    params = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)
    outputs = llm.generate(prompts, params, use_tqdm=False)
    assert [len(o.outputs[0].token_ids) for o in outputs] == [6, 6, 6]
    stats = llm.llm_engine.stats()
    assert stats.prompt_tokens == 5 + 7 + 40
    assert stats.generation_tokens == 18
