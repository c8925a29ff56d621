"""The periodic log line of a serving engine, as vLLM prints it:

    Avg prompt throughput: 512.3 tokens/s, Avg generation throughput: 98.1 tokens/s, Running: 8
    reqs, Waiting: 0 reqs, GPU KV cache usage: 12.5%, Prefix cache hit rate: 40.0%,
    Preemptions: 0

Throughputs are the growth of the token counters since the previous line divided by the time
between the lines; the prefix cache hit rate and the preemptions are totals since start. An idle
engine (nothing running, waiting or generated) logs at DEBUG so an idle server stays quiet.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from collections.abc import Callable

from pagellm.errors import ClientError
from pagellm.metrics.prometheus import MetricTotals, PrometheusMetrics

logger = logging.getLogger("pagellm.metrics")

DEFAULT_INTERVAL_S = 10.0
INTERVAL_ENV = "PAGELLM_LOG_STATS_INTERVAL"
"""Seconds between stats lines (vLLM's VLLM_LOG_STATS_INTERVAL); default 10."""


def interval_from_env() -> float:
    """``$PAGELLM_LOG_STATS_INTERVAL`` or the default; ClientError naming the variable when it
    is not a positive number."""
    raw = os.environ.get(INTERVAL_ENV)
    if raw is None or not raw.strip():
        return DEFAULT_INTERVAL_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not (value > 0 and math.isfinite(value)):
        raise ClientError(f"{INTERVAL_ENV} must be a positive number of seconds, got {raw!r}")
    return value


def format_stats_line(previous: MetricTotals, current: MetricTotals, elapsed_s: float) -> str:
    """The log line for counters that went from ``previous`` to ``current`` in ``elapsed_s``."""
    elapsed_s = max(elapsed_s, 1e-9)
    prompt_throughput = (current.prompt_tokens - previous.prompt_tokens) / elapsed_s
    generation_throughput = (current.generation_tokens - previous.generation_tokens) / elapsed_s
    hit_rate = (100.0 * current.prefix_cache_hits / current.prefix_cache_queries
                if current.prefix_cache_queries else 0.0)
    return (f"Avg prompt throughput: {prompt_throughput:.1f} tokens/s, "
            f"Avg generation throughput: {generation_throughput:.1f} tokens/s, "
            f"Running: {current.num_requests_running} reqs, "
            f"Waiting: {current.num_requests_waiting} reqs, "
            f"GPU KV cache usage: {100.0 * current.kv_cache_usage:.1f}%, "
            f"Prefix cache hit rate: {hit_rate:.1f}%, "
            f"Preemptions: {current.num_preemptions}" + _spec_decode_part(previous, current))


def _spec_decode_part(previous: MetricTotals, current: MetricTotals) -> str:
    """Speculative decoding over the interval: the draft acceptance rate (accepted / draft
    tokens) and the mean acceptance length (1 + accepted tokens per draft, vLLM's); empty
    when no draft was verified since the previous line."""
    drafts = current.spec_decode_num_drafts - previous.spec_decode_num_drafts
    if drafts <= 0:
        return ""
    draft_tokens = current.spec_decode_num_draft_tokens - previous.spec_decode_num_draft_tokens
    accepted = current.spec_decode_num_accepted_tokens - previous.spec_decode_num_accepted_tokens
    rate = 100.0 * accepted / draft_tokens if draft_tokens else 0.0
    return (f", Spec decode draft acceptance rate: {rate:.1f}%, "
            f"Mean acceptance length: {1 + accepted / drafts:.2f}")


class StatsLogger:
    def __init__(self, metrics: PrometheusMetrics, interval_s: float = DEFAULT_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic,
                 extra_line: Callable[[float], str] | None = None):
        """``extra_line(interval_s)``: a second line logged after each stats line at the same
        level (the server's tuning-advisor line over the last interval)."""
        self.metrics = metrics
        self.extra_line = extra_line
        self.interval_s = interval_s
        self.clock = clock
        self.last_totals = metrics.snapshot()
        self.last_time = clock()

    def log(self) -> str:
        """Log (and return) the line for the time since the previous call."""
        now, current = self.clock(), self.metrics.snapshot()
        line = format_stats_line(self.last_totals, current, now - self.last_time)
        idle = (current.num_requests_running == 0 and current.num_requests_waiting == 0
                and current.prompt_tokens == self.last_totals.prompt_tokens
                and current.generation_tokens == self.last_totals.generation_tokens)
        level = logging.DEBUG if idle else logging.INFO
        logger.log(level, "%s", line)
        if self.extra_line is not None:
            logger.log(level, "%s", self.extra_line(max(now - self.last_time, 1e-3)))
        self.last_totals, self.last_time = current, now
        return line

    async def run(self) -> None:
        """Log the line every ``interval_s`` until cancelled. The numbers are those the
        metrics already hold (the engine pushes its stats each step), so a long engine step
        never delays the line."""
        while True:
            await asyncio.sleep(self.interval_s)
            self.log()
