"""``pagellm bench serving``: an online benchmark against any OpenAI-compatible server, as
vLLM's ``vllm bench serving``.

Requests are streamed (``stream_options.include_usage``) and sent on a Poisson process of
``--request-rate`` requests/s (``inf``: all at once); ``--burstiness`` b draws the gaps from a
gamma distribution of shape b and mean 1/rate (b = 1 is Poisson, b < 1 burstier, b > 1
steadier); ``--max-concurrency`` caps requests in flight. Metrics follow vLLM's definitions:

- TTFT: first streamed chunk − send time, per request;
- TPOT: (E2E latency − TTFT) / (output tokens − 1), per request with more than one token;
- ITL: gaps between successive streamed chunks, pooled over all requests;
- E2EL: last chunk − send time; output tokens from the final usage chunk, else the number of
  chunks.

Random prompts are token ids sent as ``prompt: [ids]`` (/v1/completions), or their decoded text
with a tokenizer; ShareGPT prompts are text.

    pagellm bench serving --port 8000 --model llama-3.1-8b --dataset-name random \\
        --random-input-len 1024 --random-output-len 128 --num-prompts 1000 --request-rate 16 \\
        --ignore-eos
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from pagellm.bench.common import has_tokenizer_files, resolve_bench_model, write_json
from pagellm.bench.datasets import (SampleRequest, ratio_range, sample_jsonl_requests,
                                    sample_random_requests, sample_sharegpt_requests)
from pagellm.errors import ClientError

METRIC_NAMES = ("ttft", "tpot", "itl", "e2el")
GOODPUT_METRICS = ("ttft", "tpot", "e2el")
_METRIC_TITLES = {"ttft": ("TTFT", "Time to First Token"),
                  "tpot": ("TPOT", "Time per Output Token (excl. 1st token)"),
                  "itl": ("ITL", "Inter-token Latency"), "e2el": ("E2EL", "End-to-end Latency")}
_REQUEST_TIMEOUT_S = 6 * 60 * 60
_MAX_ERROR_CHARS = 500


@dataclass(slots=True)
class RequestInput:
    prompt: str | list[int]
    prompt_len: int
    output_len: int
    model: str
    api_url: str
    extra_body: dict = field(default_factory=dict)
    """Sampling fields added to the request body (temperature, ignore_eos, ...)."""


@dataclass(slots=True)
class RequestResult:
    success: bool = False
    generated_text: str = ""
    output_tokens: int = 0
    ttft: float = 0.0
    """Seconds from send to the first chunk with choices."""
    itl: list[float] = field(default_factory=list)
    """Seconds between successive chunks with choices."""
    latency: float = 0.0
    """Seconds from send to the last chunk with choices."""
    prompt_len: int = 0
    error: str = ""


# ---- the client ---------------------------------------------------------------------------

async def _sse_payloads(response) -> Any:
    """The ``data:`` payloads of a server-sent event stream, as each event completes."""
    buffer = b""
    async for piece in response.content.iter_any():
        buffer += piece
        while b"\n\n" in buffer:
            event, buffer = buffer.split(b"\n\n", 1)
            for line in event.decode("utf-8", errors="replace").splitlines():
                if line.startswith("data:"):
                    yield line[len("data:"):].strip()


async def _stream_request(session, request: RequestInput, body: dict,
                          chunk_text: Callable[[dict], str]) -> RequestResult:
    result = RequestResult(prompt_len=request.prompt_len)
    num_chunks, last_time, usage_tokens = 0, 0.0, None
    start = time.perf_counter()
    try:
        async with session.post(request.api_url, json=body) as response:
            if response.status != 200:
                body = await response.text()
                result.error = f"HTTP {response.status}: {body[:_MAX_ERROR_CHARS]}"
                return result
            async for payload in _sse_payloads(response):
                if payload == "[DONE]":
                    break
                data = json.loads(payload)
                if "error" in data:
                    result.error = json.dumps(data["error"])[:_MAX_ERROR_CHARS]
                    return result
                if data.get("choices"):
                    now = time.perf_counter()
                    if num_chunks == 0:
                        result.ttft = now - start
                    else:
                        result.itl.append(now - last_time)
                    last_time, num_chunks = now, num_chunks + 1
                    result.generated_text += chunk_text(data["choices"][0]) or ""
                elif data.get("usage"):
                    usage_tokens = data["usage"].get("completion_tokens")
    except Exception as error:   # a failed request is a result, not a crash of the benchmark
        result.error = f"{type(error).__name__}: {error}"[:_MAX_ERROR_CHARS]
        return result
    if num_chunks == 0:
        result.error = "the stream ended without any output"
        return result
    result.latency = last_time - start
    result.output_tokens = usage_tokens if usage_tokens is not None else num_chunks
    result.success = True
    return result


async def send_completion(session, request: RequestInput) -> RequestResult:
    """One streamed POST /v1/completions."""
    body = {"model": request.model, "prompt": request.prompt, "max_tokens": request.output_len,
            "stream": True, "stream_options": {"include_usage": True}, **request.extra_body}
    return await _stream_request(session, request, body, lambda choice: choice.get("text"))


async def send_chat(session, request: RequestInput) -> RequestResult:
    """One streamed POST /v1/chat/completions with the prompt as the user's message."""
    if not isinstance(request.prompt, str):
        return RequestResult(prompt_len=request.prompt_len,
                             error="chat requests need text prompts (pass --tokenizer)")
    body = {"model": request.model, "messages": [{"role": "user", "content": request.prompt}],
            "max_completion_tokens": request.output_len, "stream": True,
            "stream_options": {"include_usage": True}, **request.extra_body}
    return await _stream_request(session, request, body,
                                 lambda choice: (choice.get("delta") or {}).get("content"))


def sender_for(endpoint: str) -> Callable[[Any, RequestInput], Awaitable[RequestResult]]:
    return send_chat if endpoint.rstrip("/").endswith("chat/completions") else send_completion


# ---- the arrival process and the run ------------------------------------------------------

def arrival_offsets(num_requests: int, request_rate: float, burstiness: float = 1.0,
                    seed: int = 0) -> list[float]:
    """Send times in seconds after the start: the first at 0, then gaps drawn from
    Gamma(shape=burstiness, scale=1 / (request_rate * burstiness)), whose mean is
    1 / request_rate. An infinite rate sends everything at 0."""
    if math.isinf(request_rate):
        return [0.0] * num_requests
    scale = 1.0 / (request_rate * burstiness)
    gaps = np.random.default_rng(seed).gamma(shape=burstiness, scale=scale,
                                             size=max(0, num_requests - 1))
    return [0.0] + np.cumsum(gaps).tolist() if num_requests else []


async def run_requests(inputs: Sequence[RequestInput], send, offsets: Sequence[float],
                       max_concurrency: int | None = None, progress=None
                       ) -> tuple[list[RequestResult], float]:
    """Send ``inputs[i]`` at ``offsets[i]`` seconds (waiting for a free slot under
    ``max_concurrency``); returns the results in input order and the wall time in seconds."""
    import aiohttp

    semaphore = asyncio.Semaphore(max_concurrency) if max_concurrency else None
    connector = aiohttp.TCPConnector(limit=max_concurrency or 0, force_close=False)
    timeout = aiohttp.ClientTimeout(total=_REQUEST_TIMEOUT_S)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout,
                                     trust_env=False) as session:
        start = time.perf_counter()

        async def one(request: RequestInput, offset: float) -> RequestResult:
            delay = start + offset - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if semaphore is None:
                result = await send(session, request)
            else:
                async with semaphore:
                    result = await send(session, request)
            if progress is not None:
                progress.update(1)
            return result

        results = await asyncio.gather(*(one(request, offset)
                                         for request, offset in zip(inputs, offsets)))
        return list(results), time.perf_counter() - start


async def fetch_model_id(base_url: str) -> str:
    """The first model the server lists at GET /v1/models."""
    import aiohttp

    async with aiohttp.ClientSession(trust_env=False) as session:
        async with session.get(f"{base_url}/v1/models") as response:
            if response.status != 200:
                raise ClientError(f"GET {base_url}/v1/models answered HTTP {response.status}; "
                                  "pass --model", param="model")
            models = (await response.json()).get("data") or []
    if not models:
        raise ClientError(f"{base_url}/v1/models lists no model; pass --model", param="model")
    return models[0]["id"]


# ---- metrics ------------------------------------------------------------------------------

@dataclass
class MetricStats:
    """One latency metric over the benchmark, in milliseconds."""

    mean: float
    median: float
    std: float
    percentiles: list[tuple[float, float]]


@dataclass
class BenchmarkMetrics:
    completed: int
    failed: int
    total_input: int
    total_output: int
    request_throughput: float
    request_goodput: float
    output_throughput: float
    total_token_throughput: float
    latencies: dict[str, MetricStats]
    """ttft, tpot, itl, e2el."""
    output_lens: list[int]
    """Per request (0 for a failed one)."""


def _stats(values_s: Sequence[float], percentiles: Sequence[float]) -> MetricStats:
    values = np.asarray(values_s if len(values_s) else [0.0], dtype=np.float64) * 1000.0
    return MetricStats(float(values.mean()), float(np.median(values)), float(values.std()),
                       [(p, float(np.percentile(values, p))) for p in percentiles])


def calculate_metrics(results: Sequence[RequestResult], duration_s: float,
                      percentiles: Sequence[float] = (99,),
                      goodput_slos_ms: dict[str, float] | None = None) -> BenchmarkMetrics:
    """vLLM's serving metrics from per-request results over a run of ``duration_s``.
    ``goodput_slos_ms``: a request is good when each named metric (ttft, tpot, e2el) is at or
    under its SLO in ms."""
    ttfts, tpots, itls, e2els, output_lens = [], [], [], [], []
    good, total_input = 0, 0
    for result in results:
        if not result.success:
            output_lens.append(0)
            continue
        output_lens.append(result.output_tokens)
        total_input += result.prompt_len
        tpot = 0.0
        if result.output_tokens > 1:
            tpot = (result.latency - result.ttft) / (result.output_tokens - 1)
            tpots.append(tpot)
        ttfts.append(result.ttft)
        itls.extend(result.itl)
        e2els.append(result.latency)
        measured_ms = {"ttft": result.ttft * 1000, "tpot": tpot * 1000,
                       "e2el": result.latency * 1000}
        if goodput_slos_ms and all(measured_ms[name] <= slo
                                   for name, slo in goodput_slos_ms.items()):
            good += 1
    completed, total_output = len(ttfts), sum(output_lens)
    return BenchmarkMetrics(
        completed=completed, failed=len(results) - completed, total_input=total_input,
        total_output=total_output, request_throughput=completed / duration_s,
        request_goodput=good / duration_s, output_throughput=total_output / duration_s,
        total_token_throughput=(total_input + total_output) / duration_s,
        latencies={name: _stats(values, percentiles) for name, values in
                   (("ttft", ttfts), ("tpot", tpots), ("itl", itls), ("e2el", e2els))},
        output_lens=output_lens)


def format_summary(metrics: BenchmarkMetrics, duration_s: float,
                   selected: Sequence[str] = ("ttft", "tpot", "itl"),
                   request_rate: float = math.inf, max_concurrency: int | None = None,
                   with_goodput: bool = False) -> str:
    """vLLM's printed result block."""
    def row(label: str, value, number_format: str = "<10") -> str:
        return f"{label:<40} {value:{number_format}}"

    lines = ["{:=^50}".format(" Serving Benchmark Result "),
             row("Successful requests:", metrics.completed),
             row("Failed requests:", metrics.failed)]
    if max_concurrency is not None:
        lines.append(row("Maximum request concurrency:", max_concurrency))
    if not math.isinf(request_rate):
        lines.append(row("Request rate configured (RPS):", request_rate, "<10.2f"))
    lines += [row("Benchmark duration (s):", duration_s, "<10.2f"),
              row("Total input tokens:", metrics.total_input),
              row("Total generated tokens:", metrics.total_output),
              row("Request throughput (req/s):", metrics.request_throughput, "<10.2f")]
    if with_goodput:
        lines.append(row("Request goodput (req/s):", metrics.request_goodput, "<10.2f"))
    lines += [row("Output token throughput (tok/s):", metrics.output_throughput, "<10.2f"),
              row("Total Token throughput (tok/s):", metrics.total_token_throughput, "<10.2f")]
    for name in METRIC_NAMES:
        if name not in selected:
            continue
        short, title = _METRIC_TITLES[name]
        stats = metrics.latencies[name]
        lines += ["{:-^50}".format(title),
                  row(f"Mean {short} (ms):", stats.mean, "<10.2f"),
                  row(f"Median {short} (ms):", stats.median, "<10.2f")]
        lines += [row(f"P{_percentile_word(p)} {short} (ms):", value, "<10.2f")
                  for p, value in stats.percentiles]
    lines.append("=" * 50)
    return "\n".join(lines)


def _percentile_word(p: float) -> str:
    return str(int(p)) if int(p) == p else str(p)


def results_json(metrics: BenchmarkMetrics, duration_s: float, results: Sequence[RequestResult],
                 selected: Sequence[str]) -> dict:
    """vLLM's result file: totals, throughputs, per-request lists and, for each selected
    metric, mean/median/std/pNN in ms."""
    data = {"duration": duration_s, "completed": metrics.completed, "failed": metrics.failed,
            "total_input_tokens": metrics.total_input,
            "total_output_tokens": metrics.total_output,
            "request_throughput": metrics.request_throughput,
            "request_goodput": metrics.request_goodput,
            "output_throughput": metrics.output_throughput,
            "total_token_throughput": metrics.total_token_throughput,
            "input_lens": [result.prompt_len for result in results],
            "output_lens": metrics.output_lens,
            "ttfts": [result.ttft for result in results],
            "itls": [result.itl for result in results],
            "generated_texts": [result.generated_text for result in results],
            "errors": [result.error for result in results]}
    for name in selected:
        stats = metrics.latencies[name]
        data[f"mean_{name}_ms"], data[f"median_{name}_ms"] = stats.mean, stats.median
        data[f"std_{name}_ms"] = stats.std
        for p, value in stats.percentiles:
            data[f"p{_percentile_word(p)}_{name}_ms"] = value
    return data


# ---- command line -------------------------------------------------------------------------

def add_cli_args(parser: argparse.ArgumentParser) -> None:
    server = parser.add_argument_group("server")
    server.add_argument("--base-url", default=None,
                        help="server URL, e.g. http://127.0.0.1:8000 (overrides --host/--port)")
    server.add_argument("--host", default="127.0.0.1")
    server.add_argument("--port", type=int, default=8000)
    server.add_argument("--endpoint", default="/v1/completions",
                        help="/v1/completions or /v1/chat/completions")
    server.add_argument("--model", default=None,
                        help="model name sent in requests (default: the first of /v1/models); "
                             "also where the tokenizer is looked for")
    server.add_argument("--tokenizer", default=None,
                        help="tokenizer directory or .gguf (ShareGPT prompts, chat prompts, and "
                             "the vocabulary of random prompts); default: --model when local")
    data = parser.add_argument_group("dataset")
    data.add_argument("--dataset-name", choices=("random", "sharegpt", "jsonl"),
                      default="random")
    data.add_argument("--dataset-path", default=None,
                      help="ShareGPT json file, or JSONL file of {\"prompt\": ..., "
                           "\"output_len\": N} lines")
    data.add_argument("--num-prompts", type=int, default=1000)
    data.add_argument("--random-input-len", type=int, default=1024)
    data.add_argument("--random-output-len", type=int, default=128)
    data.add_argument("--random-range-ratio", type=float, default=0.0,
                      help="lengths uniform in [len*(1-r), len*(1+r)], r in [0, 1)")
    data.add_argument("--random-prefix-len", type=int, default=0,
                      help="tokens of one shared prefix put before every random prompt")
    data.add_argument("--sharegpt-output-len", type=int, default=None,
                      help="output length of every ShareGPT request (default: the reply's)")
    data.add_argument("--jsonl-output-len", type=int, default=None,
                      help="output length of every JSONL request (default: the line's)")
    data.add_argument("--seed", type=int, default=0)
    load = parser.add_argument_group("load")
    load.add_argument("--request-rate", type=float, default=math.inf,
                      help="requests per second (default inf: all at once)")
    load.add_argument("--burstiness", type=float, default=1.0,
                      help="gamma shape of the arrival gaps: 1 = Poisson, <1 burstier")
    load.add_argument("--max-concurrency", type=int, default=None,
                      help="most requests in flight at once")
    load.add_argument("--ignore-eos", action="store_true",
                      help="ask the server to generate exactly the output length")
    load.add_argument("--temperature", type=float, default=0.0)
    load.add_argument("--skip-test-request", action="store_true",
                      help="do not send one request first to check the setup")
    report = parser.add_argument_group("report")
    report.add_argument("--percentile-metrics", default="ttft,tpot,itl",
                        help="comma-separated subset of ttft,tpot,itl,e2el")
    report.add_argument("--metric-percentiles", default="99",
                        help="comma-separated percentiles, e.g. 50,90,99")
    report.add_argument("--goodput", nargs="+", default=None, metavar="METRIC:MS",
                        help="SLOs for goodput, e.g. ttft:500 tpot:50 (ms; ttft, tpot, e2el)")
    report.add_argument("--output-json", default=None, help="write the results to this file")
    report.add_argument("--disable-tqdm", action="store_true", help="no progress bar")


def parse_goodput(items: Sequence[str] | None) -> dict[str, float]:
    """``["ttft:500", "tpot:50"]`` -> ``{"ttft": 500.0, "tpot": 50.0}``; ClientError otherwise."""
    slos = {}
    for item in items or ():
        name, _, value = item.partition(":")
        try:
            slo = float(value)
        except ValueError:
            slo = -1.0
        if name not in GOODPUT_METRICS or slo < 0:
            raise ClientError(f"--goodput takes METRIC:MS with METRIC in "
                              f"{', '.join(GOODPUT_METRICS)} and MS >= 0, got {item!r}",
                              param="goodput")
        slos[name] = slo
    return slos


def parse_percentile_options(args: argparse.Namespace) -> tuple[list[str], list[float]]:
    selected = [name.strip() for name in args.percentile_metrics.split(",") if name.strip()]
    unknown = [name for name in selected if name not in METRIC_NAMES]
    if unknown:
        raise ClientError(f"--percentile-metrics: unknown {unknown}; choose from "
                          f"{','.join(METRIC_NAMES)}", param="percentile_metrics")
    try:
        percentiles = [float(p) for p in args.metric_percentiles.split(",") if p.strip()]
    except ValueError:
        percentiles = [-1.0]
    if not percentiles or not all(0 < p <= 100 for p in percentiles):
        raise ClientError(f"--metric-percentiles must be numbers in (0, 100], got "
                          f"{args.metric_percentiles!r}", param="metric_percentiles")
    return selected, percentiles


def check_load_options(args: argparse.Namespace) -> None:
    if args.num_prompts < 1:
        raise ClientError(f"--num-prompts must be >= 1, got {args.num_prompts}",
                          param="num_prompts")
    if not args.request_rate > 0:
        raise ClientError(f"--request-rate must be > 0 (or inf), got {args.request_rate}",
                          param="request_rate")
    if not (args.burstiness > 0 and math.isfinite(args.burstiness)):
        raise ClientError(f"--burstiness must be > 0, got {args.burstiness}", param="burstiness")
    if args.max_concurrency is not None and args.max_concurrency < 1:
        raise ClientError(f"--max-concurrency must be >= 1, got {args.max_concurrency}",
                          param="max_concurrency")
    if args.dataset_name in ("sharegpt", "jsonl") and args.dataset_path is None:
        raise ClientError(f"--dataset-name {args.dataset_name} needs --dataset-path",
                          param="dataset_path")


def base_url_of(args: argparse.Namespace) -> str:
    return (args.base_url or f"http://{args.host}:{args.port}").rstrip("/")


def load_bench_tokenizer(args: argparse.Namespace):
    """The tokenizer of --tokenizer (a path must load; a shipped shape has none), else of
    --model when it is a local directory or file with one, or 'default' (the default model's
    .gguf, as the server resolves it); None when there is none."""
    from pagellm.engine.llm_engine import resolve_model_path
    from pagellm.engine.tokenizer import load_tokenizer

    name = args.tokenizer or args.model
    if name is None:
        return None
    if name == "default":
        return load_tokenizer(resolve_model_path(name))
    path = Path(resolve_bench_model(name)).expanduser()
    if path.exists() and has_tokenizer_files(str(path)):
        return load_tokenizer(path)
    if args.tokenizer is not None and not path.exists():
        return load_tokenizer(path)     # raises the tokenizer loader's ClientError
    return None


def random_vocabulary(args: argparse.Namespace, tokenizer) -> tuple[int, set[int]]:
    """(vocab size, special ids) for random prompts: the tokenizer's, capped by config.json's
    vocab_size, or config.json's alone for a shipped shape or config-only directory."""
    config: dict = {}
    for name in (args.tokenizer, args.model):
        config_file = Path(resolve_bench_model(name)).expanduser() / "config.json" if name else None
        if config_file is not None and config_file.is_file():
            config = json.loads(config_file.read_text())
            break
    if tokenizer is not None:
        vocab_size = min(tokenizer.vocab_size, config.get("vocab_size", tokenizer.vocab_size))
        return vocab_size, set(tokenizer.all_special_ids)
    if "vocab_size" not in config:
        raise ClientError("random prompts need a vocabulary: pass --tokenizer (a model "
                          "directory or .gguf) or a --model that is a local model directory or a "
                          "shipped shape", param="tokenizer")
    special: set[int] = set()
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = config.get(key)
        special.update(value if isinstance(value, list) else [] if value is None else [value])
    return config["vocab_size"], special


def sample_requests(args: argparse.Namespace, tokenizer) -> list[SampleRequest]:
    if args.dataset_name in ("sharegpt", "jsonl"):
        if tokenizer is None:
            raise ClientError(f"--dataset-name {args.dataset_name} needs a tokenizer (pass "
                              "--tokenizer)", param="tokenizer")
        if args.dataset_name == "jsonl":
            return sample_jsonl_requests(args.dataset_path, args.num_prompts, tokenizer.encode,
                                         args.seed, getattr(args, "jsonl_output_len", None))
        return sample_sharegpt_requests(args.dataset_path, args.num_prompts, tokenizer.encode,
                                        args.seed, args.sharegpt_output_len)
    vocab_size, special_ids = random_vocabulary(args, tokenizer)
    input_range = ratio_range(args.random_input_len, args.random_range_ratio, "input_len")
    output_range = ratio_range(args.random_output_len, args.random_range_ratio, "output_len")
    return sample_random_requests(args.num_prompts, input_range, output_range, vocab_size,
                                  args.seed, args.random_prefix_len, special_ids)


def build_inputs(samples: Sequence[SampleRequest], model: str, api_url: str, chat: bool,
                 tokenizer, extra_body: dict) -> list[RequestInput]:
    """Token-id prompts for completions; text (given, or decoded) for chat."""
    inputs = []
    for sample in samples:
        prompt: str | list[int] = sample.prompt_token_ids
        if sample.prompt is not None:
            prompt = sample.prompt
        elif chat and tokenizer is not None:
            prompt = tokenizer.decode(sample.prompt_token_ids)
        inputs.append(RequestInput(prompt, sample.prompt_len, sample.expected_output_len, model,
                                   api_url, dict(extra_body)))
    return inputs


async def benchmark(args: argparse.Namespace, samples: Sequence[SampleRequest], tokenizer
                    ) -> tuple[list[RequestResult], float, str]:
    """Run the benchmark; returns (results, duration in s, model id)."""
    from tqdm.auto import tqdm

    base_url = base_url_of(args)
    model = args.model or await fetch_model_id(base_url)
    send = sender_for(args.endpoint)
    extra_body = {"temperature": args.temperature}
    if args.ignore_eos:
        extra_body["ignore_eos"] = True
    inputs = build_inputs(samples, model, base_url + "/" + args.endpoint.lstrip("/"),
                          send is send_chat, tokenizer, extra_body)
    if not args.skip_test_request:
        print("Starting initial single prompt test run...")
        test_result, _ = await run_requests(inputs[:1], send, [0.0])
        if not test_result[0].success:
            raise ClientError("the initial test request failed; check the benchmark options. "
                              f"Error: {test_result[0].error}", param="base_url")
        print("Initial test run completed. Starting main benchmark run...")
    offsets = arrival_offsets(len(inputs), args.request_rate, args.burstiness, args.seed)
    print(f"Traffic request rate: {args.request_rate}, burstiness: {args.burstiness}, "
          f"max concurrency: {args.max_concurrency}")
    progress = tqdm(total=len(inputs), disable=args.disable_tqdm)
    try:
        results, duration = await run_requests(inputs, send, offsets, args.max_concurrency,
                                               progress)
    finally:
        progress.close()
    return results, duration, model


def main(args: argparse.Namespace) -> dict:
    """Run the benchmark, print vLLM's result block, write --output-json; returns the results
    dict. Raises ClientError for bad options or a failing test request."""
    check_load_options(args)
    selected, percentiles = parse_percentile_options(args)
    goodput_slos = parse_goodput(args.goodput)
    tokenizer = load_bench_tokenizer(args)
    samples = sample_requests(args, tokenizer)
    results, duration, model = asyncio.run(benchmark(args, samples, tokenizer))
    metrics = calculate_metrics(results, duration, percentiles, goodput_slos)
    print(format_summary(metrics, duration, selected, args.request_rate, args.max_concurrency,
                         bool(goodput_slos)))
    data = {"date": datetime.now().strftime("%Y%m%d-%H%M%S"), "backend": "openai",
            "endpoint": args.endpoint, "model_id": model, "num_prompts": args.num_prompts,
            "request_rate": args.request_rate if math.isfinite(args.request_rate) else "inf",
            "burstiness": args.burstiness, "max_concurrency": args.max_concurrency,
            **results_json(metrics, duration, results, selected)}
    if args.output_json:
        write_json(args.output_json, data)
    return data
