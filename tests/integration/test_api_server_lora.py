"""Serving LoRA adapters over HTTP: --lora-modules (name=path and JSON), /v1/models with
``parent``, adapter selection by the request's ``model`` (same text as the offline LLM with
that adapter), 404 for an unknown model, and runtime load/unload behind
VLLM_ALLOW_RUNTIME_LORA_UPDATING."""

from __future__ import annotations

import json

import httpx
import pytest

from pagellm import LLM, LoRARequest, SamplingParams
from tests.helpers.server import running_server
from tests.helpers.tiny_lora import make_peft_adapter
from tests.helpers.tiny_models import make_tiny_model_dir

PROMPT = [5, 6, 7, 8, 9]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora-server")
    model = make_tiny_model_dir(root, "llama")
    adapters = {name: make_peft_adapter(model, root / name, seed=seed)
                for name, seed in (("a1", 1), ("a2", 2), ("a3", 3))}
    adapters["big"] = make_peft_adapter(model, root / "big", seed=4, rank=16)
    return model, adapters


def offline_text(model, adapter) -> str:
    llm = LLM(str(model), device="cpu", kv_cache_memory_bytes=4 * 2**20, enable_lora=True,
              max_lora_rank=8, max_model_len=256)
    request = LoRARequest("x", 1, str(adapter)) if adapter is not None else None
    params = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
    return llm.generate([PROMPT], params, use_tqdm=False, lora_request=request)[0].outputs[0].text


def complete(base: str, model: str) -> httpx.Response:
    return httpx.post(base + "/v1/completions", json={
        "model": model, "prompt": PROMPT, "max_tokens": 8, "temperature": 0.0,
        "ignore_eos": True}, timeout=60)


def test_lora_modules_models_selection_and_runtime_updates(setup):
    model, adapters = setup
    a2_json = json.dumps({"name": "a2", "path": str(adapters["a2"]), "base_model_name": "tiny"})
    with running_server(model, "--enable-lora", "--max-lora-rank", "8", "--max-loras", "2",
                        "--lora-modules", f"a1={adapters['a1']}", a2_json,
                        env_extra={"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}) as (_, base):
        cards = httpx.get(base + "/v1/models").json()["data"]
        assert [(c["id"], c["parent"]) for c in cards] == [("tiny", None), ("a1", "tiny"),
                                                            ("a2", "tiny")]
        replies = {name: complete(base, name).json() for name in ("tiny", "a1", "a2")}
        assert {name: r["model"] for name, r in replies.items()} == \
            {"tiny": "tiny", "a1": "a1", "a2": "a2"}        # the response names the adapter
        texts = {name: r["choices"][0]["text"] for name, r in replies.items()}
        chat = httpx.post(base + "/v1/chat/completions", json={
            "model": "a1", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2,
            "stream": True}, timeout=60)
        assert chat.status_code == 200
        chunks = [json.loads(line[6:]) for line in chat.text.splitlines()
                  if line.startswith("data: {")]
        assert chunks and {c["model"] for c in chunks} == {"a1"}
        assert texts["a1"] == offline_text(model, adapters["a1"])
        assert texts["tiny"] == offline_text(model, None)
        assert len(set(texts.values())) == 3

        missing = complete(base, "nope")
        assert missing.status_code == 404
        assert missing.json()["error"]["message"] == "The model `nope` does not exist."

        load = httpx.post(base + "/v1/load_lora_adapter",
                          json={"lora_name": "a3", "lora_path": str(adapters["a3"])})
        assert load.status_code == 200 and "a3" in load.text
        assert complete(base, "a3").json()["choices"][0]["text"] == \
            offline_text(model, adapters["a3"])
        again = httpx.post(base + "/v1/load_lora_adapter",
                           json={"lora_name": "a3", "lora_path": str(adapters["a3"])})
        assert again.status_code == 400
        base_name = httpx.post(base + "/v1/load_lora_adapter",
                               json={"lora_name": "tiny", "lora_path": str(adapters["a3"])})
        assert base_name.status_code == 400
        assert "is the base model's name" in base_name.json()["error"]["message"]
        big = httpx.post(base + "/v1/load_lora_adapter",
                         json={"lora_name": "big", "lora_path": str(adapters["big"])})
        assert big.status_code == 400 and "max_lora_rank" in big.json()["error"]["message"]
        assert httpx.post(base + "/v1/unload_lora_adapter",
                          json={"lora_name": "a3"}).status_code == 200
        assert complete(base, "a3").status_code == 404
        assert httpx.post(base + "/v1/unload_lora_adapter",
                          json={"lora_name": "a3"}).status_code == 404
        assert [c["id"] for c in httpx.get(base + "/v1/models").json()["data"]] == \
            ["tiny", "a1", "a2"]
        metrics = httpx.get(base + "/metrics").text
        assert 'vllm:lora_requests_info{max_lora="2",running_lora_adapters="a1"' in metrics


def test_runtime_routes_need_the_environment_variable(setup, monkeypatch):
    from pagellm.entrypoints.openai.serving_models import (parse_lora_modules,
                                                           runtime_lora_updating_allowed)

    for name in ("VLLM_ALLOW_RUNTIME_LORA_UPDATING", "PAGELLM_ALLOW_RUNTIME_LORA_UPDATING"):
        monkeypatch.delenv(name, raising=False)
    assert not runtime_lora_updating_allowed()
    monkeypatch.setenv("PAGELLM_ALLOW_RUNTIME_LORA_UPDATING", "true")
    assert runtime_lora_updating_allowed()
    assert [m.name for m in parse_lora_modules(["x=/p", '{"name": "y", "path": "/q"}'])] == ["x", "y"]
    with pytest.raises(ValueError, match="name=path"):
        parse_lora_modules(["nopath"])
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['bogus'\]"):
        parse_lora_modules(['{"name": "y", "path": "/q", "bogus": 1}'])


@pytest.mark.parametrize("flags, message", [
    (["--lora-modules", "a1={a1}"], "--lora-modules needs --enable-lora"),
    (["--enable-lora", "--lora-modules", "a1={missing}"], "no adapter_config.json"),
    (["--enable-lora", "--max-lora-rank", "8", "--lora-modules", "big={big}"], "max_lora_rank=8"),
    (["--enable-lora", "--lora-modules", "a={a1}", "a={a1}"], "names ['a'] more than once"),
    (["--enable-lora", "--served-model-name", "tiny", "--lora-modules", "tiny={a1}"],
     "'tiny' is the base model's name"),
    (["--enable-lora", "--lora-modules", "{{bad json"], "not valid JSON"),
    (["--enable-lora", "--lora-modules", '{{"name": "x", "path": 5}}'], "'path' as strings"),
    (["--enable-lora", "--lora-modules", "bj={badjson}"], "adapter_config.json: Expecting"),
])
def test_bad_lora_modules_fail_before_the_model_loads(setup, capsys, monkeypatch, flags, message):
    from pagellm.entrypoints.cli.main import main

    model, adapters = setup
    loads = []
    monkeypatch.setattr("pagellm.engine.async_engine.AsyncLLM.from_engine_args",
                        lambda *a, **k: loads.append(1))
    bad_json = adapters["a1"].parent / "badjson"
    bad_json.mkdir(exist_ok=True)
    (bad_json / "adapter_config.json").write_text("{oops")
    paths = {"a1": adapters["a1"], "big": adapters["big"], "missing": adapters["a1"].parent,
             "badjson": bad_json}
    argv = ["serve", str(model), "--port", "0"] + [f.format(**paths) for f in flags]
    assert main(argv) == 2
    assert message in capsys.readouterr().err and not loads
