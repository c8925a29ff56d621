"""Multi-LoRA end to end on CPU with adapters made by ``peft`` (random non-zero A and B) on
tiny random models: pagellm's greedy tokens with an adapter equal HF transformers + PEFT and
the merged model; a batch mixing the base model and four adapters equals each request alone
(sync and async scheduling); slots load, evict and reload under max_loras < adapters in use
(exact counters); TP=2 (also with fully sharded LoRA) and PP=2 equal one rank; prefix caching never shares KV across adapters; bad
adapters are ClientErrors at load."""

from __future__ import annotations

import json

import pytest

from pagellm import LLM, ClientError, LoRARequest, SamplingParams
from tests.helpers.hf_reference import hf_greedy
from tests.helpers.tiny_lora import load_hf_peft_model, make_peft_adapter
from tests.helpers.tiny_models import make_tiny_model_dir

ENGINE = dict(device="cpu", kv_cache_memory_bytes=4 * 2**20, enable_lora=True, max_lora_rank=8)
GREEDY = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
PROMPTS = [[5, 6, 7, 8, 9], [40, 41, 42], [100, 3, 77, 12, 9, 200, 31], [9], [250, 17]]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """llama with four adapters (all targets; the last rsLoRA on q/v only) and qwen3 with one."""
    root = tmp_path_factory.mktemp("lora")
    llama = make_tiny_model_dir(root / "llama", "llama")
    adapters = [make_peft_adapter(llama, root / f"a{i}", seed=i) for i in range(1, 4)]
    adapters.append(make_peft_adapter(llama, root / "a4", seed=4, targets=["q_proj", "v_proj"],
                                      use_rslora=True))
    qwen3 = make_tiny_model_dir(root / "qwen3", "qwen3")
    qwen3_adapter = make_peft_adapter(qwen3, root / "q1", seed=7, rank=4)
    return llama, adapters, qwen3, qwen3_adapter


def lora(adapters, index: int) -> LoRARequest:
    return LoRARequest(f"a{index + 1}", index + 1, str(adapters[index]))


def tokens(outputs) -> list[list[int]]:
    return [o.outputs[0].token_ids for o in outputs]


@pytest.fixture(scope="module")
def llama_llm(models):
    return LLM(str(models[0]), max_loras=4, **ENGINE)


def test_adapter_equals_hf_peft_and_merged(models, llama_llm):
    llama, adapters, qwen3, qwen3_adapter = models
    base = tokens(llama_llm.generate(PROMPTS[:2], GREEDY, use_tqdm=False))
    for index in (0, 3):
        peft_model = load_hf_peft_model(llama, adapters[index])
        merged = load_hf_peft_model(llama, adapters[index], merged=True)
        got = tokens(llama_llm.generate(PROMPTS[:2], GREEDY, use_tqdm=False,
                                        lora_request=lora(adapters, index)))
        for prompt, out in zip(PROMPTS[:2], got):
            assert out == hf_greedy(peft_model, prompt, 8) == hf_greedy(merged, prompt, 8)
        assert got != base      # the adapter changes the output
    qwen_llm = LLM(str(qwen3), **ENGINE)
    request = LoRARequest("q1", 1, str(qwen3_adapter))
    outputs = qwen_llm.chat([{"role": "user", "content": "hi"}], GREEDY, use_tqdm=False,
                            lora_request=request)
    prompt = outputs[0].prompt_token_ids
    assert tokens(outputs) == [hf_greedy(load_hf_peft_model(qwen3, qwen3_adapter), prompt, 8)]


@pytest.mark.parametrize("async_scheduling", [False, True])
def test_mixed_batch_equals_each_alone(models, llama_llm, async_scheduling):
    adapters = models[1]
    per_prompt = [None] + [lora(adapters, i) for i in range(4)]
    alone = [tokens(llama_llm.generate([p], GREEDY, use_tqdm=False, lora_request=r))[0]
             for p, r in zip(PROMPTS, per_prompt)]
    llm = llama_llm if not async_scheduling else LLM(str(models[0]), max_loras=4,
                                                     async_scheduling=True, **ENGINE)
    mixed = tokens(llm.generate(PROMPTS, GREEDY, use_tqdm=False, lora_request=per_prompt))
    assert mixed == alone
    assert len({tuple(t) for t in alone}) == 5     # every adapter (and the base) differs


def test_slots_evict_and_reload_under_max_loras(models, llama_llm):
    adapters = models[1]
    per_prompt = [lora(adapters, i) for i in range(4)]
    expected = tokens(llama_llm.generate(PROMPTS[:4], GREEDY, use_tqdm=False,
                                         lora_request=per_prompt))
    llm = LLM(str(models[0]), max_loras=2, max_cpu_loras=2, **ENGINE)
    manager = llm.llm_engine.engine_core.executor.worker.runner.lora_manager
    scheduler = llm.llm_engine.engine_core.scheduler
    got = tokens(llm.generate(PROMPTS[:4], GREEDY, use_tqdm=False, lora_request=per_prompt))
    assert got == expected
    # adapters 1, 2 run first (3 and 4 wait: max_loras=2), then 3 and 4 replace them
    assert (manager.num_disk_loads, manager.num_slot_loads, manager.num_slot_evictions) == (4, 4, 2)
    assert list(manager.slot_of) == [3, 4] and list(manager.host_cache) == [3, 4]
    again = tokens(llm.generate(PROMPTS[:1], GREEDY, use_tqdm=False, lora_request=per_prompt[0]))
    assert again == expected[:1]
    assert (manager.num_disk_loads, manager.num_slot_loads, manager.num_slot_evictions) == (5, 5, 3)
    assert manager.context.mapping is not None
    llm.generate(PROMPTS[:2], GREEDY, use_tqdm=False)         # base only: no LoRA work
    assert manager.context.mapping is None
    assert (manager.num_disk_loads, manager.num_slot_loads, manager.num_slot_evictions) == (5, 5, 3)
    assert not scheduler.running


@pytest.mark.parametrize("parallel", [
    {"tensor_parallel_size": 2}, {"pipeline_parallel_size": 2},
    {"tensor_parallel_size": 2, "fully_sharded_loras": True},
], ids=["tp2", "pp2", "tp2-fully-sharded"])
def test_tp2_and_pp2_with_lora_equal_one_rank(models, llama_llm, parallel):
    """The same mixed batch (base, two all-target adapters, the q/v rsLoRA one) at TP=2
    (default and fully sharded LoRA) and PP=2 gives the one-rank tokens."""
    adapters = models[1]
    per_prompt = [None, lora(adapters, 0), lora(adapters, 1), lora(adapters, 3)]
    expected = tokens(llama_llm.generate(PROMPTS[:4], GREEDY, use_tqdm=False,
                                         lora_request=per_prompt))
    assert len({tuple(t) for t in expected}) == 4
    parallel_llm = LLM(str(models[0]), max_loras=3, **parallel, **ENGINE)
    try:
        got = tokens(parallel_llm.generate(PROMPTS[:4], GREEDY, use_tqdm=False,
                                           lora_request=per_prompt))
    finally:
        parallel_llm.shutdown()
    assert got == expected


def test_prefix_cache_is_never_shared_across_adapters(models):
    adapters = models[1]
    llm = LLM(str(models[0]), enable_prefix_caching=True, block_size=4, max_loras=2, **ENGINE)
    prompt = list(range(10, 30))                       # 20 tokens: 4 full blocks cached
    params = SamplingParams(temperature=0.0, max_tokens=1)

    def cached(lora_request):
        return llm.generate([prompt], params, use_tqdm=False,
                            lora_request=lora_request)[0].num_cached_tokens

    assert cached(lora(adapters, 0)) == 0
    assert cached(lora(adapters, 1)) == 0              # same tokens, other adapter: no hit
    assert cached(None) == 0                           # the base model: no hit either
    assert cached(lora(adapters, 0)) == 16             # its own adapter: all full blocks hit
    assert cached(None) == 16


def test_bad_adapters_are_client_errors_at_load(models, tmp_path, llama_llm):
    llama, adapters = models[0], models[1]
    big = make_peft_adapter(llama, tmp_path / "big", seed=9, rank=16)
    with pytest.raises(ClientError, match="above max_lora_rank=8"):
        llama_llm.generate(PROMPTS[:1], GREEDY, use_tqdm=False,
                           lora_request=LoRARequest("big", 9, str(big)))
    config = json.loads((adapters[0] / "adapter_config.json").read_text())
    config["target_modules"] = ["q_proj", "fc1"]
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "adapter_config.json").write_text(json.dumps(config))
    (bad / "adapter_model.safetensors").write_bytes(
        (adapters[0] / "adapter_model.safetensors").read_bytes())
    with pytest.raises(ClientError, match="fc1"):
        llama_llm.generate(PROMPTS[:1], GREEDY, use_tqdm=False,
                           lora_request=LoRARequest("bad", 10, str(bad)))
    with pytest.raises(ClientError, match="already used"):
        llama_llm.generate(PROMPTS[:1], GREEDY, use_tqdm=False,
                           lora_request=LoRARequest("other", 1, str(adapters[1])))
    assert not llama_llm.llm_engine.has_unfinished_requests()


def test_lora_request_needs_enable_lora(models):
    llm = LLM(str(models[0]), device="cpu", kv_cache_memory_bytes=4 * 2**20)
    with pytest.raises(ClientError, match="enable_lora"):
        llm.generate(PROMPTS[:1], GREEDY, use_tqdm=False,
                     lora_request=LoRARequest("a1", 1, str(models[1][0])))
