"""Server flags end to end: --max-logprobs bounds logprobs, --chat-template applies to chat and
/tokenize, --tokenizer-pool-size serves through the pool, and the periodic stats line is logged
(every $PAGELLM_LOG_STATS_INTERVAL seconds) unless --disable-log-stats."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.helpers.server import stop_server, tiny_server

TEMPLATE = "{% for m in messages %}<<{{ m['content'] }}>>{% endfor %}"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    with tiny_server(tmp_path_factory, "flags", "--max-logprobs", "3", "--chat-template", TEMPLATE,
                     "--tokenizer-pool-size", "2", log_stats=True,
                     env_extra={"PAGELLM_LOG_STATS_INTERVAL": "0.5"}) as served:
        yield served


def _post(base, path, **body):
    return httpx.post(base + path, json={"model": "tiny", **body}, timeout=60)


def test_max_logprobs_bounds_requests(served):
    _, base = served
    ok = _post(base, "/v1/completions", prompt="hi", max_tokens=2, logprobs=3, temperature=0)
    assert ok.status_code == 200
    assert len(ok.json()["choices"][0]["logprobs"]["top_logprobs"][0]) == 3
    too_many = _post(base, "/v1/completions", prompt="hi", max_tokens=2, logprobs=4)
    assert too_many.status_code == 400 and too_many.json()["error"]["param"] == "logprobs"
    chat = _post(base, "/v1/chat/completions", messages=[{"role": "user", "content": "hi"}],
                 max_completion_tokens=2, logprobs=True, top_logprobs=4)
    assert chat.status_code == 400 and chat.json()["error"]["param"] == "top_logprobs"


def test_chat_template_flag_renders_chat_and_tokenize(served):
    _, base = served
    messages = [{"role": "user", "content": "abc"}, {"role": "user", "content": "de"}]
    rendered = _post(base, "/tokenize", messages=messages).json()["tokens"]
    expected = _post(base, "/tokenize", prompt="<<abc>><<de>>",
                     add_special_tokens=False).json()["tokens"]
    assert rendered == expected
    chat = _post(base, "/v1/chat/completions", messages=messages, max_completion_tokens=1)
    assert chat.status_code == 200
    assert chat.json()["usage"]["prompt_tokens"] == len(expected)


def test_stats_line_is_logged(served):
    proc, base = served
    for _ in range(3):
        assert _post(base, "/v1/completions", prompt="x" * 30, max_tokens=16,
                     ignore_eos=True).status_code == 200
    time.sleep(1.5)                             # at least two 0.5 s intervals with traffic
    assert stop_server(proc) == 0
    output = proc.stdout.read()
    assert "Avg prompt throughput:" in output and "Avg generation throughput:" in output
