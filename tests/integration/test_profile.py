"""LLM.start_profile / stop_profile (vLLM's names) run torch.profiler inside every rank and
return each rank's kernel table; PAGELLM_TORCH_PROFILER_DIR gets the tables and traces."""

from __future__ import annotations

import pytest

from pagellm import LLM, SamplingParams
from pagellm.errors import ClientError


def test_profile_every_tensor_parallel_rank(tiny_model_dirs, tmp_path, monkeypatch):
    monkeypatch.setenv("PAGELLM_TORCH_PROFILER_DIR", str(tmp_path))
    llm = LLM(str(tiny_model_dirs["llama"]), kv_cache_memory_bytes=8 * 2**20, dtype="float32",
              block_size=4, tensor_parallel_size=2, async_scheduling=True)
    with pytest.raises(ClientError, match="without start_profile"):
        llm.stop_profile()                      # refused before it reaches the workers
    llm.generate([[3, 4], [5, 6, 7]], [SamplingParams(temperature=0.0, max_tokens=n)
                                       for n in (3, 6)], use_tqdm=False)
    # a step still in flight (async scheduling) is collected before the profiler call
    core = llm.llm_engine.engine_core
    llm.llm_engine.add_request([3, 4, 5], SamplingParams(temperature=0.0, max_tokens=8), "x")
    core.step()
    assert len(core.batch_queue) == 1
    llm.start_profile()
    while llm.llm_engine.has_unfinished_requests():
        llm.llm_engine.step()
    llm.generate([[3, 4, 5]], SamplingParams(temperature=0.0, max_tokens=4), use_tqdm=False)
    summaries = llm.stop_profile()
    assert len(summaries) == 2
    for summary in summaries:
        assert "aten::mm" in summary or "aten::linear" in summary or "aten::addmm" in summary
        assert "device time total" in summary
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "rank0.trace.json", "rank0.txt", "rank1.trace.json", "rank1.txt"]


def test_profile_in_process_engine_and_errors(tiny_model_dirs):
    llm = LLM(str(tiny_model_dirs["llama"]), kv_cache_memory_bytes=8 * 2**20, dtype="float32",
              block_size=4)
    llm.start_profile()
    with pytest.raises(ClientError, match="twice"):
        llm.start_profile()
    llm.generate([[3, 4, 5]], SamplingParams(temperature=0.0, max_tokens=2), use_tqdm=False)
    (summary,) = llm.stop_profile()
    assert "Self CPU" in summary
