"""SamplingParams: vLLM defaults, normalisation, and one ClientError per bad field."""

from __future__ import annotations

import pytest

from pagellm.errors import ClientError
from pagellm.sampling_params import SamplingParams

VLLM_DEFAULTS = {
    "n": 1,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
    "repetition_penalty": 1.0,
    "temperature": 1.0,
    "top_p": 1.0,
    "top_k": 0,
    "min_p": 0.0,
    "seed": None,
    "stop": [],
    "stop_token_ids": [],
    "ignore_eos": False,
    "max_tokens": 16,
    "min_tokens": 0,
    "logprobs": None,
    "prompt_logprobs": None,
    "detokenize": True,
    "skip_special_tokens": True,
    "spaces_between_special_tokens": True,
    "include_stop_str_in_output": False,
    "logit_bias": None,
    "output_kind": "final",
}


def test_defaults_match_vllm():
    params = SamplingParams()
    assert {name: getattr(params, name) for name in VLLM_DEFAULTS} == VLLM_DEFAULTS
    assert params.all_stop_token_ids == set()
    assert not params.greedy


BAD_VALUES = [
    ("n", 0), ("n", -1), ("n", 1.5),
    ("presence_penalty", 2.01), ("presence_penalty", -2.5), ("presence_penalty", float("nan")),
    ("frequency_penalty", 3.0), ("frequency_penalty", -2.01),
    ("repetition_penalty", 0.0), ("repetition_penalty", -1.0),
    ("temperature", -0.1), ("temperature", float("nan")),
    ("top_p", 0.0), ("top_p", 1.01), ("top_p", -0.5),
    ("top_k", -2), ("top_k", 2.5),
    ("min_p", -0.1), ("min_p", 1.1),
    ("seed", 2**63), ("seed", -(2**63)), ("seed", "42"),
    ("max_tokens", 0), ("max_tokens", -5), ("max_tokens", 3.0),
    ("min_tokens", -1),
    ("logprobs", -1), ("logprobs", 1.5),
    ("prompt_logprobs", -1),
    ("stop", [""]), ("stop", ["ok", 3]), ("stop", 5),
    ("stop_token_ids", [-1]), ("stop_token_ids", ["2"]), ("stop_token_ids", 7),
    ("logit_bias", {1: 100.5}), ("logit_bias", {1: -101.0}), ("logit_bias", {"x": 1.0}),
    ("logit_bias", {1: "strong"}), ("logit_bias", {-3: 1.0}),
    ("output_kind", "partial"),
    # past what the engine's per-request arrays and messages hold (int32 / int64 / msgpack)
    ("n", 2**31), ("top_k", 2**31), ("top_k", 2**63), ("top_k", 2**64 + 1), ("top_k", True),
    ("max_tokens", 2**31), ("min_tokens", 2**63), ("logprobs", 2**31),
    ("prompt_logprobs", 2**64), ("stop_token_ids", [2**31]), ("logit_bias", {2**31: 1.0}),
    ("temperature", 10**400), ("top_p", -(10**400)), ("logit_bias", {5: 10**400}),
    # finite in float64 but inf in the sampler's float32 tensors (uniform sampling at top_k=1)
    ("temperature", 1e308), ("repetition_penalty", 3.5e38),
    # string keys (JSON) must be ASCII digits: int() would read these as 5, 50, 5
    ("logit_bias", {" 5": 1.0}), ("logit_bias", {"5_0": 1.0}), ("logit_bias", {"\u0665": 1.0}),
    ("logit_bias", {"5\n": 1.0}), ("logit_bias", {True: 1.0}),
]


@pytest.mark.parametrize("field, value", BAD_VALUES, ids=[f"{f}={v!r}" for f, v in BAD_VALUES])
def test_out_of_range_field_raises_client_error_naming_it(field, value):
    with pytest.raises(ValueError, match=field) as excinfo:
        SamplingParams(**{field: value})
    assert isinstance(excinfo.value, ClientError)
    assert excinfo.value.param == field


def test_min_tokens_above_max_tokens_is_rejected():
    with pytest.raises(ClientError, match="min_tokens") as excinfo:
        SamplingParams(max_tokens=4, min_tokens=5)
    assert excinfo.value.param == "min_tokens"
    assert SamplingParams(max_tokens=None, min_tokens=100).min_tokens == 100
    assert SamplingParams(max_tokens=5, min_tokens=5).min_tokens == 5


@pytest.mark.parametrize("kwargs", [
    dict(presence_penalty=2.0, frequency_penalty=-2.0), dict(repetition_penalty=0.01),
    dict(top_p=1.0, top_k=1, min_p=1.0), dict(temperature=0.0), dict(seed=-(2**63) + 1),
    dict(seed=2**63 - 1), dict(logprobs=0, prompt_logprobs=20), dict(logit_bias={5: -100.0}),
    dict(output_kind="delta"), dict(max_tokens=None), dict(top_k=2**31 - 1),
    dict(n=2**31 - 1), dict(max_tokens=2**31 - 1, min_tokens=2**31 - 1),
    dict(logprobs=2**31 - 1), dict(stop_token_ids=[0, 2**31 - 1]),
    dict(logit_bias={"0": 1, "2147483647": 1}), dict(temperature=3.4e38),
])
def test_boundary_values_are_accepted(kwargs):
    SamplingParams(**kwargs)


def test_top_k_minus_one_means_all_tokens():
    assert SamplingParams(top_k=-1).top_k == 0


@pytest.mark.parametrize("temperature", [0.0, 1e-6])
def test_greedy_normalisation_resets_the_random_knobs(temperature):
    params = SamplingParams(temperature=temperature, top_p=0.5, top_k=5, min_p=0.2, seed=3)
    assert params.greedy
    assert (params.temperature, params.top_p, params.top_k, params.min_p) == (0.0, 1.0, 0, 0.0)
    assert params.seed == 3


def test_small_positive_temperature_stays_random():
    params = SamplingParams(temperature=1e-4, top_k=5)
    assert not params.greedy and params.temperature == 1e-4 and params.top_k == 5


def test_stop_string_becomes_a_list():
    assert SamplingParams(stop="###").stop == ["###"]
    assert SamplingParams(stop=("a", "b")).stop == ["a", "b"]
    assert SamplingParams(stop=None, stop_token_ids=None).stop_token_ids == []


def test_logit_bias_json_keys_become_ints():
    params = SamplingParams(logit_bias={"50256": -100, "7": 2})
    assert params.logit_bias == {50256: -100.0, 7: 2.0}
    assert all(isinstance(v, float) for v in params.logit_bias.values())


def test_clone_is_deep_and_validates_changes():
    params = SamplingParams(stop=["x"], logit_bias={1: 1.0}, seed=4)
    copy = params.clone(max_tokens=8)
    copy.stop.append("y")
    copy.logit_bias[2] = 2.0
    assert params.stop == ["x"] and params.logit_bias == {1: 1.0}
    assert (copy.max_tokens, copy.seed) == (8, 4)
    with pytest.raises(ClientError, match="top_p"):
        params.clone(top_p=2.0)
