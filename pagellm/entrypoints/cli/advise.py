"""``pagellm advise``: the tuning guides' decision tree on measurements.

``pagellm advise --url http://HOST:PORT --window 30`` scrapes the server's /metrics every
--interval seconds for --window seconds (run your load meanwhile), computes the guides'
symptoms (high TTFT, low KV utilization with few running requests, queue build-up, frequent
preemption, KV exhaustion, P99 far above P50, errors) and prints, per symptom, the knob to
change, the direction, the evidence and the guide's rationale with its source section.
``pagellm advise --bench-json FILE`` reads a ``pagellm bench serving --output-json`` result
instead (latencies and failures only: the client sees no queue or KV gauges).
--scenario sets the targets (online_chat: TTFT < 200 ms); --ttft-target-ms overrides.
Exit status 0 (findings or not), 2 for bad input or an unreachable server.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pagellm.errors import ClientError


def add_cli_args(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--url", default=None, help="a running server, e.g. http://127.0.0.1:8000")
    source.add_argument("--bench-json", default=None,
                        help="a pagellm bench serving --output-json result file")
    parser.add_argument("--window", type=float, default=30.0,
                        help="seconds to watch the server (default 30)")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between scrapes")
    parser.add_argument("--scenario", default=None, help="online_chat, api_service, "
                        "batch_processing or mixed_workload (sets the targets)")
    parser.add_argument("--ttft-target-ms", type=float, default=None,
                        help="TTFT P50 above this is a symptom (default: the scenario's, "
                             "else 1000)")
    parser.add_argument("--json", action="store_true", help="print the findings as JSON")


def main(args: argparse.Namespace) -> int:
    import msgspec

    from pagellm.config.presets import ScenarioConfig
    from pagellm.tuning.advisor import Advisor, KnobValues, targets_for_scenario
    from pagellm.tuning.metrics_window import window_from_bench_result, window_from_snapshots

    ScenarioConfig(args.scenario)       # ClientError naming the four scenarios
    if not (args.window > 0 and args.interval > 0):
        raise ClientError("--window and --interval must be positive seconds", param="window")
    targets = targets_for_scenario(args.scenario)
    if args.ttft_target_ms is not None:
        targets = msgspec.structs.replace(targets, ttft_s=args.ttft_target_ms / 1000.0)
    if args.bench_json:
        window, knobs = window_from_bench_result(_read_json(args.bench_json)), KnobValues()
    else:
        from pagellm.tuning.scrape import scrape_window, server_knobs

        knobs = server_knobs(args.url)
        window = window_from_snapshots(scrape_window(args.url, args.window, args.interval))
    findings = Advisor(knobs, targets).advise(window)
    if args.json:
        print(json.dumps({"findings": [f.as_dict() for f in findings],
                          "metrics": msgspec.to_builtins(window)}, indent=2, ensure_ascii=False))
    else:
        print(format_report(findings, window))
    return 0


def _read_json(path: str) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except OSError as error:
        raise ClientError(f"cannot read {path}: {error.strerror}", param="bench_json") from None
    except ValueError as error:
        raise ClientError(f"{path} is not JSON: {error}", param="bench_json") from None


def format_report(findings, window) -> str:
    head = (f"Window: {window.duration_s:.1f} s from {window.origin}, {window.num_finished} "
            f"requests finished, {window.num_failed} failed")
    if not findings:
        return head + "\nNo symptom crossed its threshold: nothing to change."
    lines = [head]
    for n, finding in enumerate(findings, 1):
        to = f" -> {finding.suggested}" if finding.suggested else ""
        lines += [f"{n}. {finding.symptom}: {finding.direction} {finding.knob}{to}",
                  f"   evidence:  {finding.evidence}",
                  f"   rationale: {finding.rationale}",
                  f"   source:    {finding.source}"]
    return "\n".join(lines)
