"""Benchmark datasets: random token ids and ShareGPT sampling, as vLLM samples them."""

from __future__ import annotations

import json

import pytest

from pagellm.bench.datasets import (SampleRequest, ratio_range, sample_random_requests,
                                    sample_sharegpt_requests)
from pagellm.errors import ClientError


def test_ratio_range_follows_vllm():
    assert ratio_range(128, 0.0) == (128, 128)
    assert ratio_range(100, 0.5) == (50, 150)
    assert ratio_range(1, 0.9) == (1, 1)          # never below one token
    with pytest.raises(ClientError, match="random_range_ratio"):
        ratio_range(100, 1.0)


def test_random_lengths_in_range_and_ids_avoid_specials():
    requests = sample_random_requests(200, (100, 1024), (5, 9), vocab_size=50, seed=0,
                                      excluded_token_ids={0, 1, 2})
    assert len(requests) == 200
    input_lens = [r.prompt_len for r in requests]
    output_lens = [r.expected_output_len for r in requests]
    assert min(input_lens) >= 100 and max(input_lens) <= 1024
    assert set(output_lens) == {5, 6, 7, 8, 9}
    all_ids = {t for r in requests for t in r.prompt_token_ids}
    assert all_ids == set(range(3, 50))
    assert all(isinstance(t, int) for t in requests[0].prompt_token_ids)


def test_random_fixed_lengths_and_shared_prefix():
    requests = sample_random_requests(4, (16, 16), (8, 8), vocab_size=1000, seed=3, prefix_len=5)
    assert [r.prompt_len for r in requests] == [21] * 4
    assert [r.expected_output_len for r in requests] == [8] * 4
    assert len({tuple(r.prompt_token_ids[:5]) for r in requests}) == 1
    assert len({tuple(r.prompt_token_ids[5:]) for r in requests}) == 4


def test_random_is_deterministic_per_seed():
    args = (8, (10, 20), (1, 4), 500)
    assert sample_random_requests(*args, seed=1) == sample_random_requests(*args, seed=1)
    assert sample_random_requests(*args, seed=1) != sample_random_requests(*args, seed=2)


def test_random_rejects_bad_ranges():
    with pytest.raises(ClientError, match="input_len"):
        sample_random_requests(1, (0, 4), (1, 1), 10)
    with pytest.raises(ClientError, match="output_len"):
        sample_random_requests(1, (4, 4), (5, 2), 10)


def _encode(text: str) -> list[int]:
    return [len(word) for word in text.split()]    # one token per word


def _write_sharegpt(tmp_path, conversations) -> str:
    path = tmp_path / "sharegpt.json"
    path.write_text(json.dumps([{"id": str(i), "conversations": turns}
                                for i, turns in enumerate(conversations)]))
    return str(path)


def _turns(prompt_words: int, reply_words: int) -> list[dict]:
    return [{"from": "human", "value": " ".join(["ab"] * prompt_words)},
            {"from": "gpt", "value": " ".join(["c"] * reply_words)}]


def test_sharegpt_prompt_tokens_and_reply_length(tmp_path):
    path = _write_sharegpt(tmp_path, [_turns(5, 7), _turns(6, 9)])
    requests = sample_sharegpt_requests(path, 2, _encode, seed=0)
    assert sorted((r.prompt_len, r.expected_output_len) for r in requests) == [(5, 7), (6, 9)]
    request = next(r for r in requests if r.prompt_len == 5)
    assert request == SampleRequest([2] * 5, 7, "ab ab ab ab ab")


def test_sharegpt_filters_like_vllm(tmp_path):
    conversations = [
        _turns(3, 10),        # prompt too short
        _turns(10, 3),        # reply too short
        _turns(1025, 10),     # prompt too long
        _turns(1000, 1049),   # total too long
        [_turns(10, 10)[0]],  # one turn only
        _turns(10, 10),       # kept
    ]
    path = _write_sharegpt(tmp_path, conversations)
    requests = sample_sharegpt_requests(path, 1, _encode, seed=0)
    assert [(r.prompt_len, r.expected_output_len) for r in requests] == [(10, 10)]


def test_sharegpt_output_len_override_skips_reply_check(tmp_path):
    path = _write_sharegpt(tmp_path, [_turns(10, 1)])
    requests = sample_sharegpt_requests(path, 1, _encode, output_len=32)
    assert [(r.prompt_len, r.expected_output_len) for r in requests] == [(10, 32)]


def test_sharegpt_seeded_shuffle_and_oversampling(tmp_path):
    path = _write_sharegpt(tmp_path, [_turns(4 + i, 4 + i) for i in range(10)])
    first = sample_sharegpt_requests(path, 5, _encode, seed=0)
    assert first == sample_sharegpt_requests(path, 5, _encode, seed=0)
    assert first != sample_sharegpt_requests(path, 5, _encode, seed=1)
    repeated = sample_sharegpt_requests(path, 15, _encode, seed=0)
    assert len(repeated) == 15 and len({r.prompt_len for r in repeated}) == 10


def test_sharegpt_errors_name_the_dataset(tmp_path):
    with pytest.raises(ClientError, match="cannot read"):
        sample_sharegpt_requests(tmp_path / "missing.json", 1, _encode)
    with pytest.raises(ClientError, match="length filter"):
        sample_sharegpt_requests(_write_sharegpt(tmp_path, [_turns(2, 2)]), 1, _encode)
