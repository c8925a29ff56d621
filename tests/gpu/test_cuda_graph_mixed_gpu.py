"""Mixed and speculative-verify CUDA graphs on the GPU (issues 12 and 14): the padded replay
equals the eager forward row for row, and greedy output is identical with mixed graphs on
(cudagraph_mode FULL_AND_PIECEWISE, the default) and off (FULL_DECODE_ONLY, enforce_eager),
for chunked prefills next to decodes and for n-gram verify steps, with replay counters that
prove the graphs ran. Tiny float32 Llama, async scheduling on (the CUDA default)."""

from __future__ import annotations

import gc

import pytest

from pagellm import LLM, SamplingParams
from tests.gpu.cuda_graph_cases import (DECODE_CASE, MIXED_CASES, check_padded_forward,
                                        tokens_with_forced_drafts)
from tests.helpers.tiny_models import make_tiny_model_dir

pytestmark = [pytest.mark.gpu, pytest.mark.usefixtures("free_engines")]

GREEDY = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
PATTERN = [5, 9, 13, 17, 21, 25]
# repetitive prompts (n-gram drafts) and plain ones; 8 prompts over a 64-token budget, so
# prefill chunks share steps with decodes
PROMPTS = [PATTERN * 4, list(range(3, 120)), [40, 41, 42] * 7, list(range(60, 93)),
           PATTERN * 2 + [7], [3], list(range(100, 165)), [50, 51] * 9]
NGRAM = {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 3,
         "prompt_lookup_min": 1, "adaptive": False}
COMMON = dict(device="cuda", dtype="float32", max_model_len=512, kv_cache_memory_bytes=2**26,
              max_num_seqs=8, max_num_batched_tokens=64, enable_prefix_caching=False)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_tiny_model_dir(tmp_path_factory.mktemp("mixed_graphs"), "llama")


def _graphs(llm: LLM):
    return llm.llm_engine.engine_core.executor.worker.runner.cuda_graphs


def _tokens(llm: LLM, prompts=PROMPTS) -> list[list[int]]:
    return [o.outputs[0].token_ids for o in llm.generate(prompts, GREEDY, use_tqdm=False)]


def test_padded_replay_equals_the_eager_forward(model_dir):
    """Real graphs (captured by the worker) against the model's eager forward: mixed, verify
    (uniform 1 + k rows, counted apart), no padding rows, every request slot, and a decode
    batch; what they write into real cache blocks too (padding stays on the scratch block)."""
    llm = LLM(str(model_dir), device="cuda", dtype="float32", max_model_len=128,
              kv_cache_memory_bytes=2**22, max_num_seqs=6, max_num_batched_tokens=32,
              compilation_config={"cudagraph_capture_sizes": [1, 2, 4, 8, 16, 32]},
              speculative_config=NGRAM)                 # k = 3: verify batches of 4 rows
    worker, graphs = llm.llm_engine.engine_core.executor.worker, _graphs(llm)
    assert sorted(graphs.mixed_graphs) == [2, 4, 8, 16, 32]
    assert sorted(graphs.graphs) == [(s, False) for s in (1, 2, 4, 8, 16, 32)]
    kv_cache = worker.runner.kv_cache
    for index, (name, case) in enumerate(MIXED_CASES.items()):
        errors = check_padded_forward(worker.model, kv_cache, graphs, *case, seed=index)
        assert max(errors) < 1e-4, (name, errors)
    errors = check_padded_forward(worker.model, kv_cache, graphs, *DECODE_CASE)
    assert max(errors) < 1e-4, ("decode", errors)
    assert graphs.num_mixed_replays == {2: 0, 4: 0, 8: 0, 16: 4, 32: 0}
    assert graphs.num_uniform_replays == {2: 0, 4: 0, 8: 0, 16: 1, 32: 0}
    assert graphs.num_replays == {1: 0, 2: 0, 4: 1, 8: 0, 16: 0, 32: 0}


def test_mixed_steps_replay_graphs_with_the_eager_tokens(model_dir):
    eager = LLM(str(model_dir), enforce_eager=True, **COMMON)
    assert _graphs(eager) is None
    expected = _tokens(eager)
    del eager
    gc.collect()
    decode_only = LLM(str(model_dir), compilation_config={"cudagraph_mode": "FULL_DECODE_ONLY"},
                      **COMMON)
    assert _graphs(decode_only).mixed_sizes == [] and not _graphs(decode_only).mixed_graphs
    assert _tokens(decode_only) == expected
    del decode_only
    gc.collect()
    llm = LLM(str(model_dir), **COMMON)                  # default: FULL_AND_PIECEWISE
    graphs = _graphs(llm)
    assert graphs.mixed_sizes == [2, 4] + list(range(8, 65, 8))
    assert _tokens(llm) == expected
    assert sum(graphs.num_mixed_replays.values()) > 0
    assert sum(graphs.num_replays.values()) > 0
    assert sum(graphs.num_uniform_replays.values()) == 0        # no speculation: no verify


def test_ngram_verify_steps_replay_graphs_with_the_eager_tokens(model_dir):
    """Forced 3-token drafts (sync scheduling) make uniform verify steps of 4 rows per request;
    n-gram's own drafts run under async scheduling. Same tokens as eager in both."""
    spec = dict(COMMON, speculative_config=NGRAM)
    eager = LLM(str(model_dir), enforce_eager=True, async_scheduling=False, **spec)
    expected = _tokens(eager), tokens_with_forced_drafts(eager, PROMPTS[:3], GREEDY, 3)
    del eager
    gc.collect()
    llm = LLM(str(model_dir), async_scheduling=False, **spec)
    graphs = _graphs(llm)
    assert graphs.uniform_query_len == 4
    assert (_tokens(llm), tokens_with_forced_drafts(llm, PROMPTS[:3], GREEDY, 3)) == expected
    assert sum(graphs.num_uniform_replays.values()) > 0       # 1 + k rows per request
    assert sum(graphs.num_mixed_replays.values()) > sum(graphs.num_uniform_replays.values())
    del llm
    gc.collect()
    async_llm = LLM(str(model_dir), async_scheduling=True, **spec)
    assert _tokens(async_llm) == expected[0]
    assert sum(_graphs(async_llm).num_mixed_replays.values()) > 0
