"""``pagellm bench compare A B``: the guides' A/B method (001 §4.3 自定义 Benchmark 脚本): two
server configurations on the same workload, side by side.

A and B are each a ``pagellm serve --config`` file (YAML/JSON) or a string of serve flags
(``"--max-num-seqs 64 --scheduler-delay-factor 0.05"``; a single flag without a value goes
after ``--``: ``pagellm bench compare [options] -- --enforce-eager B``); ``--model`` and
``--serve-args`` apply to both (a file's own ``model`` wins over ``--model``). Each configuration gets its own real
``pagellm serve`` (one at a time, so they do not share the machine), one warm-up request, then
``--repeats`` runs of the same requests at each ``--request-rate``. The table shows, per rate,
P50/P95/P99 TTFT, TPOT and E2E latency, request and output-token throughput and (with
``--slo``) goodput, as the mean over the repeats ± their standard deviation, and B / A.

    pagellm bench compare "--max-num-seqs 64" "--max-num-seqs 256" --model default \\
        --num-prompts 200 --request-rate 4 --repeats 3 --output-json ab.json
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
from pathlib import Path

import numpy as np

from pagellm.errors import ClientError

ROWS = [(f"{stat.upper()} {metric.upper()} (ms)", ("latencies_ms", metric, stat))
        for metric in ("ttft", "tpot", "e2el") for stat in ("p50", "p95", "p99")]
ROWS += [("request throughput (req/s)", ("request_throughput",)),
         ("output throughput (tok/s)", ("output_throughput",)),
         ("goodput (req/s)", ("goodput",))]


def add_cli_args(parser: argparse.ArgumentParser) -> None:
    from pagellm.tuning.workload import add_workload_args

    parser.add_argument("config_a", metavar="A", help="serve config file or flag string")
    parser.add_argument("config_b", metavar="B", help="serve config file or flag string")
    parser.add_argument("--model", default="default", help="model of both (unless a file "
                        "names its own)")
    parser.add_argument("--serve-args", default="", metavar="FLAGS",
                        help="engine flags added to both configurations")
    parser.add_argument("--repeats", type=int, default=3, help="runs per rate and config")
    parser.add_argument("--work-dir", type=Path, default=Path("pagellm-compare"),
                        help="where each server's config and log go")
    parser.add_argument("--output-json", default=None, help="write every run to this file")
    add_workload_args(parser)


def config_of(text: str, model: str, fixed: dict) -> dict:
    """A serve config mapping from a config file path or a flag string (the fixed flags
    added, the given ones winning). ClientError for a bad file or flag."""
    from pagellm.entrypoints.cli.config_file import load_config_file
    from pagellm.entrypoints.cli.tune import check_serve_config, fixed_engine_args
    from pagellm.tuning.tuner import serve_config

    path = Path(text)
    if path.is_file():
        check_serve_config(path)
        own = {str(key).replace("_", "-"): value for key, value in load_config_file(path).items()}
        return {**serve_config(model, fixed, {}), **own}
    if not text.strip().startswith("-") and text.strip():
        raise ClientError(f"{text!r} is neither a file nor a string of serve flags",
                          param="config")
    return serve_config(model, {**fixed, **fixed_engine_args(text)}, {})


def spread(runs: list[dict], path: tuple) -> tuple[float, float]:
    """(mean, standard deviation) of one number over the runs."""
    values = []
    for run in runs:
        value = run
        for key in path:
            value = value[key]
        values.append(value)
    return float(np.mean(values)), float(np.std(values))


def comparison_rows(runs_a: list[dict], runs_b: list[dict]) -> list[list[str]]:
    rows = [["metric", "A (mean ± std)", "B (mean ± std)", "B / A"]]
    for label, path in ROWS:
        (mean_a, std_a), (mean_b, std_b) = spread(runs_a, path), spread(runs_b, path)
        ratio = f"{mean_b / mean_a:.2f}x" if mean_a else "-"
        rows.append([label, f"{mean_a:.2f} ± {std_a:.2f}", f"{mean_b:.2f} ± {std_b:.2f}",
                     ratio])
    return rows


def format_table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)) for row in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def main(args: argparse.Namespace) -> dict:
    from pagellm.entrypoints.cli.tune import fixed_engine_args, tokenizer_for
    from pagellm.tuning.trial_runner import ServerStartError, measure
    from pagellm.tuning.tuner import write_config
    from pagellm.tuning.workload import build_workload, slos_from_args

    if args.repeats < 1:
        raise ClientError(f"--repeats must be >= 1, got {args.repeats}", param="repeats")
    slos = slos_from_args(args)
    fixed = fixed_engine_args(args.serve_args)
    configs = {"A": config_of(args.config_a, args.model, fixed),
               "B": config_of(args.config_b, args.model, fixed)}
    workload = build_workload(args, tokenizer_for(args, configs["A"]["model"]))
    args.work_dir.mkdir(parents=True, exist_ok=True)
    runs = {}
    for name, config in configs.items():
        config_file = write_config(args.work_dir / f"{name}.yaml", config)
        print(f"{name}: pagellm serve --config {config_file}")
        try:
            runs[name] = [run.to_dict() for run in measure(
                config_file, args.work_dir / f"{name}.log", workload, slos,
                repeats=args.repeats, early_stop=False)]
        except ServerStartError as error:
            raise ClientError(f"configuration {name} did not start: {error}",
                              param="config") from None
    result = {"configs": configs, "repeats": args.repeats, "runs": runs, "tables": {}}
    for rate in workload.request_rates:
        label = "inf" if math.isinf(rate) else f"{rate:g}"
        rows = comparison_rows([r for r in runs["A"] if r["request_rate"] == rate],
                               [r for r in runs["B"] if r["request_rate"] == rate])
        result["tables"][label] = rows
        print(f"\nrequest rate {label} req/s, {args.repeats} runs each of "
              f"{len(workload.samples)} requests")
        print(format_table(rows))
    if args.output_json:
        Path(args.output_json).write_text(json.dumps(result, indent=2, default=str) + "\n")
    return result
