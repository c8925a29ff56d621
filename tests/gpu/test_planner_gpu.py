"""``pagellm plan`` against a real CUDA engine: the planned KV block count is within 2% of the
engine's for a shipped shape with random weights (the engine measures the activation peak and
the CUDA context where the plan estimates them). Prints both numbers for benchmarks/RESULTS.md.

Run: ``pytest -q -s tests/gpu/test_planner_gpu.py`` (about a minute on one H200).
"""

from __future__ import annotations

import gc

import pytest
import torch

from pagellm import LLM
from pagellm.bench.common import SHIPPED_CONFIGS_DIR
from pagellm.config.kv_sizing import GiB
from pagellm.tuning.planner import PlanInputs, load_model_shape, plan

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("shape, utilization", [("qwen3-0.6b", 0.5), ("llama-3.1-8b", 0.6)])
def test_planned_blocks_within_two_percent_of_the_engines(shape, utilization):
    gc.collect()
    torch.cuda.empty_cache()
    total_gib = torch.cuda.mem_get_info()[1] / GiB
    model_dir = str(SHIPPED_CONFIGS_DIR / shape)
    llm = LLM(model_dir, load_format="dummy", skip_tokenizer_init=True, device="cuda",
              gpu_memory_utilization=utilization, max_model_len=4096)
    try:
        engine_blocks = llm.llm_engine.engine_core.num_blocks
    finally:
        llm.shutdown()
        del llm
        gc.collect()
        torch.cuda.empty_cache()
    result = plan(PlanInputs(model=load_model_shape(model_dir), device="cuda",
                             gpu_memory_gib=total_gib, gpu_memory_utilization=utilization,
                             max_model_len=4096))
    error = abs(result.num_blocks - engine_blocks) / engine_blocks
    print(f"\n{shape} on {torch.cuda.get_device_name()} ({total_gib:.1f} GiB), utilization "
          f"{utilization}: planned {result.num_blocks} blocks, engine {engine_blocks} "
          f"({100 * error:.2f}% apart)")
    assert error <= 0.02
