"""``pagellm tune [MODEL]``: search the serving configuration on your own workload.

Each trial starts a real ``pagellm serve`` (a subprocess on a free port) with one configuration
that Optuna proposes, drives it with the ``bench serving`` client over the workload (a random,
ShareGPT or JSONL request set, at one request rate or a sweep), and scores it by goodput:
requests/s meeting every ``--slo``. A run stops as soon as a percentile SLO is certainly
broken, and such a trial is pruned. Trials persist in STUDY_DIR/study.db; ``--resume`` adds
trials to the study there. The search ends after ``--n-trials`` trials or ``--time-budget``.

Outputs (in --output-dir, default the study dir): best_config.yaml (``pagellm serve --config
best_config.yaml``) and the equivalent command, report.md (report.html with --html) with the
trial table, pareto.png (output throughput vs P99 latency) and the comparison with the guide's
preset for the closest scenario (or --baseline-config FILE), measured on the same workload.

    pagellm tune default --serve-args "--max-model-len 2048" --random-input-len 256 \\
        --random-output-len 64 --num-prompts 100 --request-rate 2 4 8 \\
        --slo ttft_p99_ms=500 --slo tpot_p99_ms=50 --time-budget 15m

No configuration meeting the SLOs is an error (exit status 2) naming each SLO the trials broke
and the best value measured; the report is written anyway.
"""

from __future__ import annotations

import argparse
import logging
import re
import shlex
from pathlib import Path

from pagellm.config.cli_args import engine_kwargs_from_args
from pagellm.errors import ClientError

logger = logging.getLogger("pagellm.tune")

_DURATION = re.compile(r"(?P<number>\d+(?:\.\d+)?)(?P<unit>[smh]?)")


def add_cli_args(parser: argparse.ArgumentParser) -> None:
    from pagellm.tuning.workload import add_workload_args

    parser.add_argument("model", nargs="?", default="default",
                        help="model directory, .gguf file or 'default'")
    parser.add_argument("--serve-args", default="", metavar="FLAGS",
                        help="engine flags fixed in every trial, e.g. \"--max-model-len 2048 "
                             "--dtype float16\" (a single flag: --serve-args=--enforce-eager)")
    add_workload_args(parser)
    search = parser.add_argument_group("search")
    search.add_argument("--knob", action="append", default=None, metavar="NAME[=RANGE]",
                        help="search this engine argument, repeatable: max_num_seqs=8:256:log, "
                             "scheduler_delay_factor=0:0.5, block_size=8,16,32, or a bare name "
                             "for its default range (default: max_num_seqs, "
                             "max_num_batched_tokens, scheduler_delay_factor, "
                             "enable_chunked_prefill, block_size, gpu_memory_utilization on "
                             "CUDA, tp/dp with several GPUs)")
    search.add_argument("--n-trials", type=int, default=20,
                        help="new trials to run (fewer if the time budget ends first)")
    search.add_argument("--time-budget", type=duration_seconds, default=900.0,
                        metavar="DURATION", help="e.g. 900, 90s, 15m, 1h (a trial in "
                        "progress finishes)")
    search.add_argument("--study-dir", type=Path, default=Path("pagellm-tune"),
                        help="where the study (study.db), trial configs and logs live")
    search.add_argument("--resume", action="store_true",
                        help="continue the study in --study-dir (same model, flags, knobs, "
                             "workload and SLOs)")
    out = parser.add_argument_group("output")
    out.add_argument("--output-dir", type=Path, default=None,
                     help="where best_config.yaml, report.md and pareto.png go (default: "
                          "--study-dir)")
    out.add_argument("--baseline-config", type=Path, default=None, metavar="FILE",
                     help="compare with this serve config file instead of the guide's preset")
    out.add_argument("--no-baseline", action="store_true",
                     help="skip measuring the baseline")
    out.add_argument("--html", action="store_true", help="also write report.html")
    out.add_argument("--pareto-latency", choices=("ttft", "tpot", "e2el"), default="e2el",
                     help="the P99 latency of the Pareto plot")


def duration_seconds(text: str) -> float:
    """argparse type: ``900``, ``90s``, ``15m``, ``1h`` -> seconds (> 0)."""
    match = _DURATION.fullmatch(text.strip())
    if match is None or float(match["number"]) <= 0:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}: give e.g. 900, 90s, 15m "
                                         "or 1h")
    return float(match["number"]) * {"": 1, "s": 1, "m": 60, "h": 3600}[match["unit"]]


def fixed_engine_args(text: str) -> dict:
    """The engine arguments of a ``--serve-args`` string. ClientError for a flag ``pagellm
    serve`` does not take or a bad value."""
    from pagellm.entrypoints.cli.main import build_parser

    parser = build_parser().config_file_parsers["serve"]

    def fail(message: str):
        raise ClientError(f"--serve-args: {message}", param="serve_args")

    parser.error = fail
    try:
        tokens = shlex.split(text)
    except ValueError as error:
        fail(str(error))
    namespace = parser.parse_args(tokens)
    fixed = engine_kwargs_from_args(namespace)
    fixed.pop("model", None)
    return fixed


def check_serve_config(path: Path) -> None:
    """ClientError when ``path`` is not a valid ``pagellm serve --config`` file."""
    from pagellm.entrypoints.cli.config_file import config_file_to_argv
    from pagellm.entrypoints.cli.main import build_parser

    config_file_to_argv(build_parser().config_file_parsers["serve"], path)


def tokenizer_for(args: argparse.Namespace, model: str) -> str:
    """--tokenizer, else the model's local path ('default' fetched and resolved)."""
    from pagellm.models.default_model import resolve_model_path

    return args.tokenizer or resolve_model_path(model)


def visible_gpus() -> int:
    try:
        import torch
        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except ImportError:
        return 0


def main(args: argparse.Namespace) -> int:
    from pagellm.tuning.report import write_outputs
    from pagellm.tuning.tuner import best_record, infeasible_message, run_study

    if args.n_trials < 1:
        raise ClientError("--n-trials must be >= 1", param="n_trials")
    if args.baseline_config is not None:
        check_serve_config(args.baseline_config)
    setup = build_setup(args)
    records = run_study(setup, args.n_trials, args.time_budget, args.resume, args.seed)
    best = best_record(records)
    baseline = None
    if best is not None and not args.no_baseline:
        baseline = make_baseline(args, setup)
    out_dir = args.output_dir or args.study_dir
    paths = write_outputs(setup, records, best, baseline, out_dir, args.html,
                          args.pareto_latency)
    print(f"{len(records)} trials in {args.study_dir / 'study.db'}; report: {paths['report']}")
    if best is None:
        raise ClientError(infeasible_message(records, setup.slos), param="slo")
    from pagellm.tuning.report import serve_command
    from pagellm.tuning.tuner import serve_config
    print(f"best: trial {best.number}, goodput {best.goodput:.3f} req/s")
    print(f"config: {paths['config']}")
    print(f"command: {serve_command(serve_config(setup.model, setup.fixed, best.values))}")
    return 0


def build_setup(args: argparse.Namespace):
    """The TuneSetup of the flags (ClientError for a bad one), before any server starts."""
    from pagellm.tuning.search_space import knobs_from_args
    from pagellm.tuning.tuner import TuneSetup
    from pagellm.tuning.workload import build_workload, slos_from_args, workload_description

    slos = slos_from_args(args)
    fixed = fixed_engine_args(args.serve_args)
    num_gpus = visible_gpus()
    knobs = knobs_from_args(args.knob, num_gpus)
    clash = [knob.name for knob in knobs if knob.name in fixed]
    if clash and args.knob:
        raise ClientError(f"--knob {clash[0]} is also fixed by --serve-args; drop one",
                          param="knob")
    knobs = [knob for knob in knobs if knob.name not in fixed]     # a fixed flag is not searched
    if not knobs:
        raise ClientError("nothing to search: every knob is fixed by --serve-args",
                          param="knob")
    workload = build_workload(args, tokenizer_for(args, args.model))
    return TuneSetup(model=args.model, fixed=fixed, knobs=knobs, workload=workload, slos=slos,
                     workload_description=workload_description(args), num_gpus=num_gpus,
                     study_dir=args.study_dir)


def make_baseline(args: argparse.Namespace, setup):
    """The baseline measured: --baseline-config's file, else the guide's preset for the
    closest scenario (None, with a log line, when this build has no presets)."""
    from pagellm.entrypoints.cli.config_file import load_config_file
    from pagellm.tuning.baseline import (Baseline, baseline_config, closest_scenario,
                                         measure_baseline, preset_values)
    from pagellm.tuning.tuner import serve_config

    out_dir = args.output_dir or args.study_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    if args.baseline_config is not None:
        from_file = {str(key).replace("_", "-"): value
                     for key, value in load_config_file(args.baseline_config).items()}
        config = {**serve_config(setup.model, {}, {}), **from_file,
                  **serve_config(setup.model, setup.fixed, {})}    # the fixed flags win
        baseline = Baseline(f"baseline {args.baseline_config.name}", config)
    else:
        scenario, reason = closest_scenario(setup.workload, setup.slos)
        preset = preset_values(scenario)
        if preset is None:
            logger.warning("no scenario presets in this build: no baseline for %s", scenario)
            return None
        config, left_out = baseline_config(setup.model, setup.fixed, preset)
        note = f"left out (not engine arguments here): {', '.join(left_out)}" if left_out else ""
        baseline = Baseline(f"{scenario} preset (001 §4.1)", config, reason, note=note)
    logger.info("measuring the baseline: %s", baseline.name)
    return measure_baseline(baseline, setup.workload, setup.slos, out_dir)
