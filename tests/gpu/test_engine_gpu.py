"""The engine on CUDA gives the CPU engine's greedy tokens (same weights), with CUDA graphs
on and off, for the torch and Triton attention backends."""

from __future__ import annotations

import gc

import pytest
import torch

from pagellm import LLM, SamplingParams
from tests.helpers.tiny_models import make_tiny_model_dir

pytestmark = [pytest.mark.gpu, pytest.mark.usefixtures("free_engines")]

GREEDY = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
PROMPTS = [list(range(3, 3 + n)) for n in (1, 5, 17, 33, 64, 120)]
# SmolLM2-135M's shapes (30 layers, GQA 9/3, head_dim 64) at a small vocabulary.
SMOLLM2_SHAPES = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                      num_attention_heads=9, num_key_value_heads=3, rope_theta=100000.0,
                      max_position_embeddings=2048, initializer_range=0.05)


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("gpu_models")
    return {"qwen3": make_tiny_model_dir(root / "a", "qwen3"),
            "smollm2-shapes": make_tiny_model_dir(root / "b", "llama", **SMOLLM2_SHAPES)}


def _tokens(llm: LLM) -> list[list[int]]:
    return [o.outputs[0].token_ids for o in llm.generate(PROMPTS, GREEDY, use_tqdm=False)]


@pytest.mark.parametrize("name", ["qwen3", "smollm2-shapes"])
def test_cuda_matches_cpu(name, model_dirs, monkeypatch):
    common = dict(dtype="float32", kv_cache_memory_bytes=256 * 2**20, max_model_len=512)
    expected = _tokens(LLM(str(model_dirs[name]), device="cpu", **common))
    for backend in ("torch", "triton"):
        monkeypatch.setenv("PAGELLM_ATTENTION_BACKEND", backend)
        for eager, async_scheduling in ((True, False), (False, False), (False, True)):
            llm = LLM(str(model_dirs[name]), device="cuda", enforce_eager=eager,
                      async_scheduling=async_scheduling, **common)
            assert _tokens(llm) == expected, (backend, eager, async_scheduling)
            del llm
            gc.collect()
            torch.cuda.empty_cache()


def _graph_runner(llm: LLM):
    return llm.llm_engine.engine_core.executor.worker.runner.cuda_graphs


def test_cuda_graphs_replay_every_decode_step(model_dirs):
    # A budget over the prompts' 240 tokens: step 1 prefills all six (not all-decode, so
    # eager); each later step decodes all of them, padded to the captured size 8.
    common = dict(device="cuda", dtype="float32", max_model_len=512, kv_cache_memory_bytes=2**28,
                  max_num_batched_tokens=2048)
    llm = LLM(str(model_dirs["qwen3"]),
              compilation_config={"cudagraph_capture_sizes": [1, 2, 4, 8]}, **common)
    graphs = _graph_runner(llm)
    assert graphs is not None                              # keys: (size, with LoRA)
    assert sorted(graphs.graphs) == [(1, False), (2, False), (4, False), (8, False)]
    assert graphs.num_replays == {1: 0, 2: 0, 4: 0, 8: 0}
    eager = LLM(str(model_dirs["qwen3"]), enforce_eager=True, **common)
    assert _graph_runner(eager) is None            # enforce_eager: nothing captured or replayed
    assert _tokens(llm) == _tokens(eager)
    num_decode_steps = GREEDY.max_tokens - 1
    assert llm.llm_engine.stats().num_steps == 1 + num_decode_steps
    assert graphs.num_replays == {1: 0, 2: 0, 4: 0, 8: num_decode_steps}
    # Three requests pad to 4; one alone runs the size-1 graph (not the 1-token prompt, whose
    # first step is already all-decode).
    llm.generate(PROMPTS[:3], GREEDY, use_tqdm=False)
    assert graphs.num_replays == {1: 0, 2: 0, 4: num_decode_steps, 8: num_decode_steps}
    llm.generate(PROMPTS[1:2], GREEDY, use_tqdm=False)
    assert graphs.num_replays == {1: num_decode_steps, 2: 0, 4: num_decode_steps,
                                  8: num_decode_steps}


def test_async_scheduling_launches_steps_without_a_host_sync(model_dirs):
    """Every step's launch (inputs, graph replay, sampling, the copy of the sampled ids) runs
    under torch's sync debug mode set to error: a host sync there raises. Only resolve()
    waits, on the step's event. Greedy and seeded sampling, outputs equal the sync loop."""
    common = dict(device="cuda", dtype="float32", kv_cache_memory_bytes=256 * 2**20,
                  max_model_len=512)
    params = [SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True),
              SamplingParams(temperature=1.0, top_p=0.9, top_k=50, seed=1, max_tokens=24,
                             ignore_eos=True)] * 3
    prompts = PROMPTS
    expected = LLM(str(model_dirs["qwen3"]), async_scheduling=False, **common).generate(
        prompts, params, use_tqdm=False)
    gc.collect()
    torch.cuda.empty_cache()
    llm = LLM(str(model_dirs["qwen3"]), async_scheduling=True, **common)
    runner = llm.llm_engine.engine_core.executor.worker.runner
    launch = runner.execute_model_async

    def checked_launch(sched):
        torch.cuda.set_sync_debug_mode("error")
        try:
            return launch(sched)
        finally:
            torch.cuda.set_sync_debug_mode("default")

    runner.execute_model_async = checked_launch
    got = llm.generate(prompts, params, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in got] == [o.outputs[0].token_ids for o in expected]
    assert runner.num_forced_resolves == 0
    assert runner.num_device_input_tokens >= len(prompts) * 20
    assert sum(runner.cuda_graphs.num_replays.values()) >= 20
