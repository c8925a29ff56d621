"""``pagellm check``: the scheduling guide's pre-deployment checklist (001 §4.4), automated
where a machine can check it.

Give the engine flags you will serve with (and --scenario); optionally --url of the running
server (its /metrics must answer with vllm:* series) and --bench-json of a ``pagellm bench
serving --output-json`` run with targets (--ttft-p50-ms, --p99-e2el-ms,
--min-output-throughput; the scenario's by default: online_chat TTFT 200 ms, api_service P99
5 s). Each step prints PASS / WARN / FAIL / SKIP / MANUAL; the configuration lint names the
guide's anti-patterns with their source. Exit status 1 when a step FAILs, else 0; 2 for bad
input.
"""

from __future__ import annotations

import argparse

from pagellm.config.cli_args import add_engine_args, engine_kwargs_from_args


def add_cli_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("checks")
    group.add_argument("--url", default=None, help="the running server, e.g. http://127.0.0.1:8000")
    group.add_argument("--bench-json", default=None, help="a bench serving result file")
    group.add_argument("--ttft-p50-ms", type=float, default=None)
    group.add_argument("--p99-e2el-ms", type=float, default=None)
    group.add_argument("--min-output-throughput", type=float, default=None,
                       help="output tokens/s the benchmark must reach")
    add_engine_args(parser)


def main(args: argparse.Namespace) -> int:
    from pagellm.config.engine_args import create_engine_config
    from pagellm.tuning.checklist import CheckInputs, run_checklist

    config = create_engine_config(**engine_kwargs_from_args(args))
    items = run_checklist(CheckInputs(
        config=config, url=args.url, bench_json=args.bench_json, ttft_p50_ms=args.ttft_p50_ms,
        p99_e2el_ms=args.p99_e2el_ms, min_output_throughput=args.min_output_throughput))
    for item in items:
        print(f"[{item.status:<6}] {item.step}: {item.detail}")
        for note in item.notes:
            print(f"          - {note}")
    return 1 if any(item.status == "FAIL" for item in items) else 0
