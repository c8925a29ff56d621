"""Data parallelism on two GPUs: two engine-core processes, each on its own device
(CUDA_VISIBLE_DEVICES per replica), give one GPU's greedy tokens and share the requests."""

from __future__ import annotations

import pytest
import torch

from pagellm import LLM, SamplingParams
from tests.helpers.tiny_models import make_tiny_model_dir

pytestmark = pytest.mark.gpu

GREEDY = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
PROMPTS = [list(range(3, 3 + n)) for n in (1, 5, 17, 33, 64, 120, 7, 90)]
COMMON = dict(device="cuda", dtype="float32", kv_cache_memory_bytes=256 * 2**20,
              max_model_len=512)


def test_dp2_on_two_gpus_equals_one_gpu(tmp_path):
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA devices")
    model_dir = make_tiny_model_dir(tmp_path, "qwen3")
    single = LLM(str(model_dir), **COMMON)
    expected = [o.outputs[0].token_ids for o in single.generate(PROMPTS, GREEDY, use_tqdm=False)]
    single.shutdown()
    del single
    llm = LLM(str(model_dir), data_parallel_size=2, **COMMON)
    try:
        outputs = llm.generate(PROMPTS, GREEDY, use_tqdm=False)
        replicas = llm.llm_engine.core.client.balancer.replicas
        routed = [r.num_routed for r in replicas]
        # by load: an exact 4/4 depends on when each replica's stats arrive (they report
        # their queues while the batch is being routed), but both take a share
        assert sum(routed) == 8 and min(routed) >= 2, routed
        stats = llm.llm_engine.core.stats_per_engine()
    finally:
        llm.shutdown()
    assert [o.outputs[0].token_ids for o in outputs] == expected
    assert [s.generation_tokens for s in stats] == [n * 24 for n in routed]
