"""Pipeline parallelism end to end on CPU (gloo, the mp executor: one spawned worker process
per rank): PP=2 and TP=2 x PP=2 give the single-process greedy tokens and close logprobs on
tiny random Llama / Qwen2 / Qwen3 models (default and custom layer splits, tied embeddings on
the last stage), each stage loads only its layers, the engine keeps two micro-batches in
flight, abort and recompute preemption leave the other requests' outputs unchanged, and
layer splits that cannot work are rejected before any worker starts.
"""

from __future__ import annotations

import multiprocessing

import pytest

from pagellm import LLM, ClientError, SamplingParams
from tests.helpers.tiny_models import make_tiny_model_dir
from tests.integration.test_tensor_parallel import ENGINE, GREEDY, PROMPTS, assert_same_generation

# name -> (tiny arch, config overrides): 3 layers split unevenly by default ([2, 1])
CASES = {"llama": ("llama", {"num_hidden_layers": 3}), "qwen2": ("qwen2", {"num_hidden_layers": 3}),
         "qwen3": ("qwen3", {"num_hidden_layers": 4})}
LONG = SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True)


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("pp-models")
    return {name: make_tiny_model_dir(root / name, arch, **overrides)
            for name, (arch, overrides) in CASES.items()}


@pytest.fixture(scope="module")
def references(model_dirs):
    """name -> (single-process LLM, its outputs for PROMPTS under GREEDY)."""
    result = {}
    for name, model_dir in model_dirs.items():
        llm = LLM(str(model_dir), **ENGINE)
        result[name] = llm, llm.generate(PROMPTS, GREEDY, use_tqdm=False)
    return result


def stage_param_bytes(model, layers: range, embedding: bool, head: bool) -> int:
    """Bytes of the named parameters a stage holds: its layers, the embedding and/or the
    final norm and LM head."""
    total = 0
    for name, param in model.named_parameters():
        in_stage = (any(name.startswith(f"model.layers.{i}.") for i in layers)
                    or (embedding and name == "model.embed_tokens.weight")
                    or (head and name in ("model.norm.weight", "lm_head.weight")))
        total += param.numel() * param.element_size() if in_stage else 0
    return total


def test_pp2_llama_equals_one_process_overlaps_batches_and_stages_load_their_layers(
        model_dirs, references):
    reference_llm, reference = references["llama"]
    llm = LLM(str(model_dirs["llama"]), pipeline_parallel_size=2, **ENGINE)
    try:
        assert_same_generation(reference, llm.generate(PROMPTS, GREEDY, use_tqdm=False))
        engine_core = llm.llm_engine.engine_core
        assert engine_core.batch_queue_size == 2
        assert engine_core.max_batches_in_flight == 2     # two micro-batches overlapped
        stats = engine_core.executor.load_stats
    finally:
        llm.shutdown()
    whole = reference_llm.llm_engine.engine_core.executor.worker.model
    first = stage_param_bytes(whole, range(0, 2), embedding=True, head=False)
    last = stage_param_bytes(whole, range(2, 3), embedding=False, head=True)
    assert [s.param_bytes for s in stats] == [first, last]
    assert [s.checkpoint_bytes_read for s in stats] == [first, last]
    assert first + last == sum(p.numel() * p.element_size() for p in whole.parameters())


def test_pp2_qwen2_custom_partition_with_tied_embeddings_on_the_last_stage(model_dirs, references):
    reference_llm, reference = references["qwen2"]
    llm = LLM(str(model_dirs["qwen2"]), pipeline_parallel_size=2, pipeline_layer_partition="1,2",
              **ENGINE)
    try:
        assert_same_generation(reference, llm.generate(PROMPTS, GREEDY, use_tqdm=False))
        stats = llm.llm_engine.engine_core.executor.load_stats
    finally:
        llm.shutdown()
    whole = reference_llm.llm_engine.engine_core.executor.worker.model
    # the LM head is the embedding: the last stage loads it too
    assert [s.param_bytes for s in stats] == [
        stage_param_bytes(whole, range(0, 1), embedding=True, head=False),
        stage_param_bytes(whole, range(1, 3), embedding=True, head=True)]


def test_tp2_pp2_qwen3_equals_one_process(model_dirs, references):
    _, reference = references["qwen3"]
    llm = LLM(str(model_dirs["qwen3"]), tensor_parallel_size=2, pipeline_parallel_size=2,
              **ENGINE)
    try:
        executor = llm.llm_engine.engine_core.executor
        assert executor.world_size == 4 and executor.output_rank == 2
        assert_same_generation(reference, llm.generate(PROMPTS, GREEDY, use_tqdm=False))
        assert llm.llm_engine.engine_core.max_batches_in_flight == 2
    finally:
        llm.shutdown()


def run_with_abort(llm: LLM, victim: int) -> dict[str, list[int]]:
    """Generate LONG for every prompt, aborting request ``victim`` after a few steps;
    returns the finished requests' outputs by request id (an aborted one never finishes)."""
    engine = llm.llm_engine
    ids = [engine.add_request(prompt, LONG, request_id=f"r{i}") for i, prompt in enumerate(PROMPTS)]
    finished, num_steps = {}, 0
    while engine.has_unfinished_requests():
        for output in engine.step():
            if output.finished:
                finished[output.request_id] = output.outputs[0]
        num_steps += 1
        if num_steps == 6:
            engine.abort_request(ids[victim])
    return finished


def test_pp2_abort_and_recompute_preemption_keep_the_other_outputs(model_dirs, references):
    reference_llm, _ = references["llama"]
    expected = reference_llm.generate(PROMPTS, LONG, use_tqdm=False)
    # stage 0 holds 2 layers of [2, 16, 2 KV heads, 16] fp32 blocks (8 KiB): 10 blocks of
    # 16 tokens for 4 requests that need up to 5 each
    llm = LLM(str(model_dirs["llama"]), pipeline_parallel_size=2, device="cpu", max_num_seqs=8,
              kv_cache_memory_bytes=10 * 8192, max_model_len=128, preemption_mode="recompute")
    try:
        outputs = llm.generate(PROMPTS, LONG, use_tqdm=False)
        assert llm.llm_engine.stats().num_preemptions > 0
        for ref, out in zip(expected, outputs, strict=True):
            assert out.outputs[0].token_ids == ref.outputs[0].token_ids
        finished = run_with_abort(llm, victim=1)
    finally:
        llm.shutdown()
    assert set(finished) == {"r0", "r2", "r3"}       # r1 was aborted while in flight
    for i in (0, 2, 3):
        assert finished[f"r{i}"].token_ids == expected[i].outputs[0].token_ids


@pytest.mark.parametrize("options, message", [
    (dict(pipeline_parallel_size=4), r"pipeline_parallel_size=4 is larger than the model's "
                                     r"num_hidden_layers=3"),
    (dict(pipeline_parallel_size=2, pipeline_layer_partition="2,2"),
     "pipeline_layer_partition 2,2 sums to 4, but the model has num_hidden_layers=3")])
def test_impossible_layer_splits_are_rejected_before_workers_start(model_dirs, options, message):
    before = set(multiprocessing.active_children())
    with pytest.raises(ClientError, match=message):
        LLM(str(model_dirs["llama"]), **options, **ENGINE)
    assert set(multiprocessing.active_children()) == before


@pytest.mark.slow
def test_default_model_pp2_greedy_equals_one_process(default_llm):
    """SmolLM2-135M (GGUF, 30 layers, tied embeddings) over two stages of 15 layers: each
    stage dequantizes only its own tensors."""
    params = SamplingParams(temperature=0.0, max_tokens=8, logprobs=2)
    prompts = ["The capital of France is", "def fibonacci(n):"]
    reference = default_llm.generate(prompts, params, use_tqdm=False)
    llm = LLM("default", pipeline_parallel_size=2, kv_cache_memory_bytes=64 * 2**20,
              max_model_len=2048, dtype="float32")
    try:
        outputs = llm.generate(prompts, params, use_tqdm=False)
        stats = llm.llm_engine.engine_core.executor.load_stats
    finally:
        llm.shutdown()
    whole = default_llm.llm_engine.engine_core.executor.load_stats[0]
    assert_same_generation(reference, outputs, abs_tol=1e-3, same_top_tokens=False)
    for stage in stats:
        assert stage.checkpoint_bytes_read < 0.75 * whole.checkpoint_bytes_read
        assert stage.param_bytes < 0.75 * whole.param_bytes
