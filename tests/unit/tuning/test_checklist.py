"""``pagellm check``: the checklist's automated steps, from configuration lint to benchmark
targets, and its exit status."""

from __future__ import annotations

import json

from pagellm.config.engine_args import create_engine_config
from pagellm.entrypoints.cli.main import main
from pagellm.tuning.checklist import CheckInputs, run_checklist
from tests.helpers.server import free_port


def _statuses(**kwargs) -> dict[str, str]:
    items = run_checklist(CheckInputs(**kwargs))
    return {item.step.split()[0]: item.status for item in items}


def test_a_clean_scenario_passes_what_it_can_check():
    statuses = _statuses(config=create_engine_config(scenario="api_service"))
    assert statuses == {"1/8": "PASS", "2/8": "PASS", "3/8": "PASS", "4/8": "SKIP",
                        "5/8": "SKIP", "6/8": "MANUAL", "7/8": "MANUAL", "8/8": "MANUAL"}


def test_anti_patterns_and_missing_scenario():
    statuses = _statuses(config=create_engine_config(max_num_seqs=1024,
                                                     enable_prefix_caching=False))
    assert (statuses["1/8"], statuses["2/8"], statuses["3/8"]) == ("WARN", "FAIL", "WARN")


def test_benchmark_targets(tmp_path):
    result = tmp_path / "bench.json"
    result.write_text(json.dumps({"completed": 50, "failed": 0, "median_ttft_ms": 150.0,
                                  "p99_e2el_ms": 900.0, "output_throughput": 400.0}))
    config = create_engine_config(scenario="online_chat")     # TTFT target 200 ms
    items = run_checklist(CheckInputs(config=config, bench_json=str(result),
                                      min_output_throughput=300.0))
    bench = items[4]
    assert bench.status == "PASS", bench
    assert any("median_ttft_ms = 150.0 (<= 200: ok)" in note for note in bench.notes)
    slow = run_checklist(CheckInputs(config=config, bench_json=str(result), ttft_p50_ms=100.0))
    assert slow[4].status == "FAIL"
    assert run_checklist(CheckInputs(config=config, bench_json=str(tmp_path / "x")))[4].status \
        == "FAIL"


def test_cli_exit_status_and_unreachable_url(capsys):
    assert main(["check", "--scenario", "api_service"]) == 0
    url = f"http://127.0.0.1:{free_port()}"
    assert main(["check", "--scenario", "api_service", "--url", url]) == 1
    out = capsys.readouterr().out
    assert "[FAIL  ] 4/8 monitoring: cannot reach" in out
    assert main(["check", "--scenario", "bogus"]) == 2
    assert "scenario must be one of" in capsys.readouterr().err


def test_the_parameter_count_matches_its_list_and_notes_are_labelled():
    """max_num_seqs=1024 is one anti-pattern; the default scheduler_delay_factor=0 is only a
    note (info): the summary counts each kind and every line says which it is."""
    items = run_checklist(CheckInputs(config=create_engine_config(max_num_seqs=1024)))
    parameters = items[1]
    assert parameters.status == "FAIL"
    assert parameters.detail == "1 anti-pattern(s), 1 note(s)"
    assert [line.split(":")[0] for line in parameters.notes] == ["warning", "info"]
