"""Tensor parallelism end to end on CPU (gloo, the mp executor: one spawned worker process per
rank): TP=2 gives TP=1's greedy tokens and close logprobs on tiny random Llama / Qwen2 /
Qwen3 and a GQA model with fewer KV heads than ranks, each rank reads only its shard, a
killed worker fails the generation instead of hanging, and layouts that cannot work are
rejected before any worker starts.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import signal
import threading
import time

import pytest

from pagellm import LLM, ClientError, EngineDeadError, SamplingParams
from tests.helpers.tiny_models import make_tiny_model_dir

ENGINE = dict(device="cpu", kv_cache_memory_bytes=4 * 2**20, max_num_seqs=8)
PROMPTS = ["hello world", "the quick brown fox jumps", "a", "1, 2, 3, 4,"]
GREEDY = SamplingParams(temperature=0.0, max_tokens=12, logprobs=3, prompt_logprobs=2)
# name -> (tiny arch, config overrides)
CASES = {"llama": ("llama", {}), "qwen2": ("qwen2", {}), "qwen3": ("qwen3", {}),
         "llama-kv1": ("llama", {"num_key_value_heads": 1})}


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tp-models")
    return {name: make_tiny_model_dir(root / name, arch, **overrides)
            for name, (arch, overrides) in CASES.items()}


def assert_same_generation(reference, outputs, abs_tol: float = 1e-4,
                           same_top_tokens: bool = True) -> None:
    """Equal greedy tokens; each position's logprobs (and prompt logprobs, when asked for)
    within ``abs_tol``; ``same_top_tokens``: the same top tokens at every position too."""
    for ref, out in zip(reference, outputs, strict=True):
        assert out.outputs[0].token_ids == ref.outputs[0].token_ids
        for ref_step, step in zip(ref.outputs[0].logprobs, out.outputs[0].logprobs, strict=True):
            if same_top_tokens:
                assert step.keys() == ref_step.keys()
            for token_id, logprob in ref_step.items():
                assert math.isclose(step[token_id].logprob, logprob.logprob, abs_tol=abs_tol)
        for ref_step, step in zip((ref.prompt_logprobs or [None])[1:],
                                  (out.prompt_logprobs or [None])[1:], strict=True):
            for token_id, logprob in ref_step.items():
                assert math.isclose(step[token_id].logprob, logprob.logprob, abs_tol=abs_tol)


def kill_after_steps(engine_core, pid: int, num_steps: int = 3) -> threading.Thread:
    """A started thread that SIGKILLs ``pid`` once ``engine_core`` has run ``num_steps`` more
    steps (or after 60 s)."""
    start_steps = engine_core.num_steps

    def kill_mid_generation():
        deadline = time.monotonic() + 60
        while engine_core.num_steps < start_steps + num_steps and time.monotonic() < deadline:
            time.sleep(0.001)
        os.kill(pid, signal.SIGKILL)

    killer = threading.Thread(target=kill_mid_generation)
    killer.start()
    return killer


def generate_both(model_dir):
    """(TP=1 outputs, TP=2 outputs, TP=1 LLM, TP=2 LLM) for PROMPTS; the TP=2 LLM is live."""
    reference_llm = LLM(str(model_dir), **ENGINE)
    reference = reference_llm.generate(PROMPTS, GREEDY, use_tqdm=False)
    tp_llm = LLM(str(model_dir), tensor_parallel_size=2, **ENGINE)
    return reference, tp_llm.generate(PROMPTS, GREEDY, use_tqdm=False), reference_llm, tp_llm


@pytest.mark.parametrize("case", ["qwen2", "qwen3"])
def test_tp2_greedy_equals_tp1(model_dirs, case):
    reference, outputs, _, tp_llm = generate_both(model_dirs[case])
    try:
        assert tp_llm.llm_engine.engine_core.executor.world_size == 2
        assert_same_generation(reference, outputs)
    finally:
        tp_llm.shutdown()


def test_tp2_llama_equals_tp1_and_each_rank_reads_only_its_shard(model_dirs):
    reference, outputs, reference_llm, tp_llm = generate_both(model_dirs["llama"])
    try:
        assert_same_generation(reference, outputs)
        whole = reference_llm.llm_engine.engine_core.executor.load_stats[0]
        ranks = tp_llm.llm_engine.engine_core.executor.load_stats
    finally:
        tp_llm.shutdown()
    config = reference_llm.llm_engine.engine_core.executor.worker.model.config
    # only the RMSNorm weights are replicated in a bias-free Llama: each rank reads them whole
    norm_bytes = (2 * config.num_hidden_layers + 1) * config.hidden_size * 4
    assert whole.checkpoint_bytes_read == whole.param_bytes
    assert sum(r.checkpoint_bytes_read for r in ranks) == whole.checkpoint_bytes_read + norm_bytes
    for rank in ranks:
        assert rank.checkpoint_bytes_read < 0.52 * whole.checkpoint_bytes_read
        assert rank.param_bytes < 0.52 * whole.param_bytes


def test_tp_above_num_kv_heads_replicates_kv_and_a_killed_worker_fails_generation(model_dirs):
    reference, outputs, _, tp_llm = generate_both(model_dirs["llama-kv1"])
    executor = tp_llm.llm_engine.engine_core.executor
    try:
        assert_same_generation(reference, outputs)
        engine_core = tp_llm.llm_engine.engine_core
        start_steps = engine_core.num_steps
        killer = kill_after_steps(engine_core, executor.processes[1].pid)
        long = SamplingParams(temperature=0.0, max_tokens=400, ignore_eos=True)
        started = time.monotonic()
        with pytest.raises(EngineDeadError, match="rank 1"):
            tp_llm.generate(PROMPTS, long, use_tqdm=False)
        killer.join()
        assert time.monotonic() - started < 30
        assert engine_core.num_steps < start_steps + 400
        assert all(not p.is_alive() for p in executor.processes)   # rank 0 stopped too
        with pytest.raises(EngineDeadError):
            tp_llm.generate(PROMPTS[:1], GREEDY, use_tqdm=False)
    finally:
        tp_llm.shutdown()


def test_heads_not_divisible_by_tp_is_rejected_before_workers_start(model_dirs):
    before = set(multiprocessing.active_children())
    with pytest.raises(ClientError, match=r"tensor_parallel_size=3.*num_attention_heads=4"):
        LLM(str(model_dirs["llama"]), tensor_parallel_size=3, **ENGINE)
    assert set(multiprocessing.active_children()) == before


def test_uni_executor_cannot_run_two_ranks(model_dirs):
    with pytest.raises(ClientError, match="distributed_executor_backend='uni'"):
        LLM(str(model_dirs["llama"]), tensor_parallel_size=2, distributed_executor_backend="uni",
            **ENGINE)


def test_default_model_rejects_tp2_naming_heads():
    """SmolLM2-135M has 9 attention heads and 3 KV heads: TP=2 cannot split them."""
    with pytest.raises(ClientError, match=r"tensor_parallel_size=2.*num_attention_heads=9"):
        LLM("default", tensor_parallel_size=2, **ENGINE)


@pytest.mark.slow
def test_default_model_tp3_greedy_equals_tp1(default_llm):
    """9 heads and 3 KV heads over 3 ranks: one KV head per rank (GGUF, dequantized per
    tensor in each worker)."""
    params = SamplingParams(temperature=0.0, max_tokens=8, logprobs=2)
    prompts = ["The capital of France is", "def fibonacci(n):"]
    reference = default_llm.generate(prompts, params, use_tqdm=False)
    tp_llm = LLM("default", tensor_parallel_size=3, kv_cache_memory_bytes=64 * 2**20,
                 max_model_len=2048, dtype="float32")
    try:
        outputs = tp_llm.generate(prompts, params, use_tqdm=False)
    finally:
        tp_llm.shutdown()
    assert_same_generation(reference, outputs, abs_tol=1e-3, same_top_tokens=False)


# 10 blocks of 16 tokens per rank (each rank holds 1 of the 2 KV heads: 4,096 bytes a block) for
# 3 running requests that need ~4 blocks each: the scheduler has to preempt. 3 rows in each
# worker's input batch: a request whose row a worker failed to free leaves none for the next.
SMALL_CACHE = dict(device="cpu", kv_cache_memory_bytes=10 * 4096, max_model_len=128,
                   max_num_seqs=3, preemption_mode="recompute")
LONG = SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True)


@pytest.fixture(scope="module")
def small_cache_tp2_llm(model_dirs):
    llm = LLM(str(model_dirs["llama"]), tensor_parallel_size=2, **SMALL_CACHE)
    yield llm
    llm.shutdown()


def reference_token_ids(model_dir, prompts, params) -> list[list[int]]:
    """TP=1 greedy tokens with a cache large enough that nothing is preempted."""
    llm = LLM(str(model_dir), device="cpu", kv_cache_memory_bytes=4 * 2**20, max_model_len=128)
    outputs = llm.generate(prompts, params, use_tqdm=False)
    assert llm.llm_engine.stats().num_preemptions == 0
    return [o.outputs[0].token_ids for o in outputs]


def test_tp2_preemption_by_recompute_keeps_greedy_output(model_dirs, small_cache_tp2_llm):
    engine_core = small_cache_tp2_llm.llm_engine.engine_core
    assert engine_core.num_blocks == 10
    preemptions_before = engine_core.scheduler.num_preemptions
    outputs = small_cache_tp2_llm.generate(PROMPTS, LONG, use_tqdm=False)
    assert engine_core.scheduler.num_preemptions > preemptions_before
    assert [o.outputs[0].token_ids for o in outputs] == \
        reference_token_ids(model_dirs["llama"], PROMPTS, LONG)
    assert small_cache_tp2_llm.llm_engine.stats().kv_cache_usage == 0.0


def test_tp2_abort_mid_generation_keeps_other_requests_output(model_dirs, small_cache_tp2_llm):
    """Abort one of three running requests after a few steps, then admit a new one into its
    slot: the workers drop the aborted request's state and the others decode on unchanged."""
    engine = small_cache_tp2_llm.llm_engine
    kept, aborted, late = PROMPTS[:2], PROMPTS[2], PROMPTS[3]
    ids = [engine.add_request(prompt, LONG) for prompt in kept]
    aborted_id = engine.add_request(aborted, LONG)
    [core_id] = engine.output_processor.requests[aborted_id].completions
    scheduler = engine.engine_core.scheduler
    for _ in range(5):
        assert engine.step() == []          # nothing finishes this early
    assert 0 < len(scheduler.requests[core_id].output_token_ids) < LONG.max_tokens
    engine.abort_request(aborted_id)
    assert core_id not in scheduler.requests
    finished: dict[str, list[int]] = {}
    ids.append(engine.add_request(late, LONG))
    while engine.has_unfinished_requests():
        for output in engine.step():
            assert output.request_id != aborted_id
            if output.finished:
                finished[output.request_id] = output.outputs[0].token_ids
    assert [finished[i] for i in ids] == \
        reference_token_ids(model_dirs["llama"], [*kept, late], LONG)
    assert engine.stats().kv_cache_usage == 0.0
