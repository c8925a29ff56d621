"""The CUDA-graph runner's static buffers, padding and baked-in metadata on CPU: the runner in
``eager_replay`` mode runs the model eagerly on exactly what a graph would read (static padded
buffers, the capture-time metadata) with the Triton attention backend under Triton's
interpreter. Its real rows must equal the unpadded eager forward (mixed batches, verify
batches, padding rows and requests, every request slot), and greedy generation with mixed
prefill/decode traffic and with 3-token drafts verified every step must give the eager tokens
while decode, mixed and verify steps all go through it. One engine, in a subprocess
(TRITON_INTERPRET must be set before triton is imported)."""

from __future__ import annotations

import pytest

from tests.helpers.triton_interpret import run_interpreted



def test_graph_runner_replays_eagerly_in_the_interpreter():
    pytest.importorskip("triton")
    out = run_interpreted("tests.unit.worker.test_cuda_graph_replay",
                          extra_env={"PAGELLM_ATTENTION_BACKEND": "triton"})
    assert "forward ok" in out and "generate ok" in out


def _llm(tmp: str):
    """Six request slots, a 32-token budget (prompts arrive in chunks next to decodes), n-gram
    speculation with k = 3 (drafts are forced in ``_check_generate``), sync scheduling."""
    from pagellm import LLM
    from tests.helpers.tiny_models import make_tiny_model_dir

    model_dir = make_tiny_model_dir(tmp, "llama")
    return LLM(str(model_dir), device="cpu", dtype="float32", max_model_len=128,
               kv_cache_memory_bytes=2**21, block_size=4, enable_prefix_caching=False,
               max_num_seqs=6, max_num_batched_tokens=32, async_scheduling=False,
               speculative_config={"method": "ngram", "num_speculative_tokens": 3,
                                   "adaptive": False})


def _runner(llm, compilation_config: dict, uniform_query_len: int | None = None):
    from pagellm.config.compilation import parse_compilation_config
    from pagellm.worker.cuda_graph import make_cuda_graph_runner

    worker = llm.llm_engine.engine_core.executor.worker
    config = worker.config
    graphs = make_cuda_graph_runner(
        worker.model, worker.runner.kv_cache, parse_compilation_config(compilation_config),
        config.scheduler.max_num_seqs, config.scheduler.max_num_batched_tokens,
        config.model.max_model_len, config.cache.block_size, worker.platform.device,
        uniform_query_len=uniform_query_len, eager_replay=True)
    graphs.capture()
    return worker, graphs


def _check_forward(llm) -> None:
    from tests.gpu.cuda_graph_cases import DECODE_CASE, MIXED_CASES, check_padded_forward

    worker, graphs = _runner(llm, {"cudagraph_capture_sizes": [1, 2, 4, 8, 16, 32]},
                             uniform_query_len=4)
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


def _check_generate(llm) -> None:
    from pagellm import SamplingParams
    from tests.gpu.cuda_graph_cases import tokens_with_forced_drafts

    # prompts in chunks next to decodes (mixed steps); forced 3-token drafts make every step
    # after the prefills a uniform verify of 4 rows per request
    prompts = [[5, 9, 13, 17, 21, 25] * 4, list(range(3, 40))]
    greedy = SamplingParams(temperature=0.0, max_tokens=5, ignore_eos=True)
    verified = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)

    def tokens():
        return [o.outputs[0].token_ids for o in llm.generate(prompts, greedy, use_tqdm=False)]

    expected = tokens(), tokens_with_forced_drafts(llm, prompts, verified, 3)
    worker, graphs = _runner(llm, {}, uniform_query_len=4)   # the default: FULL_AND_PIECEWISE
    worker.runner.cuda_graphs = graphs
    assert (tokens(), tokens_with_forced_drafts(llm, prompts, verified, 3)) == expected
    replays = (sum(graphs.num_replays.values()), sum(graphs.num_mixed_replays.values()),
               sum(graphs.num_uniform_replays.values()))
    assert all(count > 0 for count in replays), replays
    print("generate ok")


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        engine = _llm(tmp)
        _check_forward(engine)          # randomizes the KV cache: no request runs meanwhile
        _check_generate(engine)
