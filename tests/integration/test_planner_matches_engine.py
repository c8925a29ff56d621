"""``pagellm plan`` uses the engine's own KV sizing: on CPU its block count equals the block
count a real engine allocates for the same model and budget (the GPU twin, within 2%, is
tests/gpu/test_planner_gpu.py)."""

from __future__ import annotations

import pytest

from pagellm import LLM
from pagellm.tuning.planner import PlanInputs, load_model_shape, plan


@pytest.mark.parametrize("arch, block_size, budget", [("llama", 16, 3_000_000),
                                                       ("qwen3", 32, 1_234_567)])
def test_plan_block_count_equals_the_engines(tiny_model_dirs, arch, block_size, budget):
    model_dir = str(tiny_model_dirs[arch])
    # LLM(scenario=...): the preset fills what is not given, explicit arguments win
    llm = LLM(model_dir, device="cpu", kv_cache_memory_bytes=budget, block_size=block_size,
              max_model_len=256, scenario="batch_processing")
    try:
        engine_blocks = llm.llm_engine.engine_core.num_blocks
        config = llm.llm_engine.config
        assert (config.scheduler.scheduler_delay_factor, config.scheduler.max_num_seqs,
                config.model.max_model_len) == (0.5, 256, 256)
        assert config.value_sources["max_model_len"] == "flag"
    finally:
        llm.shutdown()
    result = plan(PlanInputs(model=load_model_shape(model_dir), device="cpu",
                             kv_cache_memory_bytes=budget, block_size=block_size,
                             max_model_len=256))
    assert result.num_blocks == engine_blocks
    assert result.fits
