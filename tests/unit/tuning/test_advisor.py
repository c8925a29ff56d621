"""The decision tree on hand-built windows (each symptom -> its knob), the window arithmetic
on a real PrometheusMetrics exposition, and bench-result windows."""

from __future__ import annotations

import msgspec
import pytest

from pagellm.core.stats import EngineStats
from pagellm.errors import ClientError
from pagellm.metrics.prometheus import PrometheusMetrics
from pagellm.tuning.advisor import (Advisor, Finding, KnobValues, MetricWindow, Targets,
                                    format_line, targets_for_scenario)
from pagellm.tuning.metrics_window import (histogram_quantile, parse_snapshot,
                                           window_from_bench_result, window_from_snapshots)


def _window(**fields) -> MetricWindow:
    base = dict(duration_s=10.0, num_finished=20, ttft_p50_s=0.05, ttft_p99_s=0.08,
                e2e_p50_s=1.0, e2e_p99_s=1.5, running_mean=2.0, running_max=4.0,
                waiting_mean=0.0, waiting_max=0.0, kv_usage_mean=0.8, kv_usage_max=0.85)
    return MetricWindow(**{**base, **fields})


def _only(findings: list[Finding], symptom: str) -> Finding:
    matching = [f for f in findings if f.symptom == symptom]
    assert len(matching) == 1, findings
    return matching[0]


def test_healthy_window_has_no_finding():
    assert Advisor(KnobValues(max_num_seqs=8, scheduler_delay_factor=0.1)).advise(_window()) == []
    assert format_line([]) == "Advisor: no finding"


def test_high_ttft_walks_the_delay_factor_ladder():
    window = _window(ttft_p50_s=1.5, ttft_p99_s=2.0)
    finding = _only(Advisor(KnobValues(scheduler_delay_factor=1.0)).advise(window), "high_ttft")
    assert (finding.knob, finding.direction, finding.suggested) == (
        "scheduler_delay_factor", "decrease", "0.5")
    assert finding.source.startswith("001_a001effc249e1005.txt §4.2")
    assert _only(Advisor(KnobValues(scheduler_delay_factor=0.5)).advise(window),
                 "high_ttft").suggested == "0.1"
    # already at 0.05: the guide looks elsewhere (prefix caching off -> enable it)
    off = Advisor(KnobValues(scheduler_delay_factor=0.05, enable_prefix_caching=False))
    assert _only(off.advise(window), "high_ttft").knob == "enable_prefix_caching"
    on = Advisor(KnobValues(scheduler_delay_factor=0.0, enable_prefix_caching=True))
    assert _only(on.advise(window), "high_ttft").direction == "investigate"


def test_scenario_targets_lower_the_ttft_threshold():
    window = _window(ttft_p50_s=0.3, ttft_p99_s=0.35)
    assert Advisor(KnobValues(scheduler_delay_factor=0.1)).advise(window) == []
    chat = Advisor(KnobValues(scheduler_delay_factor=0.1), targets_for_scenario("online_chat"))
    assert _only(chat.advise(window), "high_ttft").suggested == "0.05"


def test_queue_at_the_seq_cap_raises_max_num_seqs():
    window = _window(waiting_mean=6.0, waiting_max=12.0, running_max=4.0, kv_usage_mean=0.3,
                     kv_usage_max=0.4, queue_p50_s=0.8, queue_p99_s=2.0)
    finding = _only(Advisor(KnobValues(max_num_seqs=4)).advise(window), "queue_buildup")
    assert (finding.knob, finding.direction, finding.suggested) == ("max_num_seqs", "increase",
                                                                     "64")
    # below the cap with room: the token budget admits too slowly
    below = _only(Advisor(KnobValues(max_num_seqs=64)).advise(window), "queue_buildup")
    assert below.knob == "max_num_batched_tokens"


def test_a_queue_seen_only_in_queue_time_leads_with_it():
    # waits shorter than the gauges' sampling interval: zero waiting in every scrape
    window = _window(queue_p50_s=0.3, queue_p99_s=1.0)
    finding = _only(Advisor(KnobValues(max_num_seqs=64)).advise(window), "queue_buildup")
    assert finding.evidence.startswith("queue time P99 1000 ms > ")
    assert "up to 0 requests waiting (mean 0.0) in the sampled gauges" in finding.evidence


def test_preemption_names_the_kv_budget_or_swap_space():
    window = _window(num_preemptions=9, kv_usage_max=0.9)
    cpu = _only(Advisor(KnobValues(kv_cache_memory_bytes=1 << 20, device="cpu")).advise(window),
                "frequent_preemption")
    assert (cpu.knob, cpu.direction, cpu.suggested) == ("kv_cache_memory_bytes", "increase",
                                                        str(2 << 20))
    gpu = _only(Advisor(KnobValues(gpu_memory_utilization=0.9, device="cuda")).advise(window),
                "frequent_preemption")
    assert (gpu.knob, gpu.suggested) == ("gpu_memory_utilization", "0.93")
    swap = _only(Advisor(KnobValues(preemption_mode="swap", swap_space=4.0)).advise(window),
                 "frequent_preemption")
    assert (swap.knob, swap.suggested) == ("swap_space", "8.0")


def test_kv_exhaustion_suppresses_the_queue_advice():
    window = _window(kv_usage_max=1.0, kv_usage_mean=0.97, waiting_mean=5.0, waiting_max=9.0,
                     running_max=3.0)
    findings = Advisor(KnobValues(max_num_seqs=3, gpu_memory_utilization=0.9)).advise(window)
    assert _only(findings, "kv_exhaustion").knob == "gpu_memory_utilization"
    assert not [f for f in findings if f.symptom == "queue_buildup"]


def test_tail_is_explained_or_blamed_on_the_model():
    tail = _window(e2e_p50_s=1.0, e2e_p99_s=5.0)
    assert _only(Advisor().advise(tail), "p99_tail").knob == "quantization"
    queued = _window(e2e_p50_s=1.0, e2e_p99_s=5.0, waiting_mean=3.0, waiting_max=8.0,
                     running_max=4.0, kv_usage_mean=0.3)
    finding = _only(Advisor(KnobValues(max_num_seqs=4)).advise(queued), "p99_tail")
    assert finding.knob == "max_num_seqs" and "queue_buildup" in finding.evidence


def test_errors_with_full_kv_point_to_max_model_len():
    window = _window(num_failed=5, kv_usage_max=0.99)
    assert _only(Advisor().advise(window), "error_rate").knob == "max_model_len"
    assert _only(Advisor().advise(_window(num_failed=5)), "error_rate").direction == "investigate"


def test_finding_is_plain_data():
    finding = Finding(symptom="s", knob="k", direction="increase", evidence="e", rationale="r",
                      source="x")
    assert finding.as_dict() == {"symptom": "s", "knob": "k", "direction": "increase",
                                 "evidence": "e", "rationale": "r", "source": "x",
                                 "suggested": None}
    assert msgspec.json.decode(msgspec.json.encode(finding), type=Finding) == finding


def test_histogram_quantile_interpolates_like_prometheus():
    buckets = {0.1: 10.0, 0.5: 30.0, 1.0: 40.0, float("inf"): 40.0}
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.1 + 0.4 * (20 - 10) / 20)
    assert histogram_quantile(0.25, buckets) == pytest.approx(0.1 * 10 / 10)
    assert histogram_quantile(0.99, {1.0: 0.0, float("inf"): 0.0}) is None
    assert histogram_quantile(0.99, {1.0: 0.0, float("inf"): 5.0}) == 1.0


def test_window_from_a_real_exposition():
    metrics = PrometheusMetrics("m")
    first = parse_snapshot(metrics.render().decode(), at=0.0)
    metrics.update_from_stats(EngineStats(num_running=3, num_waiting=7, kv_cache_usage=0.5,
                                          num_preemptions=4, prefix_cache_queries=0,
                                          prefix_cache_hits=0, num_steps=5))
    for ttft in (0.03, 0.03, 0.3):
        metrics.time_to_first_token[0].observe(ttft)
    metrics.observe_tokens(num_prompt_tokens=100, num_generation_tokens=50)
    middle = parse_snapshot(metrics.render().decode(), at=1.0)
    metrics.update_from_stats(EngineStats(num_running=1, num_waiting=0, kv_cache_usage=0.25,
                                          num_preemptions=4, prefix_cache_queries=0,
                                          prefix_cache_hits=0, num_steps=9))
    last = parse_snapshot(metrics.render().decode(), at=2.0)
    window = window_from_snapshots([first, middle, last])
    assert window.duration_s == 2.0
    assert (window.num_preemptions, window.waiting_max, window.running_max) == (4, 7.0, 3.0)
    assert window.waiting_last == 0.0 and window.kv_usage_max == 0.5
    assert window.prompt_tokens_per_s == 50.0 and window.generation_tokens_per_s == 25.0
    assert 0.02 < window.ttft_p50_s <= 0.04 and 0.25 <= window.ttft_p99_s <= 0.5


def test_window_needs_two_scrapes_and_an_exposition():
    with pytest.raises(ClientError, match="two scrapes"):
        window_from_snapshots([parse_snapshot("", at=0.0)])
    with pytest.raises(ClientError, match="Prometheus"):
        parse_snapshot("this is { not metrics")


def test_bench_result_window_and_bad_file():
    data = {"duration": 12.0, "completed": 98, "failed": 2, "median_ttft_ms": 1500.0,
            "p99_ttft_ms": 2500.0, "median_e2el_ms": 3000.0, "p99_e2el_ms": 4000.0,
            "output_throughput": 321.0}
    window = window_from_bench_result(data)
    assert (window.ttft_p50_s, window.num_failed, window.running_max) == (1.5, 2, None)
    findings = Advisor().advise(window)
    assert [f.symptom for f in findings] == ["error_rate", "high_ttft"]
    with pytest.raises(ClientError, match="bench serving result"):
        window_from_bench_result({"hello": 1})


def test_targets_round_trip():
    assert targets_for_scenario(None) == Targets()
    assert targets_for_scenario("online_chat").ttft_s == 0.2
