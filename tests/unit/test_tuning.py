"""pagellm tune's parts that need no server: SLO parsing and the early-stop rule (exact
against np.percentile), knob specs, the Pareto front, the closest scenario, the report
tables, and the JSONL dataset."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest

from pagellm.bench.datasets import SampleRequest, sample_jsonl_requests
from pagellm.bench.serving import RequestResult
from pagellm.errors import ClientError
from pagellm.tuning.baseline import Baseline, closest_scenario
from pagellm.tuning.report import (comparison_table, pareto_front, serve_command,
                                   trial_table)
from pagellm.tuning.search_space import (Knob, constraint_violation, default_knobs,
                                         knobs_from_args, parse_knob)
from pagellm.tuning.slo import SLO, EarlyStop, parse_slo, parse_slos, violated_slos
from pagellm.tuning.trial_runner import Workload, summarize
from pagellm.tuning.tuner import TrialRecord, infeasible_message, serve_config


def _result(ttft_s: float, latency_s: float = 1.0, tokens: int = 11) -> RequestResult:
    return RequestResult(success=True, output_tokens=tokens, ttft=ttft_s, latency=latency_s)


def test_parse_slo_forms_and_errors():
    assert parse_slo("ttft_p99_ms=500") == SLO("ttft", 99.0, 500.0)
    assert parse_slo("tpot_p99.9_ms=50").percentile == 99.9
    assert parse_slo("e2el_mean_ms=2000") == SLO("e2el", None, 2000.0)
    assert str(parse_slo("ttft_p99_ms=500")) == "ttft_p99_ms=500"
    for bad in ("ttft_p99=500", "itl_p99_ms=5", "ttft_p99_ms=abc", "ttft_p99_ms=-1",
                "ttft_p0_ms=5", "ttft_p101_ms=5"):
        with pytest.raises(ClientError):
            parse_slo(bad)
    with pytest.raises(ClientError, match="given twice"):
        parse_slos(["ttft_p99_ms=1", "ttft_p99_ms=2"])


@pytest.mark.parametrize("num_requests, percentile", [(1, 99), (5, 99), (10, 90), (100, 99),
                                                      (37, 50), (20, 95)])
def test_early_stop_fires_exactly_when_the_percentile_is_certainly_broken(num_requests,
                                                                          percentile):
    """After each finished request, EarlyStop has fired iff the percentile is above the bound
    even with every unfinished request at 0 ms (its lowest possible final value); and once
    fired, the whole run's percentile is indeed above the bound."""
    slo = SLO("ttft", float(percentile), 100.0)
    rng = np.random.default_rng(num_requests)
    for _ in range(5):
        ttfts_ms = rng.uniform(0, 200, num_requests)
        stop = EarlyStop([slo], num_requests)
        for finished in range(1, num_requests + 1):
            fired = stop.add(_result(ttfts_ms[finished - 1] / 1000))
            padded = list(ttfts_ms[:finished]) + [0.0] * (num_requests - finished)
            assert fired == (np.percentile(padded, percentile) > 100.0)
            if fired:
                assert np.percentile(ttfts_ms, percentile) > 100.0
                break


def test_failed_requests_count_as_violations_and_mean_slos_never_stop_early():
    stop = EarlyStop([SLO("e2el", 50.0, 10.0)], 3)
    assert not stop.add(RequestResult(success=False))
    assert stop.add(RequestResult(success=False)) and stop.broken == "e2el_p50_ms"
    mean_only = EarlyStop([SLO("ttft", None, 1.0)], 2)
    assert not mean_only.add(_result(100.0)) and not mean_only.add(_result(100.0))
    assert violated_slos([RequestResult(success=False)], [SLO("ttft", None, 1.0)])


def test_summarize_goodput_counts_requests_meeting_every_bound():
    results = [_result(0.1, 1.0), _result(0.3, 1.0), _result(0.1, 5.0),
               RequestResult(success=False)]
    slos = [SLO("ttft", 50.0, 150.0), SLO("e2el", 50.0, 2000.0)]
    run = summarize(results, 2.0, math.inf, 4, slos, False)
    assert run.completed == 3 and run.failed == 1
    assert run.goodput == pytest.approx(0.5)            # only the first: 1 good / 2 s
    assert run.request_throughput == pytest.approx(1.5)
    assert run.latencies_ms["ttft"]["p50"] == pytest.approx(100.0)
    assert set(run.violated) == {"ttft_p50_ms", "e2el_p50_ms"}   # failed = infinitely slow


def test_knob_specs():
    assert parse_knob("max_num_seqs=8:256:log", 0) == Knob("max_num_seqs", 8, 256, True, kind=int)
    assert parse_knob("scheduler-delay-factor=0:0.5", 0).kind is float
    assert parse_knob("block_size=8,16", 0).choices == (8, 16)
    assert parse_knob("enable_chunked_prefill=true,false", 0).choices == (True, False)
    assert parse_knob("gpu_memory_utilization", 0).low == 0.80
    for bad, message in (("max_num_seq=1:2", "did you mean 'max_num_seqs'"),
                         ("max_num_seqs=9:3", "LOW < HIGH"), ("max_num_seqs=0:3:log", "LOW > 0"),
                         ("max_num_seqs=a:3", "not a valid int"), ("model", "no default range"),
                         ("enable_chunked_prefill=yes", "true,false")):
        with pytest.raises(ClientError, match=message):
            parse_knob(bad, 0)
    with pytest.raises(ClientError, match="each knob once"):
        knobs_from_args(["max_num_seqs", "max_num_seqs=1:2"], 0)


def test_default_knobs_by_device():
    cpu = [knob.name for knob in default_knobs(0)]
    assert cpu == ["max_num_seqs", "max_num_batched_tokens", "scheduler_delay_factor",
                   "enable_chunked_prefill", "block_size"]
    one_gpu = [knob.name for knob in default_knobs(1)]
    assert "gpu_memory_utilization" in one_gpu and "tensor_parallel_size" not in one_gpu
    four = {knob.name: knob for knob in default_knobs(4)}
    assert four["tensor_parallel_size"].choices == (1, 2, 4)
    assert four["data_parallel_size"].choices == (1, 2, 4)


def test_float_knobs_suggest_round_values():
    import optuna
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    knob = Knob("scheduler_delay_factor", 0.0, 0.5, kind=float)
    values = [knob.suggest(study.ask()) for _ in range(20)]
    assert all(0.0 <= v <= 0.5 and round(v, 3) == v for v in values)


def test_constraints_checked_before_launch():
    assert constraint_violation({"tensor_parallel_size": 4, "data_parallel_size": 2}, {}, 4,
                                None) == "tp x pp x dp = 8 GPUs, but only 4 are visible"
    assert "chunked prefill off" in constraint_violation(
        {"enable_chunked_prefill": False, "max_num_batched_tokens": 256}, {"max_model_len": 512},
        0, 512)
    assert constraint_violation({"max_num_seqs": 4}, {}, 0, 512) is None


def test_pareto_front_keeps_the_non_dominated_points():
    points = [(0, 10.0, 100.0), (1, 20.0, 150.0), (2, 15.0, 200.0), (3, 5.0, 50.0),
              (4, 20.0, 120.0)]
    assert [p[0] for p in pareto_front(points)] == [3, 0, 4]
    for subset in itertools.combinations(points, 3):      # no front point is dominated
        front = pareto_front(subset)
        for a in front:
            assert not any(b[1] >= a[1] and b[2] <= a[2] and b != a for b in subset)


def _samples(prompt_lens, output_len=50):
    return [SampleRequest([1] * n, output_len) for n in prompt_lens]


def test_closest_scenario_follows_the_guide_traits():
    slo = [SLO("ttft", 99.0, 150.0)]
    assert closest_scenario(Workload(_samples([100] * 4), [math.inf]), [])[0] == \
        "batch_processing"
    assert closest_scenario(Workload(_samples([10, 500]), [4.0]), [])[0] == "mixed_workload"
    assert closest_scenario(Workload(_samples([2000]), [4.0]), slo)[0] == "online_chat"
    assert closest_scenario(Workload(_samples([200]), [4.0]), [])[0] == "online_chat"
    assert closest_scenario(Workload(_samples([2000], 500), [4.0]), [])[0] == "api_service"


def _run(goodput, violated=None, early=False):
    latencies = {m: {"p50": 1.0, "p95": 2.0, "p99": 3.0, "mean": 1.5}
                 for m in ("ttft", "tpot", "e2el")}
    return {"request_rate": 2.0, "num_requests": 4, "completed": 4, "failed": 0,
            "duration_s": 2.0, "request_throughput": 2.0, "output_throughput": 40.0,
            "goodput": goodput, "latencies_ms": latencies, "violated": violated or {},
            "early_stopped": early}


def test_tables_and_command():
    config = serve_config("default", {"max_model_len": 512}, {"enable_chunked_prefill": False,
                                                               "max_num_seqs": 8})
    assert config == {"model": "default", "max-model-len": 512,
                      "enable-chunked-prefill": False, "max-num-seqs": 8}
    assert serve_command(config) == ("pagellm serve default --max-model-len 512 "
                                     "--no-enable-chunked-prefill --max-num-seqs 8")
    best = TrialRecord(3, "COMPLETE", {"max_num_seqs": 8}, [_run(2.0)], goodput=2.0)
    pruned = TrialRecord(4, "PRUNED", {"max_num_seqs": 1},
                         [_run(0.1, {"ttft_p99_ms": 900.0}, True)], note="broke ttft")
    rows = trial_table([best, pruned], ["max_num_seqs"])
    assert rows[0][:4] == ["trial", "state", "max_num_seqs", "goodput (req/s)"]
    assert rows[1][:4] == ["3", "COMPLETE", "8", "2.000"] and rows[2][3] == "-"
    baseline = Baseline("online_chat preset (001 §4.1)", {"model": "default"},
                        runs=[_run(1.6)])
    table = comparison_table(best, baseline)
    assert table[1] == ["goodput (req/s)", "1.600", "2.000", "1.25x"]


def test_infeasible_message_names_the_slo_and_the_best_value():
    slo = SLO("ttft", 99.0, 1.0)
    records = [TrialRecord(i, "PRUNED", {}, [_run(0.0, {"ttft_p99_ms": value}, True)])
               for i, value in enumerate((40.0, 25.5))]
    message = infeasible_message(records, [slo, SLO("tpot", 99.0, 1e6)])
    assert "ttft_p99_ms=1 was broken by 2 of 2 measured trials (best ttft_p99_ms: 25.5 ms)" \
        in message and "tpot" not in message and "Relax the SLO" in message


def test_jsonl_dataset(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in (
        {"prompt": "a b c", "output_len": 5}, {"prompt": "d e", "max_tokens": 7}, {})))
    with pytest.raises(ClientError, match="line 3: expected an object with a \"prompt\""):
        sample_jsonl_requests(path, 2, str.split)
    path.write_text('{"prompt": "a b c", "output_len": 5}\n\n{"prompt": "d e", "max_tokens": 7}\n')
    samples = sample_jsonl_requests(path, 3, str.split, seed=1)
    assert len(samples) == 3
    assert {(s.prompt, s.expected_output_len, s.prompt_len) for s in samples} == \
        {("a b c", 5, 3), ("d e", 7, 2)}
    assert {s.expected_output_len for s in sample_jsonl_requests(path, 2, str.split,
                                                                 output_len=9)} == {9}
    path.write_text('{"prompt": "x"}\n')
    with pytest.raises(ClientError, match="line 1: no positive output length"):
        sample_jsonl_requests(path, 1, str.split)


def test_baseline_config_from_a_preset_dict():
    from pagellm.tuning.baseline import baseline_config, preset_values

    preset = {"max_num_seqs": 64, "scheduler_delay_factor": 0.05, "max_model_len": 4096,
              "disable_log_requests": True}
    config, left_out = baseline_config("default", {"max_model_len": 256}, preset)
    assert config == {"model": "default", "max-num-seqs": 64, "scheduler-delay-factor": 0.05,
                      "max-model-len": 256}           # the fixed flags win over the preset
    assert left_out == ["disable_log_requests"]        # not an engine argument: reported
    try:
        import pagellm.config.presets  # noqa: F401  (the scenario presets, when merged)
    except ImportError:
        assert preset_values("online_chat") is None
    else:
        assert preset_values("online_chat")["max_num_seqs"] == 64   # 001 §4.1


def test_a_configuration_measured_before_is_not_launched_again(tmp_path):
    """The only configuration the space allows was measured in trial 0 (added to the
    stored study as a finished trial); a resumed study reuses its result instead of
    launching a server (which would fail here: the model does not exist)."""
    import optuna

    from pagellm.tuning.tuner import TuneSetup, open_study, run_study

    knob = Knob("max_num_seqs", choices=(4,), kind=int)
    setup = TuneSetup(model=str(tmp_path / "no-model"), fixed={}, knobs=[knob],
                      workload=Workload(_samples([8]), [math.inf]), slos=[],
                      workload_description={"w": 1}, study_dir=tmp_path / "study")
    study = open_study(setup, resume=False, seed=0)
    study.add_trial(optuna.trial.create_trial(
        params={"max_num_seqs": 4},
        distributions={"max_num_seqs": optuna.distributions.CategoricalDistribution([4])},
        value=1.5, user_attrs={"runs": [_run(1.5)]}))
    records = run_study(setup, n_trials=1, time_budget_s=None, resume=True)
    assert [(r.state, r.goodput) for r in records] == [("COMPLETE", 1.5), ("COMPLETE", 1.5)]
    assert records[1].note == "same configuration as trial 0" and records[1].runs == [_run(1.5)]
    assert not (tmp_path / "study" / "trials" / "trial_1.log").exists()
