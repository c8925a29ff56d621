"""Prometheus metrics under vLLM's names, and the periodic stats log line."""

from __future__ import annotations

import asyncio
import logging

import pytest
from msgspec.structs import replace

from pagellm.core.stats import EngineStats
from pagellm.metrics.prometheus import (TTFT_BUCKETS, MetricTotals, PrometheusMetrics,
                                        buckets_1_2_5)
from pagellm.metrics.stats_logger import StatsLogger, format_stats_line
from pagellm.outputs import CompletionOutput, RequestMetrics, RequestOutput

LABELS = {"model_name": "m", "engine": "0"}


def finished_output(num_tokens: int = 5, finish_reason: str = "stop") -> RequestOutput:
    metrics = RequestMetrics(arrival_time=10.0, first_scheduled_time=10.5, first_token_time=11.0,
                             last_token_time=13.0, finished_time=13.5)
    return RequestOutput("r", None, [1, 2, 3], None,
                         [CompletionOutput(0, "x", list(range(num_tokens)),
                                           finish_reason=finish_reason)], True, metrics)


def test_exposition_uses_vllms_names():
    metrics = PrometheusMetrics("m", max_model_len=100)
    metrics.observe_tokens(num_prompt_tokens=7, num_generation_tokens=3)
    text = metrics.render().decode()
    for line in ('vllm:prompt_tokens_total{engine="0",model_name="m"} 7.0',
                 'vllm:generation_tokens_total{engine="0",model_name="m"} 3.0',
                 'vllm:num_requests_running{engine="0",model_name="m"} 0.0',
                 'vllm:num_requests_waiting{engine="0",model_name="m"} 0.0',
                 'vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.0',
                 'vllm:gpu_cache_usage_perc{engine="0",model_name="m"} 0.0',
                 'vllm:num_preemptions_total{engine="0",model_name="m"} 0.0',
                 'vllm:prefix_cache_queries_total{engine="0",model_name="m"} 0.0',
                 'vllm:prefix_cache_hits_total{engine="0",model_name="m"} 0.0'):
        assert line in text.splitlines(), line
    for name in ("time_to_first_token_seconds", "inter_token_latency_seconds",
                 "time_per_output_token_seconds", "e2e_request_latency_seconds",
                 "request_queue_time_seconds"):
        assert f"# TYPE vllm:{name} histogram" in text


def test_registries_are_private():
    first, second = PrometheusMetrics("a"), PrometheusMetrics("a")
    first.observe_tokens(num_prompt_tokens=1)
    assert second.registry.get_sample_value("vllm:prompt_tokens_total", 
                                            {"model_name": "a", "engine": "0"}) == 0


def test_observe_finished_records_latencies_and_success():
    metrics = PrometheusMetrics("m")
    metrics.observe_finished(finished_output(num_tokens=5))
    value = metrics.registry.get_sample_value
    assert value("vllm:request_success_total", {**LABELS, "finished_reason": "stop"}) == 1
    assert value("vllm:time_to_first_token_seconds_sum", LABELS) == 1.0
    assert value("vllm:e2e_request_latency_seconds_sum", LABELS) == 3.5
    assert value("vllm:request_queue_time_seconds_sum", LABELS) == 0.5
    assert value("vllm:request_prefill_time_seconds_sum", LABELS) == 0.5
    assert value("vllm:request_decode_time_seconds_sum", LABELS) == 2.0
    assert value("vllm:time_per_output_token_seconds_sum", LABELS) == 0.5   # 2 s / 4 tokens
    assert value("vllm:request_generation_tokens_sum", LABELS) == 5
    assert value("vllm:request_prompt_tokens_sum", LABELS) == 3
    # a stream's last delta holds only its own tokens: the caller passes the total
    metrics.observe_finished(finished_output(num_tokens=1), num_generation_tokens=3)
    assert value("vllm:time_per_output_token_seconds_sum", LABELS) == 1.5   # + 2 s / 2 tokens
    assert value("vllm:time_to_first_token_seconds_bucket", {**LABELS, "le": "1.0"}) == 2
    assert value("vllm:time_to_first_token_seconds_bucket", {**LABELS, "le": "0.75"}) == 0


def test_inter_token_latency():
    metrics = PrometheusMetrics("m")
    metrics.observe_tokens(num_generation_tokens=1, inter_token_latency=0.02)
    metrics.observe_tokens(num_generation_tokens=1, inter_token_latency=0.03)
    value = metrics.registry.get_sample_value
    assert value("vllm:inter_token_latency_seconds_count", LABELS) == 2
    assert value("vllm:inter_token_latency_seconds_sum", LABELS) == pytest.approx(0.05)


def test_update_from_stats_sets_gauges_and_advances_counters_by_growth():
    metrics = PrometheusMetrics("m")
    value = metrics.registry.get_sample_value
    stats = EngineStats(num_running=3, num_waiting=2, kv_cache_usage=0.25, num_preemptions=4,
                        prefix_cache_queries=100, prefix_cache_hits=40, num_steps=7)
    metrics.update_from_stats(stats)
    metrics.update_from_stats(replace(stats, num_preemptions=6, prefix_cache_queries=150))
    assert value("vllm:num_requests_running", LABELS) == 3
    assert value("vllm:num_requests_waiting", LABELS) == 2
    assert value("vllm:kv_cache_usage_perc", LABELS) == 0.25
    assert value("vllm:gpu_cache_usage_perc", LABELS) == 0.25
    assert value("vllm:num_preemptions_total", LABELS) == 6
    assert value("vllm:prefix_cache_queries_total", LABELS) == 150
    assert value("vllm:prefix_cache_hits_total", LABELS) == 40
    # a restarted engine starts its totals again from zero: the counter never goes back
    metrics.update_from_stats(replace(stats, num_preemptions=1))
    assert value("vllm:num_preemptions_total", LABELS) == 7

    metrics.update_from_stats(replace(stats, num_running=1, num_waiting=0, kv_cache_usage=0.5,
                                      num_preemptions=1, prefix_cache_queries=150))
    assert metrics.totals.num_requests_running == 1 and metrics.totals.kv_cache_usage == 0.5


def test_no_created_series_and_process_metrics_present():
    text = PrometheusMetrics("m").render().decode()
    assert "_created" not in text
    assert "process_cpu_seconds_total" in text and "process_resident_memory_bytes" in text


def test_iteration_tokens_histogram_observes_each_pushed_step():
    metrics = PrometheusMetrics("m")
    value = metrics.registry.get_sample_value
    stats = EngineStats(num_running=1, num_waiting=0, kv_cache_usage=0.1, num_preemptions=0,
                        prefix_cache_queries=0, prefix_cache_hits=0, num_steps=2,
                        iteration_tokens=[512, 1])
    metrics.update_from_stats(stats)
    metrics.update_from_stats(replace(stats, iteration_tokens=[]))    # a stats-only push
    assert value("vllm:iteration_tokens_total_count", LABELS) == 2
    assert value("vllm:iteration_tokens_total_sum", LABELS) == 513
    assert value("vllm:iteration_tokens_total_bucket", {**LABELS, "le": "256.0"}) == 1


def test_request_params_and_inference_time():
    metrics = PrometheusMetrics("m", max_model_len=100)
    value = metrics.registry.get_sample_value
    output = finished_output()
    output.metrics.max_tokens_param = 20
    output.outputs.append(CompletionOutput(1, "y", [1], finish_reason="length"))
    metrics.observe_finished(output)
    assert value("vllm:request_params_n_sum", LABELS) == 2
    assert value("vllm:request_params_n_bucket", {**LABELS, "le": "1.0"}) == 0
    assert value("vllm:request_params_max_tokens_sum", LABELS) == 20
    assert value("vllm:request_inference_time_seconds_sum", LABELS) == 3.0   # 13.5 - 10.5
    assert value("vllm:request_queue_time_seconds_sum", LABELS) == 0.5


def test_cache_config_info_and_http_metrics():
    from pagellm.config.cache import CacheConfig
    from pagellm.metrics.prometheus import cache_config_labels

    metrics = PrometheusMetrics("m")
    labels = cache_config_labels(CacheConfig(block_size=32), num_gpu_blocks=64, num_cpu_blocks=0)
    metrics.set_cache_config_info(labels)
    value = metrics.registry.get_sample_value
    assert labels["block_size"] == "32" and labels["num_gpu_blocks"] == "64"
    assert labels["swap_space_bytes"] == "0"        # recompute: no swap blocks, none reserved
    swapping = cache_config_labels(CacheConfig(swap_space=2.0), num_gpu_blocks=64,
                                   num_cpu_blocks=10)
    assert (swapping["num_cpu_blocks"], swapping["swap_space_bytes"]) == ("10", str(2 * 2**30))
    assert value("vllm:cache_config_info", labels) == 1
    metrics.observe_http("POST", "/v1/completions", 200, 0.25)
    metrics.observe_http("POST", "/v1/completions", 401, 0.001)
    http = {"method": "POST", "handler": "/v1/completions"}
    assert value("http_requests_total", {**http, "status": "200"}) == 1
    assert value("http_requests_total", {**http, "status": "401"}) == 1
    assert value("http_request_duration_seconds_sum", {**http, "status": "200"}) == 0.25


def test_buckets():
    assert buckets_1_2_5(100) == [1, 2, 5, 10, 20, 50, 100]
    assert buckets_1_2_5(4) == [1, 2]
    assert TTFT_BUCKETS[0] == 0.001 and TTFT_BUCKETS[-1] == 2560.0


def test_format_stats_line():
    previous = MetricTotals(prompt_tokens=100, generation_tokens=50)
    current = MetricTotals(prompt_tokens=1100, generation_tokens=250, num_preemptions=2,
                           prefix_cache_queries=200, prefix_cache_hits=50,
                           num_requests_running=8, num_requests_waiting=1, kv_cache_usage=0.125)
    assert format_stats_line(previous, current, 10.0) == (
        "Avg prompt throughput: 100.0 tokens/s, Avg generation throughput: 20.0 tokens/s, "
        "Running: 8 reqs, Waiting: 1 reqs, GPU KV cache usage: 12.5%, "
        "Prefix cache hit rate: 25.0%, Preemptions: 2")


def test_stats_logger_uses_counter_deltas_and_is_quiet_when_idle(caplog):
    now = [0.0]
    metrics = PrometheusMetrics("m")
    stats_logger = StatsLogger(metrics, interval_s=5.0, clock=lambda: now[0])
    metrics.observe_tokens(num_prompt_tokens=50, num_generation_tokens=10)
    now[0] = 5.0
    with caplog.at_level(logging.DEBUG, logger="pagellm.metrics"):
        line = stats_logger.log()
        now[0] = 10.0
        idle_line = stats_logger.log()
    assert line.startswith("Avg prompt throughput: 10.0 tokens/s, "
                           "Avg generation throughput: 2.0 tokens/s")
    assert idle_line.startswith("Avg prompt throughput: 0.0 tokens/s")
    assert [record.levelno for record in caplog.records] == [logging.INFO, logging.DEBUG]


def test_stats_logger_run_logs_pushed_stats_without_asking_the_engine(caplog):
    """run() takes no engine: it logs what the metrics hold (pushed stats), so a slow step
    cannot delay or block the line."""
    metrics = PrometheusMetrics("m")
    metrics.update_from_stats(EngineStats(num_running=2, num_waiting=1, kv_cache_usage=0.5,
                                          num_preemptions=0, prefix_cache_queries=0,
                                          prefix_cache_hits=0, num_steps=3))

    async def go():
        task = asyncio.create_task(StatsLogger(metrics, interval_s=0.001).run())
        while not any("Running: 2 reqs" in r.getMessage() for r in caplog.records):
            await asyncio.sleep(0.001)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    with caplog.at_level(logging.INFO, logger="pagellm.metrics"):
        asyncio.run(asyncio.wait_for(go(), 10))
    line = next(r.getMessage() for r in caplog.records if "Running: 2 reqs" in r.getMessage())
    assert "Waiting: 1 reqs, GPU KV cache usage: 50.0%" in line


@pytest.mark.parametrize("raw, expected", [(None, 10.0), ("", 10.0), ("2.5", 2.5)])
def test_stats_interval_from_env(monkeypatch, raw, expected):
    from pagellm.metrics.stats_logger import INTERVAL_ENV, interval_from_env
    if raw is None:
        monkeypatch.delenv(INTERVAL_ENV, raising=False)
    else:
        monkeypatch.setenv(INTERVAL_ENV, raw)
    assert interval_from_env() == expected


@pytest.mark.parametrize("raw", ["0", "-1", "soon", "inf", "nan"])
def test_bad_stats_interval_names_the_variable(monkeypatch, raw):
    from pagellm.errors import ClientError
    from pagellm.metrics.stats_logger import INTERVAL_ENV, interval_from_env
    monkeypatch.setenv(INTERVAL_ENV, raw)
    with pytest.raises(ClientError, match=INTERVAL_ENV):
        interval_from_env()


def test_collected_families_give_the_same_advisor_snapshot_as_the_text():
    """The advisor reads ``collect(METRICS_READ)`` twice a second instead of rendering and
    parsing /metrics: the snapshot must be the same, summed over replicas."""
    from pagellm.core.stats import EngineStats
    from pagellm.tuning.metrics_window import (METRICS_READ, parse_snapshot,
                                               snapshot_from_families)

    metrics = PrometheusMetrics("m", num_engines=2)
    for engine_index in (0, 1):
        metrics.update_from_stats(EngineStats(
            num_running=3 + engine_index, num_waiting=7, kv_cache_usage=0.5 * engine_index,
            num_preemptions=4, prefix_cache_queries=0, prefix_cache_hits=0, num_steps=5),
            engine_index)
        metrics.observe_tokens(num_prompt_tokens=100, num_generation_tokens=50,
                               inter_token_latency=0.01, engine_index=engine_index)
        metrics.time_to_first_token[engine_index].observe(0.03 * (engine_index + 1))
    metrics.observe_http("POST", "/v1/completions", 503, 0.2)
    metrics.observe_http("POST", "/v1/completions", 200, 0.2)
    families = metrics.collect(METRICS_READ)
    assert {sample.name for family in families for sample in family.samples} <= set(METRICS_READ)
    from_text = parse_snapshot(metrics.render().decode(), at=1.0)
    collected = snapshot_from_families(families, at=1.0)
    assert collected == from_text
    assert collected.counters["vllm:num_preemptions"] == 8.0
    assert collected.gauges["vllm:num_requests_running"] == 7.0
    assert collected.server_errors == 1.0
    assert collected.histograms["vllm:time_to_first_token_seconds"][0.1] == 2.0
