"""Prometheus metrics under vLLM's names, so vLLM dashboards and alerts work unchanged.

Every engine metric carries ``model_name`` and ``engine`` labels (vLLM's: ``engine`` is the
data-parallel replica's index, "0" to "N-1", and "0" alone without data parallelism; the
total over replicas is the sum over ``engine``, e.g. ``sum by (model_name)``), and lives in
this object's own CollectorRegistry
(never prometheus_client's global one, so two servers or tests in one process do not clash).
Counters are declared without the ``_total`` suffix; prometheus_client adds it, which gives
vLLM's exposition (``vllm:prompt_tokens_total``).

Feeding: the API server calls ``observe_tokens`` as outputs arrive, ``observe_finished`` once
per finished request (each with the index of the replica serving the request), and
``update_from_stats`` with every EngineStats an engine core pushes
(``AsyncLLM.stats_listeners``: no scrape ever waits on an engine step); ``render`` gives the
text exposition for GET /metrics, which also carries the process collector's ``process_*``
series and the HTTP series ``observe_http`` feeds. No ``*_created`` series (as vLLM).

Several API server processes (``--api-server-count N``): prometheus_client's multiprocess
mode (``PROMETHEUS_MULTIPROC_DIR``, set by the serve parent before it starts them, so
prometheus_client imports in that mode there). Each process writes its series to files in
that directory and any process's ``render`` aggregates them all: counters and histograms are
summed (each API server counts its own requests' tokens and latencies), gauges take the most
recent value. The engine-core stats (replica gauges and engine totals) reach every API server;
only API server 0 records them, so nothing is counted N times. No ``process_*`` series then
(prometheus_client has no multiprocess form of them); ``pagellm:api_server_http_requests``
counts each API server's HTTP requests (label ``api_server``: its index).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass

from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram,
                               ProcessCollector, disable_created_metrics, generate_latest)
from prometheus_client.multiprocess import MultiProcessCollector

from pagellm.core.stats import EngineStats
from pagellm.outputs import RequestOutput

CONTENT_TYPE = CONTENT_TYPE_LATEST

disable_created_metrics()       # a process-wide switch of prometheus_client

# vLLM's buckets (vllm/v1/metrics/loggers.py).
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
TOKEN_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0,
                         2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
ITERATION_TOKENS_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
PARAMS_N_BUCKETS = (1, 2, 5, 10, 20)
HTTP_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                        60.0, 120.0, 300.0)
REQUEST_LATENCY_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0,
                           50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)


def buckets_1_2_5(max_value: int) -> list[int]:
    """1, 2, 5, 10, 20, 50, ... up to ``max_value`` (vLLM's token-count buckets)."""
    buckets, exponent = [], 0
    while True:
        for mantissa in (1, 2, 5):
            value = mantissa * 10**exponent
            if value > max_value:
                return buckets
            buckets.append(value)
        exponent += 1


CACHE_CONFIG_LABELS = ("block_size", "num_gpu_blocks", "num_cpu_blocks", "cache_dtype",
                       "enable_prefix_caching", "gpu_memory_utilization", "kv_cache_memory_bytes",
                       "swap_space_bytes")


def cache_config_labels(cache_config, num_gpu_blocks: int, num_cpu_blocks: int) -> dict[str, str]:
    """The ``vllm:cache_config_info`` labels of a CacheConfig and the block counts the engine
    allocated (``num_gpu_blocks`` is the device's, CPU included, as vLLM names it).
    ``swap_space_bytes`` is the swap space reserved: 0 when there are no CPU swap blocks
    (preemption_mode='recompute' reserves none, whatever --swap-space says)."""
    kv_bytes = cache_config.kv_cache_memory_bytes
    swap_bytes = int(cache_config.swap_space * 1024**3) if num_cpu_blocks else 0
    return {"block_size": str(cache_config.block_size), "num_gpu_blocks": str(num_gpu_blocks),
            "num_cpu_blocks": str(num_cpu_blocks), "cache_dtype": cache_config.kv_cache_dtype,
            "enable_prefix_caching": str(cache_config.enable_prefix_caching),
            "gpu_memory_utilization": str(cache_config.gpu_memory_utilization),
            "kv_cache_memory_bytes": "None" if kv_bytes is None else str(kv_bytes),
            "swap_space_bytes": str(swap_bytes)}


@dataclass
class MetricTotals:
    """Plain numbers behind the Prometheus series, for the periodic log line."""

    prompt_tokens: int = 0
    generation_tokens: int = 0
    num_preemptions: int = 0
    prefix_cache_queries: int = 0
    prefix_cache_hits: int = 0
    num_requests_running: int = 0
    num_requests_waiting: int = 0
    kv_cache_usage: float = 0.0
    """Fraction of KV-cache blocks in use, 0..1 (the replicas' mean)."""
    spec_decode_num_drafts: int = 0
    spec_decode_num_draft_tokens: int = 0
    spec_decode_num_accepted_tokens: int = 0


ENGINE_TOTALS = ("num_preemptions", "prefix_cache_queries", "prefix_cache_hits",
                 "spec_decode_num_drafts", "spec_decode_num_draft_tokens",
                 "spec_decode_num_accepted_tokens")
"""EngineStats totals since start whose growth advances the counters of the same names."""

GAUGE_MODE = {"multiprocess_mode": "mostrecent"}
"""Several API servers: a gauge shows the value last set by any process (API server 0 sets
the engine gauges; the others only hold them at zero, never set)."""


class PrometheusMetrics:
    def __init__(self, model_name: str, max_model_len: int = 8192,
                 registry: CollectorRegistry | None = None, num_engines: int = 1,
                 max_lora: int = 0, multiprocess_dir: str | None = None,
                 api_server_index: int = 0):
        """``num_engines``: data-parallel replicas; each gets its ``engine`` series from the
        start (at zero). ``max_lora``: max_loras under enable_lora, 0 without LoRA (then
        ``vllm:lora_requests_info`` is not exported). ``multiprocess_dir``: this is API
        server ``api_server_index`` of several sharing that prometheus_client multiprocess
        directory (see the module docstring); None: the only one."""
        self.max_lora = max_lora
        self.model_name = model_name
        self.num_engines = num_engines
        self.multiprocess_dir = multiprocess_dir
        self.api_server_index = api_server_index
        self.records_engine_stats = api_server_index == 0
        """Whether engine-core stats feed the series here (API server 0 only)."""
        self.registry = registry if registry is not None else CollectorRegistry()
        self.totals = MetricTotals()
        self._seen_engine_totals: dict[tuple[int, str], int] = {}
        self._grown_now: dict[str, int] = {}    # by total: growth in the stats being handled
        self._engine_gauges = [(0, 0, 0.0)] * num_engines   # (running, waiting, KV usage)
        self._build_gauges_and_counters()
        self._build_histograms(max_model_len)
        self._build_http_metrics()
        self._build_lora_info()
        if multiprocess_dir is None:
            ProcessCollector(registry=self.registry)    # process_cpu_seconds_total, memory, fds

    def _labelled(self, cls, name: str, documentation: str, **kwargs) -> list:
        """The metric's child of each replica, by engine index."""
        if cls is Gauge:
            kwargs = {**kwargs, **GAUGE_MODE}
        metric = cls(name, documentation, labelnames=["model_name", "engine"],
                     registry=self.registry, **kwargs)
        return [metric.labels(model_name=self.model_name, engine=str(index))
                for index in range(self.num_engines)]

    def _build_gauges_and_counters(self) -> None:
        self.num_requests_running = self._labelled(
            Gauge, "vllm:num_requests_running", "Number of requests in model execution batches.")
        self.num_requests_waiting = self._labelled(
            Gauge, "vllm:num_requests_waiting", "Number of requests waiting to be processed.")
        self.kv_cache_usage = self._labelled(
            Gauge, "vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.")
        self.gpu_cache_usage = self._labelled(
            Gauge, "vllm:gpu_cache_usage_perc",
            "GPU KV-cache usage. 1 means 100 percent usage (alias of vllm:kv_cache_usage_perc).")
        self.prompt_tokens = self._labelled(
            Counter, "vllm:prompt_tokens", "Number of prefill tokens processed.")
        self.generation_tokens = self._labelled(
            Counter, "vllm:generation_tokens", "Number of generation tokens processed.")
        self.num_preemptions = self._labelled(
            Counter, "vllm:num_preemptions", "Cumulative number of preemptions from the engine.")
        self.prefix_cache_queries = self._labelled(
            Counter, "vllm:prefix_cache_queries",
            "Prefix cache queries, in terms of number of queried tokens.")
        self.prefix_cache_hits = self._labelled(
            Counter, "vllm:prefix_cache_hits",
            "Prefix cache hits, in terms of number of cached tokens.")
        self.spec_decode_num_drafts = self._labelled(
            Counter, "vllm:spec_decode_num_drafts", "Number of spec decoding drafts.")
        self.spec_decode_num_draft_tokens = self._labelled(
            Counter, "vllm:spec_decode_num_draft_tokens", "Number of draft tokens.")
        self.spec_decode_num_accepted_tokens = self._labelled(
            Counter, "vllm:spec_decode_num_accepted_tokens", "Number of accepted tokens.")
        self.spec_decode_accepted_per_pos = Counter(
            "vllm:spec_decode_num_accepted_tokens_per_pos",
            "Accepted tokens per draft position.",
            labelnames=["model_name", "engine", "position"], registry=self.registry)
        self.request_success = Counter(
            "vllm:request_success", "Count of successfully processed requests.",
            labelnames=["model_name", "engine", "finished_reason"], registry=self.registry)
        self.cache_config_info = Gauge(
            "vllm:cache_config_info", "Information of the KV cache config (labels; value 1).",
            labelnames=list(CACHE_CONFIG_LABELS), registry=self.registry, **GAUGE_MODE)

    def _build_lora_info(self) -> None:
        self.lora_requests_info = None
        if self.max_lora:
            self.lora_requests_info = Gauge(
                "vllm:lora_requests_info", "Running stats on lora requests.",
                labelnames=["running_lora_adapters", "waiting_lora_adapters", "max_lora"],
                registry=self.registry, **GAUGE_MODE)

    def _build_http_metrics(self) -> None:
        labels = ["method", "handler", "status"]
        self.http_requests = Counter(
            "http_requests", "HTTP requests by method, route and status code.", labels,
            registry=self.registry)
        self.http_request_duration = Histogram(
            "http_request_duration_seconds", "HTTP request latency in seconds, until the "
            "response (a whole stream included) is sent.", labels,
            buckets=HTTP_LATENCY_BUCKETS, registry=self.registry)
        self.api_server_http_requests = Counter(
            "pagellm:api_server_http_requests", "HTTP requests answered by each API server "
            "process (--api-server-count).", ["api_server"],
            registry=self.registry).labels(api_server=str(self.api_server_index))

    def _build_histograms(self, max_model_len: int) -> None:
        self.time_to_first_token = self._labelled(
            Histogram, "vllm:time_to_first_token_seconds",
            "Histogram of time to first token in seconds.", buckets=TTFT_BUCKETS)
        self.inter_token_latency = self._labelled(
            Histogram, "vllm:inter_token_latency_seconds",
            "Histogram of inter-token latency in seconds.", buckets=TOKEN_LATENCY_BUCKETS)
        self.time_per_output_token = self._labelled(
            Histogram, "vllm:time_per_output_token_seconds",
            "Histogram of time per output token in seconds.", buckets=TOKEN_LATENCY_BUCKETS)
        latency = {"buckets": REQUEST_LATENCY_BUCKETS}
        self.e2e_request_latency = self._labelled(
            Histogram, "vllm:e2e_request_latency_seconds",
            "Histogram of end to end request latency in seconds.", **latency)
        self.request_queue_time = self._labelled(
            Histogram, "vllm:request_queue_time_seconds",
            "Histogram of time spent in WAITING phase for request.", **latency)
        self.request_prefill_time = self._labelled(
            Histogram, "vllm:request_prefill_time_seconds",
            "Histogram of time spent in PREFILL phase for request.", **latency)
        self.request_decode_time = self._labelled(
            Histogram, "vllm:request_decode_time_seconds",
            "Histogram of time spent in DECODE phase for request.", **latency)
        self.request_inference_time = self._labelled(
            Histogram, "vllm:request_inference_time_seconds",
            "Histogram of time spent in RUNNING phase for request.", **latency)
        self.iteration_tokens = self._labelled(
            Histogram, "vllm:iteration_tokens_total",
            "Histogram of number of tokens per engine_step.", buckets=ITERATION_TOKENS_BUCKETS)
        self.request_params_n = self._labelled(
            Histogram, "vllm:request_params_n", "Histogram of the n request parameter.",
            buckets=PARAMS_N_BUCKETS)
        token_buckets = {"buckets": buckets_1_2_5(max_model_len)}
        self.request_prompt_tokens = self._labelled(
            Histogram, "vllm:request_prompt_tokens",
            "Number of prefill tokens processed.", **token_buckets)
        self.request_generation_tokens = self._labelled(
            Histogram, "vllm:request_generation_tokens",
            "Number of generation tokens processed.", **token_buckets)
        self.request_params_max_tokens = self._labelled(
            Histogram, "vllm:request_params_max_tokens",
            "Histogram of the max_tokens request parameter.", **token_buckets)

    def set_cache_config_info(self, labels: dict[str, str]) -> None:
        """``vllm:cache_config_info``: one series set to 1 whose labels are ``labels``
        (``cache_config_labels``)."""
        if self.multiprocess_dir is None:       # (multiprocess mode cannot clear; set once)
            self.cache_config_info.clear()
        self.cache_config_info.labels(**labels).set(1)

    def observe_http(self, method: str, handler: str, status: int, duration_s: float) -> None:
        """One HTTP request: ``handler`` is the route's path template (a bounded label set)."""
        labels = {"method": method, "handler": handler, "status": str(status)}
        self.http_requests.labels(**labels).inc()
        self.http_request_duration.labels(**labels).observe(duration_s)
        self.api_server_http_requests.inc()

    def observe_tokens(self, num_prompt_tokens: int = 0, num_generation_tokens: int = 0,
                       inter_token_latency: float | None = None, engine_index: int = 0) -> None:
        """Tokens of one output as it arrives from replica ``engine_index``;
        ``inter_token_latency``: seconds since the request's previous token-bearing output."""
        local_totals = self.multiprocess_dir is None    # else from the engine stats
        if num_prompt_tokens:
            self.prompt_tokens[engine_index].inc(num_prompt_tokens)
            self.totals.prompt_tokens += num_prompt_tokens * local_totals
        if num_generation_tokens:
            self.generation_tokens[engine_index].inc(num_generation_tokens)
            self.totals.generation_tokens += num_generation_tokens * local_totals
        if inter_token_latency is not None:
            self.inter_token_latency[engine_index].observe(inter_token_latency)

    def observe_finished(self, output: RequestOutput, num_generation_tokens: int | None = None,
                         engine_index: int = 0) -> None:
        """One request finished on replica ``engine_index``: success counts by finish reason
        (one per choice), token-count histograms, and the latencies from ``output.metrics``.
        ``num_generation_tokens``: all tokens the request generated (default: those in
        ``output``, right for a final output, not for the last delta of a stream)."""
        if num_generation_tokens is None:
            num_generation_tokens = sum(len(choice.token_ids) for choice in output.outputs)
        engine = str(engine_index)
        for choice in output.outputs:
            self.request_success.labels(model_name=self.model_name, engine=engine,
                                        finished_reason=choice.finish_reason or "abort").inc()
        self.request_prompt_tokens[engine_index].observe(len(output.prompt_token_ids))
        self.request_generation_tokens[engine_index].observe(num_generation_tokens)
        self.request_params_n[engine_index].observe(len(output.outputs))
        if output.metrics is not None:
            self._observe_latencies(output, num_generation_tokens, engine_index)

    def _observe_latencies(self, output: RequestOutput, num_generation_tokens: int,
                           engine_index: int) -> None:
        metrics = output.metrics
        if metrics.max_tokens_param is not None:
            self.request_params_max_tokens[engine_index].observe(metrics.max_tokens_param)
        if metrics.time_in_queue is not None:
            self.request_queue_time[engine_index].observe(metrics.time_in_queue)
        end = metrics.finished_time or metrics.last_token_time
        if end is not None:
            self.e2e_request_latency[engine_index].observe(end - metrics.arrival_time)
            if metrics.first_scheduled_time is not None:
                self.request_inference_time[engine_index].observe(
                    end - metrics.first_scheduled_time)
        first, last = metrics.first_token_time, metrics.last_token_time
        if first is None:
            return
        self.time_to_first_token[engine_index].observe(first - metrics.arrival_time)
        if metrics.first_scheduled_time is not None:
            self.request_prefill_time[engine_index].observe(first - metrics.first_scheduled_time)
        if last is not None:
            self.request_decode_time[engine_index].observe(last - first)
            tokens_per_choice = num_generation_tokens / max(1, len(output.outputs))
            if tokens_per_choice > 1:
                self.time_per_output_token[engine_index].observe(
                    (last - first) / (tokens_per_choice - 1))

    def update_from_stats(self, stats: EngineStats, engine_index: int = 0) -> None:
        """Stats replica ``engine_index`` pushed: num_running, num_waiting and kv_cache_usage
        (0..1) set its gauges; num_preemptions, prefix_cache_queries and prefix_cache_hits are
        its totals since it started, and its counters advance by what they grew; each entry of
        iteration_tokens is one step's token count. ``totals`` sums the replicas (KV usage:
        their mean); with several API servers its token counts are the engines' (all API
        servers' requests) and only API server 0 feeds the series."""
        self._update_totals(stats, engine_index)
        if self.records_engine_stats:
            self._record_engine_stats(stats, engine_index)

    def _update_totals(self, stats: EngineStats, engine_index: int) -> None:
        self._engine_gauges[engine_index] = (stats.num_running, stats.num_waiting,
                                             stats.kv_cache_usage)
        totals = self.totals
        totals.num_requests_running = sum(g[0] for g in self._engine_gauges)
        totals.num_requests_waiting = sum(g[1] for g in self._engine_gauges)
        totals.kv_cache_usage = sum(g[2] for g in self._engine_gauges) / self.num_engines
        names = ENGINE_TOTALS
        if self.multiprocess_dir is not None:
            names += ("prompt_tokens", "generation_tokens")
        for name in names:
            grown = self._grown(engine_index, name, getattr(stats, name))
            self._grown_now[name] = grown
            setattr(totals, name, getattr(totals, name) + grown)

    def _record_engine_stats(self, stats: EngineStats, engine_index: int) -> None:
        """The series fed by one replica's pushed stats (after ``_update_totals``)."""
        for num_tokens in stats.iteration_tokens:
            self.iteration_tokens[engine_index].observe(num_tokens)
        self.num_requests_running[engine_index].set(stats.num_running)
        self.num_requests_waiting[engine_index].set(stats.num_waiting)
        self.kv_cache_usage[engine_index].set(stats.kv_cache_usage)
        self.gpu_cache_usage[engine_index].set(stats.kv_cache_usage)
        if self.lora_requests_info is not None:
            # vLLM's form: the adapters as comma-joined labels, the value the current time
            self.lora_requests_info.labels(
                running_lora_adapters=",".join(stats.running_lora_adapters),
                waiting_lora_adapters=",".join(stats.waiting_lora_adapters),
                max_lora=str(self.max_lora)).set_to_current_time()
        for name in ENGINE_TOTALS:
            if self._grown_now[name]:
                getattr(self, name)[engine_index].inc(self._grown_now[name])
        for position, total in enumerate(stats.spec_decode_num_accepted_tokens_per_pos):
            grown = self._grown(engine_index, f"spec_pos{position}", total)
            self.spec_decode_accepted_per_pos.labels(
                model_name=self.model_name, engine=str(engine_index),
                position=str(position)).inc(grown)

    def _grown(self, engine_index: int, name: str, engine_total: int) -> int:
        """How much replica ``engine_index``'s total ``name`` grew since it was last seen
        (a total below the last one means a restarted engine: all of it is new)."""
        previous = self._seen_engine_totals.get((engine_index, name), 0)
        self._seen_engine_totals[(engine_index, name)] = engine_total
        return engine_total - previous if engine_total >= previous else engine_total

    def snapshot(self) -> MetricTotals:
        return copy.copy(self.totals)

    def render(self) -> bytes:
        """The text exposition of every metric (serve with ``CONTENT_TYPE``); with several
        API servers, every process's series aggregated (see the module docstring)."""
        return generate_latest(self._readable_registry())

    def collect(self, sample_names: Iterable[str]) -> list:
        """The metric families ``render`` would print (prometheus_client ``Metric``s), with
        only the samples of these exact names (``vllm:x_bucket``, ``vllm:y_total``, ...) and
        without the other collectors: what the advisor reads twice a second, without the
        cost of rendering and parsing the whole text."""
        return list(self._readable_registry().restricted_registry(list(sample_names)).collect())

    def _readable_registry(self) -> CollectorRegistry:
        if self.multiprocess_dir is None:
            return self.registry
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=self.multiprocess_dir)
        return registry
