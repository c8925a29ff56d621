"""The CUDA-graph runner's static buffers, padding and baked-in metadata on CPU: the runner in
``eager_replay`` mode runs the model eagerly on exactly what a graph would read (static padded
buffers, the capture-time metadata) with the Triton attention backend under Triton's
interpreter. Its real rows must equal the unpadded eager forward (mixed batches, verify
batches, padding rows and requests, every request slot), and greedy generation with mixed
prefill/decode traffic and n-gram speculation must give the eager tokens while decode, mixed
and verify steps all go through it. Runs in a subprocess (TRITON_INTERPRET must be set before
triton is imported)."""

from __future__ import annotations

import sys

import pytest

from tests.helpers.triton_interpret import run_interpreted

CHECKS = ["forward", "generate"]


@pytest.mark.parametrize("check", CHECKS)
def test_graph_runner_replays_eagerly_in_the_interpreter(check):
    pytest.importorskip("triton")
    out = run_interpreted("tests.unit.worker.test_cuda_graph_replay", check,
                          extra_env={"PAGELLM_ATTENTION_BACKEND": "triton"})
    assert f"{check} ok" in out


def _llm(tmp: str, **engine):
    from pagellm import LLM
    from tests.helpers.tiny_models import make_tiny_model_dir

    model_dir = make_tiny_model_dir(tmp, "llama")
    return LLM(str(model_dir), device="cpu", dtype="float32", max_model_len=128,
               kv_cache_memory_bytes=2**21, block_size=4, enable_prefix_caching=False,
               **engine)


def _runner(llm, compilation_config: dict):
    from pagellm.config.compilation import parse_compilation_config
    from pagellm.worker.cuda_graph import make_cuda_graph_runner

    worker = llm.llm_engine.engine_core.executor.worker
    config = worker.config
    graphs = make_cuda_graph_runner(
        worker.model, worker.runner.kv_cache, parse_compilation_config(compilation_config),
        config.scheduler.max_num_seqs, config.scheduler.max_num_batched_tokens,
        config.model.max_model_len, config.cache.block_size, worker.platform.device,
        eager_replay=True)
    graphs.capture()
    return worker, graphs


def _check_forward(tmp: str) -> None:
    from tests.gpu.cuda_graph_cases import DECODE_CASE, MIXED_CASES, check_padded_forward

    llm = _llm(tmp, max_num_seqs=6, max_num_batched_tokens=32)
    worker, graphs = _runner(llm, {"cudagraph_capture_sizes": [1, 2, 4, 8, 16, 32]})
    assert graphs.capture_sizes == [1, 2, 4, 8, 16, 32]
    assert graphs.mixed_sizes == [2, 4, 8, 16, 32] and graphs.mixed.num_slots(16) == 7
    kv_cache = worker.runner.kv_cache
    for index, (name, (query_lens, seq_lens)) in enumerate(MIXED_CASES.items()):
        errors = check_padded_forward(worker.model, kv_cache, graphs, query_lens, seq_lens,
                                      seed=index)
        assert max(errors) < 1e-5, (name, errors)
    errors = check_padded_forward(worker.model, kv_cache, graphs, *DECODE_CASE)
    assert max(errors) < 1e-5, ("decode", errors)
    assert graphs.num_mixed_replays == {2: 0, 4: 0, 8: 0, 16: 4, 32: 0}
    assert graphs.num_uniform_replays == {2: 0, 4: 0, 8: 0, 16: 1, 32: 0}   # the verify case
    assert graphs.num_replays == {1: 0, 2: 0, 4: 1, 8: 0, 16: 0, 32: 0}
    # bounds: 7 requests need 8 slots, 33 tokens no graph, LoRA-free mixed steps only
    from tests.gpu.cuda_graph_cases import random_step
    for query_lens, seq_lens in (([2] * 7, [3] * 7), ([33], [40])):
        assert not graphs.can_run(random_step(worker.model, kv_cache, query_lens, seq_lens, 0)[2])
    print("forward ok")


def _check_generate(tmp: str) -> None:
    from pagellm import SamplingParams

    # A 32-token budget: prompts arrive in chunks next to decodes (mixed steps); n-gram drafts
    # on repetitive prompts make verify steps; one request alone makes uniform verifies.
    llm = _llm(tmp, max_num_seqs=4, max_num_batched_tokens=32,
               speculative_config={"method": "ngram", "num_speculative_tokens": 3,
                                   "prompt_lookup_max": 3, "prompt_lookup_min": 1,
                                   "adaptive": False})
    pattern = [5, 9, 13, 17, 21, 25]
    prompts = [pattern * 4, list(range(3, 40)), [40, 41, 42] * 5]
    greedy = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)

    def tokens(batch):
        return [o.outputs[0].token_ids for o in llm.generate(batch, greedy, use_tqdm=False)]

    expected = tokens(prompts), tokens(prompts[:1])
    worker, graphs = _runner(llm, {})                      # the default: FULL_AND_PIECEWISE
    worker.runner.cuda_graphs = graphs
    assert (tokens(prompts), tokens(prompts[:1])) == expected
    replays = (sum(graphs.num_replays.values()), sum(graphs.num_mixed_replays.values()),
               sum(graphs.num_uniform_replays.values()))
    assert all(count > 0 for count in replays), replays
    print("generate ok")


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        {"forward": _check_forward, "generate": _check_generate}[sys.argv[1]](tmp)
