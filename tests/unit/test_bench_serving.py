"""``pagellm bench serving``: the arrival process and vLLM's metric math (deterministic), and
the streaming client end to end against a small fake OpenAI server started here (a test
double for the client only: it streams ``max_tokens`` one-character chunks)."""

from __future__ import annotations

import asyncio
import json
import math
import threading

import numpy as np
import pytest
from aiohttp import web

from pagellm.bench.serving import (RequestInput, RequestResult, arrival_offsets,
                                   calculate_metrics, format_summary, parse_goodput, run_requests,
                                   send_chat)
from pagellm.entrypoints.cli.main import build_parser
from pagellm.entrypoints.cli.main import main as cli_main
from pagellm.errors import ClientError

# ---- arrival process -----------------------------------------------------------------------


def test_infinite_rate_sends_everything_at_once():
    assert arrival_offsets(4, math.inf) == [0.0, 0.0, 0.0, 0.0]


def test_arrivals_are_seeded_gamma_gaps():
    offsets = arrival_offsets(5, request_rate=4.0, burstiness=0.5, seed=3)
    gaps = np.random.default_rng(3).gamma(shape=0.5, scale=1 / (4.0 * 0.5), size=4)
    assert offsets == [0.0] + np.cumsum(gaps).tolist()
    assert arrival_offsets(5, 4.0, 0.5, seed=3) == offsets


@pytest.mark.parametrize("burstiness", [0.5, 1.0, 4.0])
def test_arrival_rate_is_the_request_rate_whatever_the_burstiness(burstiness):
    offsets = arrival_offsets(20001, request_rate=8.0, burstiness=burstiness, seed=0)
    gaps = np.diff(offsets)
    assert gaps.mean() == pytest.approx(1 / 8.0, rel=0.05)
    # gamma(k, θ) has a coefficient of variation 1/sqrt(k): burstier is more variable
    assert gaps.std() / gaps.mean() == pytest.approx(1 / math.sqrt(burstiness), rel=0.05)


# ---- metrics -------------------------------------------------------------------------------

def result(ttft, latency, output_tokens, itl, prompt_len=10) -> RequestResult:
    return RequestResult(success=True, ttft=ttft, latency=latency, output_tokens=output_tokens,
                         itl=itl, prompt_len=prompt_len)


def test_metric_definitions_follow_vllm():
    results = [result(0.1, 1.1, 11, [0.1] * 10, prompt_len=10),
               result(0.3, 0.3, 1, [], prompt_len=20),          # one token: no TPOT
               result(0.2, 2.2, 5, [0.5, 0.5, 0.5, 0.5], prompt_len=30),
               RequestResult(success=False, prompt_len=40, error="HTTP 500")]
    metrics = calculate_metrics(results, duration_s=2.0, percentiles=[50, 99])
    assert (metrics.completed, metrics.failed) == (3, 1)
    assert (metrics.total_input, metrics.total_output) == (60, 17)
    assert metrics.output_lens == [11, 1, 5, 0]
    assert metrics.request_throughput == 1.5
    assert metrics.output_throughput == 8.5
    assert metrics.total_token_throughput == 38.5
    ttft = metrics.latencies["ttft"]
    assert ttft.mean == pytest.approx(200.0) and ttft.median == pytest.approx(200.0)
    tpot = metrics.latencies["tpot"]          # (1.1-0.1)/10 = 0.1 s, (2.2-0.2)/4 = 0.5 s
    assert tpot.mean == pytest.approx(300.0)
    assert tpot.percentiles[0] == (50, pytest.approx(300.0))
    itl = metrics.latencies["itl"]            # 14 pooled gaps
    assert itl.mean == pytest.approx((10 * 100 + 4 * 500) / 14)
    assert itl.median == pytest.approx(100.0)
    assert metrics.latencies["e2el"].mean == pytest.approx(1200.0)


def test_goodput_counts_requests_within_every_slo():
    results = [result(0.1, 1.1, 11, []), result(0.6, 1.6, 11, []), result(0.1, 5.1, 11, [])]
    slos = parse_goodput(["ttft:500", "tpot:200"])
    assert slos == {"ttft": 500.0, "tpot": 200.0}
    metrics = calculate_metrics(results, 1.0, goodput_slos_ms=slos)
    assert metrics.request_goodput == 1.0    # the 2nd misses TTFT, the 3rd misses TPOT (0.5 s)
    with pytest.raises(ClientError):
        parse_goodput(["itl:5"])
    with pytest.raises(ClientError):
        parse_goodput(["ttft=5"])


def test_no_successful_request_gives_zeros():
    metrics = calculate_metrics([RequestResult(error="x")], 1.0)
    assert metrics.completed == 0 and metrics.latencies["ttft"].mean == 0.0


def test_summary_block():
    metrics = calculate_metrics([result(0.1, 1.1, 11, [0.1] * 10)], 2.0, percentiles=[90, 99.9])
    text = format_summary(metrics, 2.0, ["ttft", "tpot", "itl", "e2el"], request_rate=4.0,
                          max_concurrency=8, with_goodput=True)
    lines = text.splitlines()
    assert lines[0] == "============ Serving Benchmark Result ============"
    assert lines[-1] == "=" * 50
    for expected in ("Successful requests:                     1",
                     "Maximum request concurrency:             8",
                     "Request rate configured (RPS):           4.00",
                     "Benchmark duration (s):                  2.00",
                     "Total input tokens:                      10",
                     "Total generated tokens:                  11",
                     "Request throughput (req/s):              0.50",
                     "Request goodput (req/s):                 0.00",
                     "Output token throughput (tok/s):         5.50",
                     "Total Token throughput (tok/s):          10.50",
                     "---------------Time to First Token----------------",
                     "Mean TTFT (ms):                          100.00",
                     "Median TTFT (ms):                        100.00",
                     "P90 TTFT (ms):                           100.00",
                     "P99.9 TTFT (ms):                         100.00",
                     "-----Time per Output Token (excl. 1st token)------",
                     "Mean TPOT (ms):                          100.00",
                     "Mean ITL (ms):                           100.00",
                     "Mean E2EL (ms):                          1100.00"):
        assert expected in [line.rstrip() for line in lines], expected


# ---- the client against a fake server ------------------------------------------------------

class FakeOpenAIServer:
    """Streams ``max_tokens`` chunks of one character each; records every request body."""

    def __init__(self, status: int = 200, send_usage: bool = True):
        self.status, self.send_usage = status, send_usage
        self.bodies: list[dict] = []
        self.max_in_flight = self.in_flight = 0
        self.loop = asyncio.new_event_loop()
        self.port = None

    async def _models(self, request):
        return web.json_response({"object": "list", "data": [{"id": "fake-model"}]})

    async def _generate(self, request):
        body = await request.json()
        self.bodies.append(body)
        if self.status != 200:
            return web.json_response({"error": {"message": "no", "code": self.status}},
                                     status=self.status)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        chat = request.path.endswith("chat/completions")
        num_tokens = body.get("max_completion_tokens") or body["max_tokens"]
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        try:
            if chat:
                await self._send(response, {"choices": [{"index": 0, "delta": {
                    "role": "assistant", "content": ""}}]})
            for _ in range(num_tokens):
                await asyncio.sleep(0.002)
                choice = {"index": 0, "delta": {"content": "x"}} if chat else \
                    {"index": 0, "text": "x"}
                await self._send(response, {"choices": [choice]})
            if self.send_usage and body.get("stream_options", {}).get("include_usage"):
                await self._send(response, {"choices": [], "usage": {
                    "prompt_tokens": 1, "completion_tokens": num_tokens}})
            await response.write(b"data: [DONE]\n\n")
        finally:
            self.in_flight -= 1
        return response

    @staticmethod
    async def _send(response, payload: dict) -> None:
        await response.write(f"data: {json.dumps(payload)}\n\n".encode())

    def __enter__(self) -> str:
        app = web.Application()
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/completions", self._generate)
        app.router.add_post("/v1/chat/completions", self._generate)
        self.runner = web.AppRunner(app)
        self.loop.run_until_complete(self.runner.setup())
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        self.port = self.runner.addresses[0][1]
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc_info) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def bench_args(base_url: str, *extra: str):
    return build_parser().parse_args([
        "bench", "serving", "--base-url", base_url, "--model", "qwen3-0.6b",
        "--num-prompts", "6", "--random-input-len", "16", "--random-output-len", "5",
        "--disable-tqdm", *extra])


def test_benchmark_end_to_end_against_a_fake_server(tmp_path, capsys):
    output_json = tmp_path / "result.json"
    server = FakeOpenAIServer()
    with server as base_url:
        args = bench_args(base_url, "--max-concurrency", "2", "--ignore-eos", "--goodput",
                          "ttft:10000", "--percentile-metrics", "ttft,tpot,itl,e2el",
                          "--metric-percentiles", "50,99", "--output-json", str(output_json))
        data = args.run(args)
    bodies = server.bodies[1:]                      # the first is the test request
    assert len(bodies) == 6 and server.max_in_flight <= 2
    for body in bodies:
        assert isinstance(body["prompt"], list) and len(body["prompt"]) == 16
        assert all(isinstance(token, int) for token in body["prompt"])
        assert body["max_tokens"] == 5 and body["stream"] is True and body["ignore_eos"] is True
        assert body["stream_options"] == {"include_usage": True}
        assert body["model"] == "qwen3-0.6b" and body["temperature"] == 0.0
    assert (data["completed"], data["failed"]) == (6, 0)
    assert data["total_input_tokens"] == 96 and data["total_output_tokens"] == 30
    assert data["generated_texts"] == ["xxxxx"] * 6
    assert all(len(itl) == 4 for itl in data["itls"]) and all(t > 0 for t in data["ttfts"])
    assert data["request_goodput"] == pytest.approx(data["request_throughput"])
    for key in ("mean_ttft_ms", "p50_tpot_ms", "p99_itl_ms", "median_e2el_ms"):
        assert data[key] > 0
    assert json.loads(output_json.read_text())["completed"] == 6
    out = capsys.readouterr().out
    assert "============ Serving Benchmark Result ============" in out
    assert "Successful requests:                     6" in out


def test_output_tokens_fall_back_to_chunk_count_and_model_from_server():
    server = FakeOpenAIServer(send_usage=False)
    with server as base_url:
        args = build_parser().parse_args([
            "bench", "serving", "--base-url", base_url, "--tokenizer", "qwen3-0.6b",
            "--num-prompts", "3", "--random-input-len", "4", "--random-output-len", "3",
            "--request-rate", "200", "--disable-tqdm", "--skip-test-request"])
        data = args.run(args)
    assert [body["model"] for body in server.bodies] == ["fake-model"] * 3
    assert data["output_lens"] == [3, 3, 3]


def test_chat_endpoint_counts_the_role_chunk_like_vllm():
    async def go(base_url):
        request = RequestInput("hello", 1, 4, "m", base_url + "/v1/chat/completions")
        results, duration = await run_requests([request], send_chat, [0.0])
        return results[0], duration
    server = FakeOpenAIServer()
    with server as base_url:
        chat_result, duration = asyncio.run(go(base_url))
    assert chat_result.success and chat_result.generated_text == "xxxx"
    assert chat_result.output_tokens == 4 and len(chat_result.itl) == 4
    assert server.bodies[0]["messages"] == [{"role": "user", "content": "hello"}]
    assert server.bodies[0]["max_completion_tokens"] == 4
    assert 0 < chat_result.latency <= duration


def test_failed_requests_are_counted_and_a_failing_test_request_stops_the_run():
    with FakeOpenAIServer(status=500) as base_url:
        args = bench_args(base_url, "--skip-test-request")
        data = args.run(args)
        assert (data["completed"], data["failed"]) == (0, 6)
        assert data["errors"][0].startswith("HTTP 500")
        assert cli_main(["bench", "serving", "--base-url", base_url, "--model", "qwen3-0.6b",
                         "--num-prompts", "2", "--disable-tqdm"]) == 2


@pytest.mark.parametrize("flags", [["--request-rate", "0"], ["--burstiness", "-1"],
                                   ["--max-concurrency", "0"], ["--num-prompts", "0"],
                                   ["--percentile-metrics", "ttft,foo"],
                                   ["--metric-percentiles", "0"],
                                   ["--dataset-name", "sharegpt"]])
def test_bad_options_are_rejected_before_any_request(flags):
    args = bench_args("http://127.0.0.1:9", *flags)
    with pytest.raises(ClientError):
        args.run(args)


def test_random_prompts_need_a_vocabulary():
    args = build_parser().parse_args(["bench", "serving", "--model", "no-such-model",
                                      "--num-prompts", "1"])
    with pytest.raises(ClientError) as info:
        args.run(args)
    assert info.value.param == "tokenizer"


def test_model_default_gives_the_default_models_vocabulary():
    """README's `bench serving --model default --dataset-name random`: the prompts come from
    the default model's tokenizer (the .gguf the server resolves 'default' to)."""
    from pagellm.bench.serving import load_bench_tokenizer, random_vocabulary

    args = build_parser().parse_args(["bench", "serving", "--model", "default",
                                      "--dataset-name", "random", "--num-prompts", "1"])
    tokenizer = load_bench_tokenizer(args)
    vocab_size, special = random_vocabulary(args, tokenizer)
    assert vocab_size == 49152 and tokenizer.eos_token_id in special
