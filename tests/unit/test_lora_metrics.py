"""``vllm:lora_requests_info`` (vLLM's form): labels running/waiting adapters (comma-joined)
and max_lora, value the time of the update; absent without LoRA."""

from __future__ import annotations

import time

from pagellm.core.stats import EngineStats
from pagellm.metrics.prometheus import PrometheusMetrics


def stats(running: list[str], waiting: list[str]) -> EngineStats:
    return EngineStats(num_running=len(running), num_waiting=len(waiting), kv_cache_usage=0.0,
                       num_preemptions=0, prefix_cache_queries=0, prefix_cache_hits=0,
                       num_steps=1, running_lora_adapters=running, waiting_lora_adapters=waiting)


def test_lora_requests_info_labels_and_timestamp():
    metrics = PrometheusMetrics("m", max_lora=4)
    before = time.time()
    metrics.update_from_stats(stats(["a1", "a2"], ["a3"]))
    value = metrics.registry.get_sample_value(
        "vllm:lora_requests_info",
        {"running_lora_adapters": "a1,a2", "waiting_lora_adapters": "a3", "max_lora": "4"})
    assert value is not None and before <= value <= time.time()


def test_lora_requests_info_absent_without_lora():
    metrics = PrometheusMetrics("m")
    metrics.update_from_stats(stats([], []))
    assert b"lora_requests_info" not in metrics.render()


def test_stats_push_when_adapters_change():
    assert not stats(["a1"], []).same_gauges(stats(["a2"], []))
    assert stats(["a1"], []).same_gauges(stats(["a1"], []))
