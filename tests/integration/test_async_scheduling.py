"""Async scheduling (vLLM's ``async_scheduling``) keeps every result of the synchronous loop:
stop tokens and EOS, max_tokens, stop strings, n > 1, seeds, logprobs, penalties, abort, and
tensor parallelism; and it really overlaps (steps scheduled while the previous one is in
flight, decode inputs fed on the device, no host wait except where sampling needs one)."""

from __future__ import annotations

import pytest

from pagellm import LLM, SamplingParams

PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time",
           "1, 2, 3, 4,", "The best way to learn", "Water boils at"]


def _mixed_params(tokenizer) -> list[SamplingParams]:
    """One request of each kind of finish and sampling feature."""
    comma = tokenizer.encode(",")[-1]
    return [
        SamplingParams(temperature=0.0, max_tokens=17),                   # EOS or length
        SamplingParams(temperature=0.0, max_tokens=30, stop_token_ids=[comma]),
        SamplingParams(temperature=0.8, top_p=0.9, seed=7, max_tokens=20, n=2),
        SamplingParams(temperature=0.0, max_tokens=12, logprobs=3, ignore_eos=True),
        SamplingParams(temperature=1.0, seed=3, max_tokens=15, repetition_penalty=1.3,
                       frequency_penalty=0.5, min_tokens=4),
        SamplingParams(temperature=0.0, max_tokens=40, stop=["."], ignore_eos=True),
    ]


def _results(outputs):
    return [[(c.token_ids, c.finish_reason, c.stop_reason, c.text,
              None if c.logprobs is None else [sorted(d.items()) for d in c.logprobs])
             for c in o.outputs] for o in outputs]


@pytest.fixture(scope="module")
def llms(default_model_path):
    args = dict(kv_cache_memory_bytes=64 * 2**20, max_model_len=512, dtype="float32")
    return LLM(default_model_path, **args), LLM(default_model_path, async_scheduling=True, **args)


def test_async_scheduling_keeps_every_result(llms):
    sync_llm, async_llm = llms
    params = _mixed_params(sync_llm.get_tokenizer())
    expected = sync_llm.generate(PROMPTS, params, use_tqdm=False)
    core = async_llm.llm_engine.engine_core
    runner = core.executor.worker.runner
    before_fed = runner.num_device_input_tokens
    got = async_llm.generate(PROMPTS, params, use_tqdm=False)
    assert _results(got) == _results(expected)
    assert {c.finish_reason for o in got for c in o.outputs} >= {"stop", "length"}
    assert core.max_batches_in_flight == 2
    assert runner.num_device_input_tokens - before_fed > 50
    # only the penalty / min_tokens request's steps waited for the previous step's tokens
    assert 0 < runner.num_forced_resolves <= 15
    assert core.scheduler.kv.usage() == 0.0 and not core.scheduler.requests


def test_plain_decoding_never_waits_for_the_host(llms):
    """The sync counter: greedy and seeded sampling never resolve a step early."""
    _, async_llm = llms
    runner = async_llm.llm_engine.engine_core.executor.worker.runner
    before = runner.num_forced_resolves
    params = [SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True),
              SamplingParams(temperature=1.0, top_k=20, seed=5, max_tokens=16, ignore_eos=True)]
    async_llm.generate(PROMPTS[:2], params, use_tqdm=False)
    assert runner.num_forced_resolves == before


def test_async_scheduling_abort_mid_generation(llms):
    _, async_llm = llms
    engine = async_llm.llm_engine
    params = SamplingParams(temperature=0.0, max_tokens=200, ignore_eos=True)
    engine.add_request(PROMPTS[0], SamplingParams(temperature=0.0, max_tokens=8), "keep")
    engine.add_request(PROMPTS[1], params, "drop")
    finished = {}
    for _ in range(6):
        for output in engine.step():
            if output.finished:
                finished[output.request_id] = output
    engine.abort_request("drop")
    while engine.has_unfinished_requests():
        for output in engine.step():
            if output.finished:
                finished[output.request_id] = output
    assert finished["keep"].outputs[0].finish_reason in ("stop", "length")
    assert "drop" not in finished or finished["drop"].outputs[0].finish_reason == "abort"
    assert engine.engine_core.scheduler.kv.usage() == 0.0


def test_async_scheduling_under_tensor_parallel(tiny_model_dirs):
    """mp workers overlap the same way (two ranks over gloo): outputs equal the sync run."""
    model = str(tiny_model_dirs["llama"])
    prompts = [list(range(3, 3 + n)) for n in (1, 5, 9, 14)]
    params = [SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True) for n in (3, 9, 6, 12)]
    args = dict(kv_cache_memory_bytes=8 * 2**20, dtype="float32", block_size=4,
                tensor_parallel_size=2)
    sync_llm = LLM(model, **args)
    expected = [o.outputs[0].token_ids for o in sync_llm.generate(prompts, params, use_tqdm=False)]
    del sync_llm
    async_llm = LLM(model, async_scheduling=True, **args)
    got = [o.outputs[0].token_ids for o in async_llm.generate(prompts, params, use_tqdm=False)]
    assert got == expected
    assert async_llm.llm_engine.engine_core.max_batches_in_flight == 2


def test_async_scheduling_with_structured_outputs(llms):
    """A constrained request waits for its token in flight (its next bitmask needs it), a free
    one does not: both give the sync loop's output."""
    import json

    from pagellm.sampling_params import StructuredOutputsParams

    sync_llm, async_llm = llms
    schema = {"type": "object", "properties": {"city": {"type": "string", "pattern": "^[A-Z][a-z]{1,8}$"},
                                               "rank": {"type": "integer", "minimum": 1}},
              "required": ["city", "rank"]}
    params = [SamplingParams(temperature=0.0, max_tokens=40,
                             structured_outputs=StructuredOutputsParams(json=schema)),
              SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True)]
    prompts = ["Give a city as JSON:", "Once upon a time"]
    for llm in llms:    # compile the grammar first: a compile racing the steps would change
        llm.generate(prompts[:1], params[:1], use_tqdm=False)   # when the request joins
    expected = sync_llm.generate(prompts, params, use_tqdm=False)
    got = async_llm.generate(prompts, params, use_tqdm=False)
    assert _results(got) == _results(expected)
    json.loads(got[0].outputs[0].text)


def test_constrained_requests_overlap_with_a_late_bitmask(llms):
    """Constrained requests alone (greedy and seeded) decode every step with the next step in
    flight (its bitmask built after its forward was launched): two batches in flight, one
    engine step per token (+ the dropped step after a stop), and the sync loop's outputs."""
    from pagellm.sampling_params import StructuredOutputsParams

    sync_llm, async_llm = llms
    schema = {"type": "object", "properties": {"id": {"type": "integer"},
                                               "tags": {"type": "array", "items": {"enum": ["x", "y"]}}},
              "required": ["id", "tags"]}
    params = [SamplingParams(temperature=0.0, max_tokens=24,
                             structured_outputs=StructuredOutputsParams(json=schema)),
              SamplingParams(temperature=1.0, seed=11, max_tokens=24,
                             structured_outputs=StructuredOutputsParams(regex="[a-z]{5,40}"))]
    prompts = ["Give an id and tags as JSON:", "A lowercase word:"]
    for llm in llms:    # compile the grammars first (a compile racing the steps changes timing)
        llm.generate(prompts, params, use_tqdm=False)
    expected = sync_llm.generate(prompts, params, use_tqdm=False)
    core = async_llm.llm_engine.engine_core
    core.max_batches_in_flight, steps_before = 0, core.num_steps
    got = async_llm.generate(prompts, params, use_tqdm=False)
    assert _results(got) == _results(expected)
    assert core.max_batches_in_flight == 2
    longest = max(len(o.outputs[0].token_ids) for o in got)
    assert longest <= core.num_steps - steps_before <= longest + 1


def test_late_bitmask_through_worker_processes(tiny_model_dirs):
    """The mp executor carries the split (ExecuteModel, then SampleTokens with the bitmask):
    constrained greedy outputs equal the sync run's, with two batches in flight."""
    from pagellm.sampling_params import StructuredOutputsParams

    model = str(tiny_model_dirs["llama"])
    prompts = [list(range(3, 3 + n)) for n in (2, 7, 11)]
    params = [SamplingParams(temperature=0.0, max_tokens=12,
                             structured_outputs=StructuredOutputsParams(regex=regex))
              for regex in ("[a-f]{4,9}!", "(yes|no|maybe)", "[0-9]{12}")]
    args = dict(kv_cache_memory_bytes=8 * 2**20, dtype="float32", block_size=4,
                distributed_executor_backend="mp")
    results = []
    for async_scheduling in (False, True):
        llm = LLM(model, async_scheduling=async_scheduling, **args)
        outputs = llm.generate(prompts, params, use_tqdm=False)
        results.append([(o.outputs[0].token_ids, o.outputs[0].finish_reason) for o in outputs])
        if async_scheduling:
            assert llm.llm_engine.engine_core.max_batches_in_flight == 2
        del llm
    assert results[0] == results[1]
    assert results[1][1][1] == "stop" and results[1][2][1] == "length"
