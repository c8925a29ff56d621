"""The pre-deployment checklist of the scheduling guide (001 §4.4 完整调优 Checklist),
automated where a machine can check it.

``run_checklist(inputs)`` returns one ``CheckItem`` per checklist step: PASS / WARN / FAIL when
checked, MANUAL for what only a person can confirm (fallback plans, sign-off), SKIP when the
input it needs was not given (no --url, no --bench-json). Step numbers are the guide's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from pagellm.config.engine_args import EngineConfig
from pagellm.config.presets import SCENARIOS
from pagellm.config.seeds import SEED_SCHEDULING, cite
from pagellm.errors import ClientError
from pagellm.tuning.linter import lint_config

CHECKLIST = cite(SEED_SCHEDULING, "4.4 完整调优 Checklist")
DEPLOY_DIR = Path(__file__).resolve().parents[2] / "deploy"
"""The repository's Grafana dashboard and Prometheus alert rules (absent in a wheel install)."""
MONITORING_FILES = ("grafana/pagellm-dashboard.json", "prometheus/alerts.yml")


@dataclass
class CheckInputs:
    config: EngineConfig
    url: str | None = None
    bench_json: str | None = None
    ttft_p50_ms: float | None = None
    """Target for the benchmark's median TTFT (default: the scenario's, else none)."""
    p99_e2el_ms: float | None = None
    min_output_throughput: float | None = None
    deploy_dir: Path = DEPLOY_DIR


@dataclass
class CheckItem:
    step: str
    status: str
    """PASS, WARN, FAIL, MANUAL or SKIP."""
    detail: str
    notes: list[str] = field(default_factory=list)


def run_checklist(inputs: CheckInputs) -> list[CheckItem]:
    return [_scenario(inputs), _parameters(inputs), _prefix_caching(inputs),
            _monitoring(inputs), _benchmark(inputs),
            CheckItem("6/8 fallback plans", "MANUAL", "OOM degradation plan, high-latency "
                      "alerts, automatic restart: confirm by hand"),
            CheckItem("7/8 documentation", "MANUAL", "final configuration and tuning reasons "
                      "written down: confirm by hand"),
            CheckItem("8/8 sign-off", "MANUAL", "everything above OK: deploy")]


def _scenario(inputs: CheckInputs) -> CheckItem:
    scenario = inputs.config.scenario.scenario
    if scenario is None:
        return CheckItem("1/8 scenario", "WARN", "no --scenario: pick online_chat, api_service, "
                         "batch_processing or mixed_workload as the starting configuration")
    return CheckItem("1/8 scenario", "PASS", f"{scenario} ({SCENARIOS[scenario].title})")


def _parameters(inputs: CheckInputs) -> CheckItem:
    findings = lint_config(inputs.config)
    warnings = [f for f in findings if f.severity == "warning"]
    # the anti-patterns first, then the notes, each labelled, so the count matches its list
    notes = ([f"{f.severity}: {f.line()}" for f in warnings]
             + [f"{f.severity}: {f.line()}" for f in findings if f.severity != "warning"])
    if warnings:
        others = len(findings) - len(warnings)
        return CheckItem("2/8 key parameters", "FAIL", f"{len(warnings)} anti-pattern(s)"
                         + (f", {others} note(s)" if others else ""), notes)
    return CheckItem("2/8 key parameters", "PASS", "no anti-pattern"
                     + (f", {len(findings)} note(s)" if findings else ""), notes)


def _prefix_caching(inputs: CheckInputs) -> CheckItem:
    on = inputs.config.cache.enable_prefix_caching
    return CheckItem("3/8 prefix caching", "PASS" if on else "WARN",
                     "enabled" if on else "disabled: shared system prompts are recomputed")


def _monitoring(inputs: CheckInputs) -> CheckItem:
    missing = [name for name in MONITORING_FILES if not (inputs.deploy_dir / name).is_file()]
    notes = [f"missing {inputs.deploy_dir / name}" for name in missing]
    if inputs.url is None:
        status = "WARN" if missing else "SKIP"
        return CheckItem("4/8 monitoring", status, "no --url: /metrics not checked", notes)
    from pagellm.tuning.scrape import get

    try:
        text = get(inputs.url.rstrip("/") + "/metrics").text
    except ClientError as error:
        return CheckItem("4/8 monitoring", "FAIL", str(error), notes)
    if "vllm:num_requests_running" not in text:
        return CheckItem("4/8 monitoring", "FAIL", "/metrics answers but has no vllm:* series",
                         notes)
    return CheckItem("4/8 monitoring", "WARN" if missing else "PASS",
                     f"{inputs.url}/metrics reachable with vllm:* series", notes)


def _benchmark(inputs: CheckInputs) -> CheckItem:
    step = "5/8 benchmark results"
    if inputs.bench_json is None:
        return CheckItem(step, "SKIP", "no --bench-json: run pagellm bench serving "
                         "--output-json FILE and pass it")
    try:
        data = json.loads(Path(inputs.bench_json).read_text())
    except (OSError, ValueError) as error:
        return CheckItem(step, "FAIL", f"cannot read {inputs.bench_json}: {error}")
    if not isinstance(data, dict) or "completed" not in data:
        return CheckItem(step, "FAIL", f"{inputs.bench_json} is not a bench serving result")
    return _compare_targets(step, data, _targets(inputs))


def _targets(inputs: CheckInputs) -> dict[str, float]:
    preset = SCENARIOS.get(inputs.config.scenario.scenario or "")
    ttft = inputs.ttft_p50_ms
    if ttft is None and preset is not None and preset.ttft_target_s is not None:
        ttft = preset.ttft_target_s * 1000
    e2el = inputs.p99_e2el_ms
    if e2el is None and preset is not None and preset.p99_latency_target_s is not None:
        e2el = preset.p99_latency_target_s * 1000
    targets = {"median_ttft_ms": ttft, "p99_e2el_ms": e2el,
               "output_throughput": inputs.min_output_throughput}
    return {key: value for key, value in targets.items() if value is not None}


def _compare_targets(step: str, data: dict, targets: dict[str, float]) -> CheckItem:
    notes, failed = [], False
    if data.get("failed"):
        notes.append(f"{data['failed']} failed requests")
        failed = True
    for key, target in targets.items():
        value = data.get(key)
        if value is None:
            notes.append(f"{key}: not in the result (add it to --percentile-metrics / "
                         "--metric-percentiles)")
            failed = True
            continue
        good = value >= target if key == "output_throughput" else value <= target
        notes.append(f"{key} = {value:.1f} ({'>=' if key == 'output_throughput' else '<='} "
                     f"{target:g}: {'ok' if good else 'MISSED'})")
        failed |= not good
    if not targets:
        notes.append("no targets given (--ttft-p50-ms, --p99-e2el-ms, --min-output-throughput)")
    return CheckItem(step, "FAIL" if failed else "PASS",
                     f"{data['completed']} requests completed", notes)
