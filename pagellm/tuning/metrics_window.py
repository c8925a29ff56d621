"""From Prometheus text (a server's ``/metrics``) or a ``bench serving`` result JSON to the
``MetricWindow`` the advisor reads.

A ``Snapshot`` is one scrape reduced to what the advisor needs: counters and gauges summed over
the data-parallel replicas (``engine`` label; KV usage is their mean), and the cumulative
buckets of the latency histograms. A window is the difference between the first and the last
of a series of snapshots (counters and histograms), with the gauges' mean and maximum over the
whole series. Percentiles of a window come from the histogram buckets by Prometheus'
``histogram_quantile`` rule (linear inside a bucket), so they are as coarse as vLLM's buckets.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

from pagellm.errors import ClientError
from pagellm.tuning.advisor import MetricWindow

COUNTERS = ("vllm:num_preemptions", "vllm:prompt_tokens", "vllm:generation_tokens",
            "vllm:request_success")
"""Counter families the window differences (names without ``_total``, as the parser gives)."""
GAUGES = ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc")
HISTOGRAMS = ("vllm:time_to_first_token_seconds", "vllm:time_per_output_token_seconds",
              "vllm:e2e_request_latency_seconds", "vllm:request_queue_time_seconds")
HTTP_REQUESTS = "http_requests"
GENERATION_ROUTES = ("/v1/completions", "/v1/chat/completions")

METRICS_READ = tuple(f"{name}_total" for name in COUNTERS) + GAUGES + tuple(
    f"{name}_bucket" for name in HISTOGRAMS) + (f"{HTTP_REQUESTS}_total",)
"""Every series name the advisor reads from /metrics (a test checks the server exports each)."""


@dataclass
class Snapshot:
    """One scrape: ``time`` (monotonic seconds), summed counters and gauges, and per histogram
    ``{upper bound: cumulative count}`` summed over replicas."""

    time: float
    counters: dict[str, float] = field(default_factory=dict)
    gauges: dict[str, float] = field(default_factory=dict)
    histograms: dict[str, dict[float, float]] = field(default_factory=dict)
    server_errors: float = 0.0
    """HTTP 5xx answers of the generation routes."""


def parse_snapshot(text: str, at: float | None = None) -> Snapshot:
    """Reduce a Prometheus text exposition to a ``Snapshot`` taken at ``at`` (default now).
    ClientError when the text is not an exposition."""
    try:
        families = list(text_string_to_metric_families(text))
    except (ValueError, TypeError) as error:
        raise ClientError(f"not a Prometheus text exposition: {error}") from None
    return snapshot_from_families(families, at)


def snapshot_from_families(families: Iterable, at: float | None = None) -> Snapshot:
    """``parse_snapshot`` of metric families as a registry's ``collect()`` yields them (or the
    text parser does): no text exposition rendered and parsed in between."""
    snapshot = Snapshot(time=time.monotonic() if at is None else at)
    kv_values: list[float] = []
    buckets: dict[str, dict[float, float]] = defaultdict(lambda: defaultdict(float))
    for family in families:
        for sample in family.samples:
            _add_sample(snapshot, sample, buckets, kv_values)
    if kv_values:
        snapshot.gauges["vllm:kv_cache_usage_perc"] = sum(kv_values) / len(kv_values)
    snapshot.histograms = {name: dict(b) for name, b in buckets.items()}
    return snapshot


def _add_sample(snapshot: Snapshot, sample, buckets, kv_values: list[float]) -> None:
    name, labels, value = sample.name, sample.labels, sample.value
    if name.endswith("_total") and name[:-6] in COUNTERS:
        snapshot.counters[name[:-6]] = snapshot.counters.get(name[:-6], 0.0) + value
    elif name == "vllm:kv_cache_usage_perc":
        kv_values.append(value)
    elif name in GAUGES:
        snapshot.gauges[name] = snapshot.gauges.get(name, 0.0) + value
    elif name.endswith("_bucket") and name[:-7] in HISTOGRAMS:
        buckets[name[:-7]][float(labels["le"])] += value
    elif (name == f"{HTTP_REQUESTS}_total" and labels.get("status", "").startswith("5")
          and labels.get("handler") in GENERATION_ROUTES):
        snapshot.server_errors += value


def histogram_quantile(q: float, cumulative: dict[float, float]) -> float | None:
    """Prometheus' ``histogram_quantile(q, ...)`` over cumulative bucket counts (upper bound
    -> count); None when the histogram is empty. The +Inf bucket yields the highest finite
    bound."""
    if not cumulative:
        return None
    bounds = sorted(cumulative)
    total = cumulative[bounds[-1]]
    if total <= 0:
        return None
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound in bounds:
        count = cumulative[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            if count == lower_count:
                return bound
            fraction = (rank - lower_count) / (count - lower_count)
            return lower_bound + (bound - lower_bound) * fraction
        lower_bound, lower_count = bound, count
    return bounds[-1]


def _delta_histogram(first: Snapshot, last: Snapshot, name: str) -> dict[float, float]:
    before = first.histograms.get(name, {})
    return {bound: count - before.get(bound, 0.0)
            for bound, count in last.histograms.get(name, {}).items()}


def window_from_snapshots(snapshots: Sequence[Snapshot]) -> MetricWindow:
    """The window from the first to the last snapshot (at least two; gauges from all).
    ClientError with fewer than two."""
    if len(snapshots) < 2:
        raise ClientError("a metrics window needs at least two scrapes")
    first, last = snapshots[0], snapshots[-1]
    duration = max(last.time - first.time, 1e-9)

    def delta(name: str) -> float:
        return last.counters.get(name, 0.0) - first.counters.get(name, 0.0)

    def gauge_series(name: str) -> list[float]:
        return [s.gauges.get(name, 0.0) for s in snapshots]

    quantiles = {}
    for key, name in (("ttft", "vllm:time_to_first_token_seconds"),
                      ("tpot", "vllm:time_per_output_token_seconds"),
                      ("e2e", "vllm:e2e_request_latency_seconds"),
                      ("queue", "vllm:request_queue_time_seconds")):
        buckets = _delta_histogram(first, last, name)
        quantiles[f"{key}_p50_s"] = histogram_quantile(0.5, buckets)
        quantiles[f"{key}_p99_s"] = histogram_quantile(0.99, buckets)
    running = gauge_series("vllm:num_requests_running")
    waiting = gauge_series("vllm:num_requests_waiting")
    kv = gauge_series("vllm:kv_cache_usage_perc")
    return MetricWindow(
        duration_s=duration, origin="metrics", num_finished=int(delta("vllm:request_success")),
        num_failed=int(last.server_errors - first.server_errors),
        running_mean=sum(running) / len(running), running_max=max(running),
        waiting_mean=sum(waiting) / len(waiting), waiting_max=max(waiting),
        waiting_last=waiting[-1], kv_usage_mean=sum(kv) / len(kv), kv_usage_max=max(kv),
        num_preemptions=int(delta("vllm:num_preemptions")),
        prompt_tokens_per_s=delta("vllm:prompt_tokens") / duration,
        generation_tokens_per_s=delta("vllm:generation_tokens") / duration, **quantiles)


def window_from_bench_result(data: dict) -> MetricWindow:
    """The window of a ``pagellm bench serving --output-json`` (or vLLM's) result: latency
    percentiles, failures, throughput; no gauges (the client cannot see them). Uses
    ``median_*_ms`` as P50 and ``p99_*_ms`` when present. ClientError when the file is not
    such a result."""
    if not isinstance(data, dict) or "duration" not in data or "completed" not in data:
        raise ClientError("not a bench serving result: expected the keys 'duration' and "
                          "'completed' (write one with pagellm bench serving --output-json)")

    def seconds(key: str) -> float | None:
        value = data.get(key)
        return None if value is None else float(value) / 1000.0

    return MetricWindow(
        duration_s=float(data["duration"]), origin="bench",
        num_finished=int(data["completed"]), num_failed=int(data.get("failed", 0)),
        ttft_p50_s=seconds("median_ttft_ms"), ttft_p99_s=seconds("p99_ttft_ms"),
        tpot_p50_s=seconds("median_tpot_ms"), tpot_p99_s=seconds("p99_tpot_ms"),
        e2e_p50_s=seconds("median_e2el_ms"), e2e_p99_s=seconds("p99_e2el_ms"),
        generation_tokens_per_s=data.get("output_throughput"))
