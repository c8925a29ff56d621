"""The advisor on real servers driven into each symptom: a tiny KV cache -> preemption, a
burst -> queue build-up, a long scheduler delay factor -> high TTFT. Each asserts that
``GET /advisor`` (or ``pagellm advise``) names the knob the guide names, plus the start-up
lint, the resolved-configuration log and the advisor line of the stats log."""

from __future__ import annotations

import threading
import time

import httpx

from pagellm.engine.engine_core import SLOW_STEP_ENV
from pagellm.entrypoints.cli.main import main
from pagellm.tuning.metrics_window import METRICS_READ
from tests.helpers.server import free_port, running_server, stop_server

PROMPT = "The quick brown fox jumps over it"     # 33 tokens (byte-level tokenizer)


def _complete(base: str, max_tokens: int) -> None:
    response = httpx.post(base + "/v1/completions", timeout=120, json={
        "model": "tiny", "prompt": PROMPT, "max_tokens": max_tokens, "ignore_eos": True,
        "temperature": 0})
    assert response.status_code == 200, response.text


def _burst(base: str, count: int, max_tokens: int) -> list[threading.Thread]:
    threads = [threading.Thread(target=_complete, args=(base, max_tokens)) for _ in range(count)]
    for thread in threads:
        thread.start()
    return threads


def _wait_running(base: str, count: int, timeout_s: float = 60.0) -> None:
    """Block until the server's vllm:num_requests_running gauge reaches ``count``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for line in httpx.get(base + "/metrics", timeout=30).text.splitlines():
            if line.startswith("vllm:num_requests_running{") and float(line.split()[-1]) >= count:
                return
        time.sleep(0.02)
    raise AssertionError(f"fewer than {count} requests running after {timeout_s} s")


def _finding(base: str, symptom: str) -> dict:
    report = httpx.get(base + "/advisor?window=600", timeout=30).json()
    found = [f for f in report["findings"] if f["symptom"] == symptom]
    assert found, report
    return found[0]


def test_tiny_kv_cache_preempts_and_the_advisor_names_the_kv_budget(tiny_model_dirs, capsys):
    # 10 blocks of 16 tokens (8 KiB each for the tiny Llama in float32) = 160 tokens for four
    # requests of 33 + 40 tokens (5 blocks) each
    with running_server(tiny_model_dirs["llama"], "--kv-cache-memory-bytes", str(10 * 8192),
                        "--max-model-len", "80", "--max-num-seqs", "4") as (proc, base):
        for thread in _burst(base, 4, 40):
            thread.join()
        metrics = httpx.get(base + "/metrics").text
        preemptions = [line for line in metrics.splitlines()
                       if line.startswith("vllm:num_preemptions_total")]
        assert float(preemptions[0].split()[-1]) > 0
        finding = _finding(base, "frequent_preemption")
        assert (finding["knob"], finding["direction"]) == ("kv_cache_memory_bytes", "increase")
        assert finding["suggested"] == str(2 * 10 * 8192)
        assert finding["source"].startswith("003_f5b5fcbd6a7f45fd.txt")
        # every series the advisor reads is in the real /metrics
        assert all(name in metrics for name in METRICS_READ)
        # the checklist finds the live /metrics (and the deploy/ assets)
        assert main(["check", "--scenario", "api_service", "--url", base]) == 0
        assert "[PASS  ] 4/8 monitoring" in capsys.readouterr().out
        assert stop_server(proc) == 0


def test_burst_queues_and_advise_names_max_num_seqs(tiny_model_dirs, capsys):
    # 50 ms per step: eight requests of 6 tokens one at a time keep >= 4 waiting for >= 1 s
    with running_server(tiny_model_dirs["llama"], "--max-num-seqs", "1",
                        env_extra={SLOW_STEP_ENV: "0.05"}) as (proc, base):
        threads = _burst(base, 8, 6)
        assert main(["advise", "--url", base, "--window", "2", "--interval", "0.25"]) == 0
        for thread in threads:
            thread.join()
        out = capsys.readouterr().out
        assert "queue_buildup: increase max_num_seqs -> 64" in out, out
        assert "001_a001effc249e1005.txt §4.2" in out
        finding = _finding(base, "queue_buildup")
        assert finding["knob"] == "max_num_seqs" and "max_num_seqs=1" in finding["evidence"]
        assert stop_server(proc) == 0


def test_long_delay_factor_raises_ttft_and_the_advisor_lowers_it(tiny_model_dirs):
    # 20 ms per step, delay factor 20: a new prompt waits >= 0.4 s while a request runs
    env = {"PAGELLM_LOG_STATS_INTERVAL": "1", SLOW_STEP_ENV: "0.02"}
    with running_server(tiny_model_dirs["llama"], "--scenario", "online_chat",
                        "--scheduler-delay-factor", "20", log_stats=True,
                        env_extra=env) as (proc, base):
        background = _burst(base, 1, 150)       # keeps a request running: the delay applies
        _wait_running(base, 1)      # else a short request may come first and pass undelayed
        for _ in range(3):
            _complete(base, 2)
        background[0].join()
        finding = _finding(base, "high_ttft")
        assert (finding["knob"], finding["direction"], finding["suggested"]) == (
            "scheduler_delay_factor", "decrease", "1.0")
        assert "target 200 ms" in finding["evidence"]      # online_chat's TTFT goal
        assert stop_server(proc) == 0
        log = proc.stdout.read()
    assert "Engine configuration (scenario online_chat)" in log
    assert "scheduler_delay_factor=20.0 (flag)" in log and "max_num_seqs=64 (scenario)" in log
    assert "config lint: batch_settings_on_online_scenario" in log
    assert "Advisor: " in log and "high_ttft -> decrease scheduler_delay_factor" in log


def test_advise_against_nothing_is_a_clear_error(capsys, tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    assert main(["advise", "--url", url, "--window", "1"]) == 2
    err = capsys.readouterr().err
    assert "cannot reach" in err and "pagellm serve" in err and "Traceback" not in err
    assert main(["advise", "--bench-json", str(tmp_path / "missing.json")]) == 2
    assert "cannot read" in capsys.readouterr().err
    assert main(["advise", "--url", url, "--scenario", "chatbot"]) == 2
    assert "scenario must be one of" in capsys.readouterr().err
