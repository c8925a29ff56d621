"""Structured outputs end to end: a tiny random model served over HTTP (every output of a
random model under a constraint must still be valid: a fast, strict check of the masking),
and the default model offline, where the outputs mean something.

Schemas cover nested objects, arrays, enums, required fields, string patterns and numbers
with bounds (no maxLength: xgrammar 0.2.9 lets a string with maxLength hold raw control
characters, invalid JSON; README notes it); every output is parsed and validated with ``jsonschema`` at temperature 1 over
many seeds, batched with unconstrained requests.
"""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

import httpx
import jsonschema
import pytest
from pydantic import BaseModel, Field

from tests.helpers.server import start_server, stop_server
from tests.helpers.tiny_models import make_tiny_model_dir

SCHEMAS = {
    "nested": {"type": "object", "properties": {"user": {
        "type": "object", "properties": {"name": {"type": "string", "pattern": "^[A-Za-z]{1,6}$"},
                                         "age": {"type": "integer", "minimum": 0, "maximum": 120}},
        "required": ["name", "age"], "additionalProperties": False}},
        "required": ["user"], "additionalProperties": False},
    "array_enum": {"type": "object", "properties": {
        "tags": {"type": "array", "items": {"enum": ["red", "green", "blue"]},
                 "minItems": 1, "maxItems": 3},
        "level": {"enum": ["low", "high"]}},
        "required": ["tags", "level"], "additionalProperties": False},
    "pattern_bounds": {"type": "object", "properties": {
        "code": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{2}$"},
        "count": {"type": "integer", "minimum": -5, "maximum": 5},
        "ok": {"type": "boolean"}},
        "required": ["code", "count", "ok"], "additionalProperties": False},
}
REGEX = r"[a-c]{2}-[0-9]{1,3}"
CHOICES = ["alpha", "beta", "gamma delta"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    # vocab_size 320 > the tokenizer's 259: the padded ids must be masked too
    model_dir = make_tiny_model_dir(tmp_path_factory.mktemp("so"), "llama", vocab_size=320)
    proc, base = start_server(model_dir, "--disable-any-whitespace", "--max-num-seqs", "16")
    yield base
    assert stop_server(proc) == 0


def post(base, route, **body):
    return httpx.post(f"{base}/v1/{route}", json={"model": "tiny", **body}, timeout=120)


def chat_body(content="Reply in JSON.", **fields):
    return {"messages": [{"role": "user", "content": content}], **fields}


def test_json_schemas_regex_and_choice_batched_with_free_requests(server):
    jobs = []
    for name, schema in SCHEMAS.items():
        response_format = {"type": "json_schema",
                           "json_schema": {"name": name, "schema": schema, "strict": True}}
        jobs += [("chat/completions", chat_body(response_format=response_format, seed=seed,
                                                temperature=1.0, max_tokens=120), schema)
                 for seed in range(6)]
    jobs += [("completions", {"prompt": "x", "guided_regex": REGEX, "seed": s, "max_tokens": 12,
                              "temperature": 1.0}, "regex") for s in range(6)]
    jobs += [("completions", {"prompt": "y", "structured_outputs": {"choice": CHOICES},
                              "seed": s, "max_tokens": 16}, "choice") for s in range(6)]
    jobs += [("completions", {"prompt": "free", "seed": s, "max_tokens": 20, "ignore_eos": True},
              None) for s in range(6)]
    with ThreadPoolExecutor(len(jobs)) as pool:
        responses = list(pool.map(lambda job: post(server, job[0], **job[1]), jobs))
    for (route, _, check), response in zip(jobs, responses):
        assert response.status_code == 200, response.text
        choice = response.json()["choices"][0]
        text = choice["message"]["content"] if route.startswith("chat") else choice["text"]
        if check is None:
            assert choice["finish_reason"] == "length"
            continue
        assert choice["finish_reason"] == "stop", (text, check)
        if check == "regex":
            assert re.fullmatch(REGEX, text), text
        elif check == "choice":
            assert text in CHOICES
        else:
            jsonschema.validate(json.loads(text), check)


def test_completions_json_object_n_and_streaming(server):
    response = post(server, "completions", prompt="z", n=3, seed=1, max_tokens=60,
                    response_format={"type": "json_object"})
    texts = [choice["text"] for choice in response.json()["choices"]]
    assert len(texts) == 3 and all(isinstance(json.loads(t), dict) for t in texts)
    with httpx.stream("POST", f"{server}/v1/chat/completions", timeout=120, json={
            "model": "tiny", "stream": True, "seed": 3, "max_tokens": 60,
            **chat_body(guided_json=SCHEMAS["array_enum"])}) as stream:
        events = [json.loads(line[6:]) for line in stream.iter_lines()
                  if line.startswith("data: {")]
    deltas = [e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"]]
    assert len([d for d in deltas if d]) > 3                 # streamed in pieces
    jsonschema.validate(json.loads("".join(deltas)), SCHEMAS["array_enum"])
    assert events[-1]["choices"][0]["finish_reason"] == "stop"


def test_a_grammar_cut_by_max_tokens_finishes_with_length(server):
    response = post(server, "completions", prompt="q", max_tokens=3,
                    structured_outputs={"json": SCHEMAS["nested"]})
    choice = response.json()["choices"][0]
    assert choice["finish_reason"] == "length" and len(choice["text"]) <= 3 * 4
    assert choice["text"].startswith('{"')


def test_min_tokens_beyond_a_finished_grammar_ends_with_stop_and_valid_output(server):
    # The choice is complete after a few tokens; min_tokens=40 cannot be met. The grammar
    # wins: a valid choice and "stop", not a grammar-breaking token and "error".
    response = post(server, "completions", prompt="q", max_tokens=60, min_tokens=40,
                    structured_outputs={"choice": CHOICES})
    choice = response.json()["choices"][0]
    assert response.status_code == 200 and choice["finish_reason"] == "stop", choice
    assert choice["text"] in CHOICES


@pytest.mark.parametrize("body, param, message", [
    (dict(response_format={"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "object", "properties": {"a": {"type": "nope"}}}}}),
     "structured_outputs", 'invalid structured outputs json: .*Unsupported type "nope"'),
    (dict(guided_regex="([a-z]"), "structured_outputs", "invalid structured outputs regex"),
    (dict(guided_grammar="root ::= missing"), "structured_outputs", 'Rule "missing"'),
    (dict(response_format={"type": "json_schema"}), "response_format", "json_schema.schema"),
    (dict(guided_choice=["a"], guided_decoding_backend="outlines"), "guided_decoding_backend",
     "xgrammar"),
])
def test_invalid_constraints_are_400s_naming_the_problem(server, body, param, message):
    response = post(server, "chat/completions", **chat_body(**body))
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and re.search(message, error["message"]), error


class Pet(BaseModel):
    kind: Literal["cat", "dog"]
    age: int = Field(ge=0, le=30)
    name: str = Field(pattern="^[a-z]{1,5}$")


def test_openai_client_parse_with_a_pydantic_model(server):
    from openai import OpenAI

    client = OpenAI(base_url=f"{server}/v1", api_key="x")
    completion = client.beta.chat.completions.parse(
        model="tiny", messages=[{"role": "user", "content": "a pet"}], response_format=Pet,
        max_tokens=80, seed=5)
    pet = completion.choices[0].message.parsed
    assert isinstance(pet, Pet) and completion.choices[0].finish_reason == "stop"


def test_langchain_with_structured_output_json_schema(server):
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(base_url=f"{server}/v1", api_key="x", model="tiny", max_tokens=80, seed=2)
    structured = llm.with_structured_output(Pet, method="json_schema")
    assert isinstance(structured.invoke("Describe a pet."), Pet)


# ---- the default model, offline -------------------------------------------------------------

def test_default_model_outputs_validate_over_seeds(default_llm):
    from pagellm import SamplingParams
    from pagellm.sampling_params import StructuredOutputsParams

    prompt = "Describe a user as JSON:"
    params, checks = [], []
    for name, schema in SCHEMAS.items():
        for seed in range(2):
            params.append(SamplingParams(temperature=1.0, seed=seed, max_tokens=60,
                                         structured_outputs=StructuredOutputsParams(
                                             json=schema, disable_any_whitespace=True)))
            checks.append(schema)
    for seed in range(2):
        params.append(SamplingParams(temperature=1.0, seed=seed, max_tokens=10,
                                     structured_outputs=StructuredOutputsParams(regex=REGEX)))
        checks.append("regex")
        params.append(SamplingParams(temperature=1.0, seed=seed, max_tokens=20))
        checks.append(None)
    outputs = default_llm.generate([prompt] * len(params), params, use_tqdm=False)
    for output, check in zip(outputs, checks):
        completion = output.outputs[0]
        if check is None:
            continue
        assert completion.finish_reason == "stop", completion.text
        if check == "regex":
            assert re.fullmatch(REGEX, completion.text)
        else:
            jsonschema.validate(json.loads(completion.text), check)
