"""``pagellm chat`` and ``pagellm complete`` against a real ``pagellm serve`` process on a tiny
model, run in-process through ``main()`` with stdin and stdout swapped."""

from __future__ import annotations

import io

import openai
import pytest

from pagellm.entrypoints.cli.main import main
from tests.helpers.server import free_port, tiny_server

API_KEY = "cli-key"


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    with tiny_server(tmp_path_factory, "cli", "--api-key", API_KEY,
                     "--disable-log-requests") as (_, base):
        yield base + "/v1"


@pytest.fixture(scope="module")
def client(url):
    return openai.OpenAI(base_url=url, api_key=API_KEY)


def _greedy(*args: str) -> list[str]:
    return [*args, "--max-tokens", "6", "--temperature", "0"]


def test_complete_quick_prints_the_completion(url, client, capsys, monkeypatch):
    monkeypatch.setenv("PAGELLM_API_KEY", API_KEY)       # the default --api-key
    expected = client.completions.create(model="tiny", prompt="hello", max_tokens=6,
                                         temperature=0).choices[0].text
    assert main(_greedy("complete", "--url", url, "-q", "hello")) == 0
    assert capsys.readouterr().out == expected + "\n"


def test_chat_repl_keeps_history(url, client, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("hi\n\nagain\n"))
    assert main(_greedy("chat", "--url", url, "--api-key", API_KEY, "--model", "tiny",
                        "--system-prompt", "be brief")) == 0
    lines = capsys.readouterr().out.split("\n")
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    first = client.chat.completions.create(model="tiny", messages=messages, max_tokens=6,
                                           temperature=0).choices[0].message.content
    messages += [{"role": "assistant", "content": first}, {"role": "user", "content": "again"}]
    second = client.chat.completions.create(model="tiny", messages=messages, max_tokens=6,
                                            temperature=0).choices[0].message.content
    assert "\n".join(lines) == f"{first}\n{second}\n"


def test_complete_repl_one_line_per_prompt(url, client, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("a\nb"))
    assert main(_greedy("complete", "--url", url, "--api-key", API_KEY)) == 0
    expected = [client.completions.create(model="tiny", prompt=prompt, max_tokens=6,
                                          temperature=0).choices[0].text for prompt in "ab"]
    assert capsys.readouterr().out == "".join(text + "\n" for text in expected)


def test_wrong_key_is_a_clear_error(url, capsys):
    assert main(["chat", "--url", url, "--api-key", "wrong", "-q", "hi"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("pagellm chat: error: the server answered 401: ")
    assert "API key" in err


@pytest.mark.parametrize("command", ["chat", "complete"])
def test_unreachable_server_exits_1_with_a_message(command, capsys):
    url = f"http://127.0.0.1:{free_port()}/v1"
    assert main([command, "--url", url, "-q", "hi"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"pagellm {command}: error: cannot reach the server at {url}")


def test_chat_prints_no_http_client_log_lines(url):
    """The httpx/httpcore INFO line per request ("HTTP Request: POST ...") is noise."""
    import os
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "pagellm", "chat", "--url", url, "--api-key", API_KEY,
         *_greedy("-q", "hi")], env={**os.environ, "PYTHONPATH": os.getcwd()},
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()
    assert "HTTP Request:" not in result.stderr and "httpx" not in result.stderr

