"""Measure one configuration: start a real ``pagellm serve`` on a free port, drive it with the
``bench serving`` client at each request rate of the workload, stop it.

A run stops early, its remaining requests cancelled (the server aborts them), once a
percentile SLO is certainly broken (``slo.EarlyStop``); a rate sweep stops at the first rate
whose run breaks an SLO, since a higher rate would only break it harder. Used by
``pagellm tune`` (one configuration per trial) and ``pagellm bench compare``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from pagellm.bench.datasets import SampleRequest
from pagellm.bench.serving import (RequestResult, arrival_offsets, build_inputs,
                                   fetch_model_id, send_completion)
from pagellm.tuning.slo import SLO, EarlyStop, is_good, request_values_ms, violated_slos

STARTUP_TIMEOUT_S = 600.0
STOP_TIMEOUT_S = 30.0
REPORTED_PERCENTILES = (50, 95, 99)
_LOG_TAIL_CHARS = 3000


class ServerStartError(Exception):
    """The server exited or never became healthy; the message ends with its log's tail."""


@dataclass
class Workload:
    samples: list[SampleRequest]
    """The requests of every run (the same ones for every configuration)."""
    request_rates: list[float]
    """Requests/s of each run, ascending (inf: all at once)."""
    burstiness: float = 1.0
    max_concurrency: int | None = None
    seed: int = 0


@dataclass
class RunResult:
    """One run of the workload's requests at one rate; latencies in ms."""

    request_rate: float
    num_requests: int
    completed: int
    failed: int
    duration_s: float
    request_throughput: float
    output_throughput: float
    goodput: float
    """Requests/s meeting every SLO (over the run's duration)."""
    latencies_ms: dict[str, dict[str, float]]
    """{ttft|tpot|e2el: {p50, p95, p99, mean}} over the finished requests."""
    violated: dict[str, float] = field(default_factory=dict)
    """{SLO name: measured ms} of the SLOs this run broke."""
    early_stopped: bool = False
    """The run was cut short: ``violated`` holds what the finished requests showed."""

    @property
    def meets_slos(self) -> bool:
        return not self.violated

    def to_dict(self) -> dict:
        return asdict(self)


def summarize(results: Sequence[RequestResult], duration_s: float, rate: float,
              num_requests: int, slos: Sequence[SLO], early_stopped: bool,
              broken: str | None = None) -> RunResult:
    """A RunResult of the finished requests ``results`` of a run of ``num_requests``."""
    done = [result for result in results if result.success]
    per_request = [request_values_ms(result) for result in done]
    latencies = {}
    for metric in ("ttft", "tpot", "e2el"):
        values = np.asarray([values[metric] for values in per_request] or [0.0])
        latencies[metric] = {f"p{p}": float(np.percentile(values, p))
                             for p in REPORTED_PERCENTILES}
        latencies[metric]["mean"] = float(values.mean())
    violated = violated_slos(results, slos)
    if early_stopped and broken is not None and broken not in violated:
        violated[broken] = float("inf")     # certain for the whole run, not yet measurable
    good = sum(1 for values in per_request if is_good(values, slos))
    duration_s = max(duration_s, 1e-9)
    return RunResult(
        request_rate=rate, num_requests=num_requests, completed=len(done),
        failed=len(results) - len(done), duration_s=duration_s,
        request_throughput=len(done) / duration_s,
        output_throughput=sum(result.output_tokens for result in done) / duration_s,
        goodput=good / duration_s, latencies_ms=latencies, violated=violated,
        early_stopped=early_stopped)


async def run_load(base_url: str, workload: Workload, rate: float, slos: Sequence[SLO],
                   model: str, early_stop: bool = True) -> RunResult:
    """All of the workload's requests at ``rate`` requests/s against ``base_url``, cut short
    when an SLO is certainly broken (unless ``early_stop`` is off)."""
    import aiohttp

    inputs = build_inputs(workload.samples, model, base_url + "/v1/completions", False, None,
                          {"temperature": 0.0, "ignore_eos": True})
    offsets = arrival_offsets(len(inputs), rate, workload.burstiness, workload.seed)
    early = EarlyStop(slos if early_stop else [], len(inputs))
    semaphore = asyncio.Semaphore(workload.max_concurrency or len(inputs))
    timeout = aiohttp.ClientTimeout(total=6 * 3600)
    async with aiohttp.ClientSession(timeout=timeout, trust_env=False,
                                     connector=aiohttp.TCPConnector(limit=0)) as session:
        start = time.perf_counter()

        async def one(request, offset: float) -> RequestResult:
            await asyncio.sleep(max(0.0, start + offset - time.perf_counter()))
            async with semaphore:
                return await send_completion(session, request)

        tasks = [asyncio.create_task(one(request, offset))
                 for request, offset in zip(inputs, offsets)]
        results: list[RequestResult] = []
        for next_done in asyncio.as_completed(tasks):
            results.append(await next_done)
            if early.add(results[-1]):
                break
        duration = time.perf_counter() - start
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    stopped = early.broken is not None and len(results) < len(inputs)
    return summarize(results, duration, rate, len(inputs), slos, stopped, early.broken)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """``pagellm serve --config CONFIG_FILE`` on a free port of 127.0.0.1, its output in
    ``log_path``. ``start()`` returns once /health answers 200 (ServerStartError if it exits
    or takes longer than ``startup_timeout_s``); ``stop()`` sends SIGTERM (then SIGKILL)."""

    def __init__(self, config_file: Path, log_path: Path,
                 startup_timeout_s: float = STARTUP_TIMEOUT_S):
        self.config_file, self.log_path = Path(config_file), Path(log_path)
        self.startup_timeout_s = startup_timeout_s
        self.process: subprocess.Popen | None = None
        self.base_url = ""

    def start(self) -> str:
        port = free_port()
        self.base_url = f"http://127.0.0.1:{port}"
        package_root = str(Path(__file__).resolve().parents[2])    # children import this pagellm
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
        with open(self.log_path, "w") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "pagellm.entrypoints.cli.main", "serve", "--config",
                 str(self.config_file), "--host", "127.0.0.1", "--port", str(port),
                 "--disable-log-requests", "--disable-log-stats"],
                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self._wait_healthy()
        return self.base_url

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerStartError(f"the server exited with status "
                                       f"{self.process.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.base_url + "/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.3)
        self.stop()
        raise ServerStartError(f"the server was not healthy after {self.startup_timeout_s:g} s:"
                               f"\n{self.log_tail()}")

    def log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-_LOG_TAIL_CHARS:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=STOP_TIMEOUT_S)


async def _warm_up(base_url: str, workload: Workload, model: str) -> None:
    """One request first, unmeasured (first-step costs; the bench's test request)."""
    first = Workload(workload.samples[:1], [float("inf")])
    run = await run_load(base_url, first, float("inf"), [], model)
    if run.failed:
        raise ServerStartError(f"the warm-up request to {base_url} failed")


def measure(config_file: Path, log_path: Path, workload: Workload, slos: Sequence[SLO],
            on_run=None, repeats: int = 1, early_stop: bool = True) -> list[RunResult]:
    """Serve the configuration in ``config_file`` and run the workload ``repeats`` times at
    each rate, ascending; with ``early_stop``, runs stop early and the sweep stops at the
    first run that breaks an SLO. ``on_run(RunResult)`` is called after each run. Raises
    ServerStartError when the server does not come up."""
    server = ServerProcess(config_file, log_path)
    try:
        base_url = server.start()
        return asyncio.run(_sweep(base_url, workload, slos, on_run, repeats, early_stop))
    finally:
        server.stop()


async def _sweep(base_url: str, workload: Workload, slos: Sequence[SLO], on_run,
                 repeats: int, early_stop: bool) -> list[RunResult]:
    model = await fetch_model_id(base_url)
    await _warm_up(base_url, workload, model)
    runs = []
    for rate in sorted(workload.request_rates):
        for _ in range(repeats):
            runs.append(await run_load(base_url, workload, rate, slos, model, early_stop))
            if on_run is not None:
                on_run(runs[-1])
            if early_stop and not runs[-1].meets_slos:
                return runs
    return runs


def best_run(runs: Sequence[RunResult]) -> RunResult | None:
    """The run with the highest goodput among those meeting every SLO (None if none)."""
    feasible = [run for run in runs if run.meets_slos]
    return max(feasible, key=lambda run: run.goodput) if feasible else None
