"""Sampling through the whole engine on the default model: seeds, n > 1, stop strings,
logprobs against HF, chat, and bad input that leaves the engine serving."""

from __future__ import annotations

import math

import pytest

from pagellm import ClientError, SamplingParams
from tests.helpers.hf_reference import hf_prompt_logprobs
from tests.integration.conftest import PROMPTS


def _texts(outputs):
    return [[c.text for c in o.outputs] for o in outputs]


def test_seed_same_text_in_any_batch(default_llm):
    params = SamplingParams(temperature=1.0, top_p=0.9, seed=1234, max_tokens=16)
    alone = default_llm.generate(PROMPTS[1], params, use_tqdm=False)[0].outputs[0]
    others = SamplingParams(temperature=0.8, max_tokens=20)
    batch = default_llm.generate(PROMPTS[:4], [others, params, others, others], use_tqdm=False)
    assert batch[1].outputs[0].token_ids == alone.token_ids
    assert batch[1].outputs[0].text == alone.text
    other_seed = default_llm.generate(PROMPTS[1], SamplingParams(temperature=1.0, top_p=0.9, seed=99,
                                                                  max_tokens=16), use_tqdm=False)
    assert other_seed[0].outputs[0].token_ids != alone.token_ids


def test_n_samples_share_prompt_blocks(default_llm):
    before = default_llm.llm_engine.stats()
    prompt = PROMPTS[4]                         # 42 tokens: two full blocks of 16
    params = SamplingParams(n=4, temperature=1.0, seed=7, max_tokens=12)
    output = default_llm.generate(prompt, params, use_tqdm=False)[0]
    after = default_llm.llm_engine.stats()
    assert [c.index for c in output.outputs] == [0, 1, 2, 3]
    assert all(len(c.token_ids) == 12 or c.finish_reason == "stop" for c in output.outputs)
    assert len({tuple(c.token_ids) for c in output.outputs}) > 1
    # siblings 2..4 reuse the first sibling's two full prompt blocks
    assert after.prefix_cache_hits - before.prefix_cache_hits >= 3 * 32
    again = default_llm.generate(prompt, params, use_tqdm=False)[0]
    assert [c.token_ids for c in again.outputs] == [c.token_ids for c in output.outputs]


def test_stop_strings(default_llm):
    greedy = SamplingParams(temperature=0, max_tokens=30, ignore_eos=True)
    full = default_llm.generate(PROMPTS[3], greedy, use_tqdm=False)[0].outputs[0].text
    stop = full[5:8]
    cut = default_llm.generate(PROMPTS[3], SamplingParams(temperature=0, max_tokens=30, stop=[stop]),
                               use_tqdm=False)[0].outputs[0]
    assert cut.text == full[:full.index(stop)]
    assert cut.finish_reason == "stop" and cut.stop_reason == stop
    kept = default_llm.generate(PROMPTS[3], SamplingParams(
        temperature=0, max_tokens=30, stop=[stop], include_stop_str_in_output=True),
        use_tqdm=False)[0].outputs[0]
    assert kept.text == full[:full.index(stop) + len(stop)]


def test_stop_token_ids_and_min_tokens(default_llm):
    greedy = SamplingParams(temperature=0, max_tokens=20, ignore_eos=True)
    tokens = default_llm.generate(PROMPTS[0], greedy, use_tqdm=False)[0].outputs[0].token_ids
    stop_id = tokens[3]
    out = default_llm.generate(PROMPTS[0], SamplingParams(temperature=0, max_tokens=20,
                                                          stop_token_ids=[stop_id]),
                               use_tqdm=False)[0].outputs[0]
    assert out.token_ids == tokens[:tokens.index(stop_id) + 1]
    assert out.finish_reason == "stop" and out.stop_reason == stop_id


def test_logprobs_close_to_hf(default_llm, hf_default_model):
    params = SamplingParams(temperature=0, max_tokens=8, logprobs=5, prompt_logprobs=3,
                            ignore_eos=True)
    output = default_llm.generate(PROMPTS[2], params, use_tqdm=False)[0]
    completion = output.outputs[0]
    assert len(completion.logprobs) == 8
    for token_id, position in zip(completion.token_ids, completion.logprobs):
        assert token_id in position and position[token_id].rank == 1     # greedy picks rank 1
        assert 5 <= len(position) <= 6
        ranks = sorted(lp.rank for lp in position.values())
        assert ranks[:5] == [1, 1, 2, 3, 4] or ranks[:5] == [1, 2, 3, 4, 5]
    assert math.isclose(completion.cumulative_logprob,
                        sum(p[t].logprob for t, p in zip(completion.token_ids, completion.logprobs)))
    all_ids = output.prompt_token_ids + completion.token_ids
    reference = hf_prompt_logprobs(hf_default_model, all_ids).tolist()
    ours = [p[t].logprob for t, p in zip(completion.token_ids, completion.logprobs)]
    n_prompt = len(output.prompt_token_ids)
    assert ours == pytest.approx(reference[n_prompt - 1:], abs=2e-3)
    assert output.prompt_logprobs[0] is None and len(output.prompt_logprobs) == n_prompt
    prompt_ours = [p[t].logprob for t, p in zip(output.prompt_token_ids[1:], output.prompt_logprobs[1:])]
    assert prompt_ours == pytest.approx(reference[:n_prompt - 1], abs=2e-3)


def test_chat_uses_template(default_llm):
    messages = [{"role": "user", "content": "What is 2 + 2?"}]
    output = default_llm.chat(messages, SamplingParams(temperature=0, max_tokens=16), use_tqdm=False)[0]
    tokenizer = default_llm.get_tokenizer()
    prompt_text = tokenizer.decode(output.prompt_token_ids)
    assert "<|im_start|>user" in prompt_text and prompt_text.rstrip().endswith("assistant")
    assert output.outputs[0].text.strip()


def test_bad_input_raises_and_engine_lives(default_llm):
    with pytest.raises(ClientError, match="maximum context length is 2048 tokens"):
        default_llm.generate("hi", SamplingParams(max_tokens=10**6), use_tqdm=False)
    with pytest.raises(ClientError, match=r"prompt\[0\] must be a token id in \[0, "):
        default_llm.generate([[10**7]], use_tqdm=False)
    with pytest.raises(ClientError, match=r"exceeds the engine's max_logprobs=20; .* "
                                          r"raise max_logprobs \(--max-logprobs\)"):
        default_llm.generate("hi", SamplingParams(logprobs=1000), use_tqdm=False)
    with pytest.raises(ValueError, match="temperature"):
        SamplingParams(temperature=-1)
    with pytest.raises(ClientError, match="empty"):
        default_llm.generate([""], use_tqdm=False)
    for prompts in (None, 5):
        with pytest.raises(ClientError, match="prompts must be a string"):
            default_llm.generate(prompts, use_tqdm=False)
    with pytest.raises(ClientError, match=r"SamplingParams\(\*\*the_dict\)"):
        default_llm.generate(["a"], {"max_tokens": 3}, use_tqdm=False)
    for messages in ([], [[]]):
        with pytest.raises(ClientError, match="must not be empty|non-empty list"):
            default_llm.chat(messages, use_tqdm=False)
    with pytest.raises(ClientError, match=r"messages\[1\] \(user\) has no 'content'"):
        default_llm.chat([{"role": "system", "content": "x"}, {"role": "user"}], use_tqdm=False)
    with pytest.raises(ClientError, match=r"messages\[0\] must be a dict with a string 'role'"):
        default_llm.chat([{"content": "x"}], use_tqdm=False)
    with pytest.raises(ClientError, match="lora_request must be a LoRARequest, a list of them"):
        default_llm.generate(["x"], lora_request="nope", use_tqdm=False)
    out = default_llm.generate("Hello", SamplingParams(temperature=0, max_tokens=4), use_tqdm=False)
    assert len(out[0].outputs[0].token_ids) == 4
    assert not default_llm.llm_engine.has_unfinished_requests()


def test_metrics_recorded(default_llm):
    output = default_llm.generate(PROMPTS[0], SamplingParams(max_tokens=4), use_tqdm=False)[0]
    m = output.metrics
    assert m.arrival_time <= m.first_scheduled_time <= m.first_token_time <= m.finished_time
