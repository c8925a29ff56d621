"""Persistent pinned host + device buffers for the step inputs on CUDA: exact values across
steps of changing sizes, no allocation once sizes settle (no new pinned tensor per step), and
the engine's plain decode steps stop allocating after warm-up with greedy output unchanged
by async scheduling."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pagellm.worker.staging import StagingBuffers

pytestmark = pytest.mark.gpu


def test_staging_copies_exact_values_and_stops_allocating():
    staging = StagingBuffers(torch.device("cuda"))
    rng = np.random.default_rng(1)
    for size in (3, 257, 1000, 1000):          # both ring slots grow to 1000 (1024)
        staging.begin_step()
        staging.to_device("input_ids", rng.integers(0, 50_000, size))
        staging.end_step()
    settled = staging.num_allocations
    kept = []
    for _ in range(50):
        staging.begin_step()
        array = rng.integers(0, 50_000, int(rng.integers(1, 1000)))
        table = rng.integers(0, 4096, (7, 13)).astype(np.int32)
        got = staging.to_device("input_ids", array)
        got_table = staging.to_device("block_tables", table)
        staging.end_step()
        kept.append((array, got))
        assert got.is_cuda and torch.equal(got.cpu(), torch.from_numpy(array))
        assert torch.equal(got_table.cpu(), torch.from_numpy(table))
        if len(kept) >= 2:       # the previous step's view is still intact (2-slot ring)
            previous_array, previous = kept[-2]
            assert torch.equal(previous.cpu(), torch.from_numpy(previous_array))
    assert staging.num_allocations == settled + 2 * 2    # block_tables: host + device, 2 slots


def test_engine_steps_reuse_their_input_buffers(tmp_path):
    import gc

    from pagellm import LLM, SamplingParams
    from tests.helpers.tiny_models import make_tiny_model_dir

    path = str(make_tiny_model_dir(tmp_path, "llama"))
    common = dict(dtype="float32", kv_cache_memory_bytes=64 * 2**20, max_model_len=256,
                  enforce_eager=True)
    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
    prompts = [list(range(3 + i, 9 + 2 * i)) for i in range(8)]
    llm = LLM(path, device="cuda", async_scheduling=True, **common)
    llm.generate(prompts, params, use_tqdm=False)                 # warm-up: sizes settle
    staging = llm.llm_engine.engine_core.executor.worker.runner.batch.staging
    settled = staging.num_allocations
    got = [o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False)]
    assert staging.num_allocations == settled
    del llm
    gc.collect()
    torch.cuda.empty_cache()
    sync = LLM(path, device="cuda", async_scheduling=False, **common)
    expected = [o.outputs[0].token_ids for o in sync.generate(prompts, params, use_tqdm=False)]
    assert got == expected
