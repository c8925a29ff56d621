"""The workload and SLO flags ``pagellm tune`` and ``pagellm bench compare`` share, and the
``Workload`` they build: the same requests (``bench serving``'s samplers: random lengths
uniform in ±range ratio, a ShareGPT file or a JSONL file) sent at each request rate."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from pagellm.bench.serving import load_bench_tokenizer, sample_requests
from pagellm.errors import ClientError
from pagellm.tuning.slo import parse_slos
from pagellm.tuning.trial_runner import Workload


def add_workload_args(parser: argparse.ArgumentParser) -> None:
    data = parser.add_argument_group("workload")
    data.add_argument("--dataset-name", choices=("random", "sharegpt", "jsonl"),
                      default="random")
    data.add_argument("--dataset-path", default=None,
                      help="ShareGPT json file, or JSONL file of {\"prompt\": ..., "
                           "\"output_len\": N} lines")
    data.add_argument("--num-prompts", type=int, default=200, help="requests per run")
    data.add_argument("--random-input-len", type=int, default=512)
    data.add_argument("--random-output-len", type=int, default=128)
    data.add_argument("--random-range-ratio", type=float, default=0.0,
                      help="lengths uniform in [len*(1-r), len*(1+r)], r in [0, 1)")
    data.add_argument("--random-prefix-len", type=int, default=0,
                      help="tokens of one shared prefix before every random prompt")
    data.add_argument("--sharegpt-output-len", type=int, default=None)
    data.add_argument("--jsonl-output-len", type=int, default=None)
    data.add_argument("--tokenizer", default=None,
                      help="tokenizer for the prompts (default: the model's)")
    data.add_argument("--request-rate", type=float, nargs="+", default=[math.inf],
                      metavar="RATE", help="requests/s; several values make a sweep, run "
                      "ascending until one breaks an SLO (default inf: all at once)")
    data.add_argument("--burstiness", type=float, default=1.0)
    data.add_argument("--max-concurrency", type=int, default=None)
    data.add_argument("--seed", type=int, default=0)
    data.add_argument("--slo", action="append", default=[], metavar="METRIC_STAT_ms=BOUND",
                      help="an SLO, repeatable: ttft_p99_ms=500 tpot_p99_ms=50 (metrics ttft, "
                           "tpot, e2el; stats pNN or mean)")


def build_workload(args: argparse.Namespace, tokenizer_name: str) -> Workload:
    """The Workload of the flags; ``tokenizer_name`` (a model directory or .gguf: the model's
    resolved path unless --tokenizer is given) encodes dataset prompts and bounds random
    token ids. ClientError for a bad flag."""
    if args.num_prompts < 1:
        raise ClientError(f"--num-prompts must be >= 1, got {args.num_prompts}",
                          param="num_prompts")
    if not all(rate > 0 for rate in args.request_rate):
        raise ClientError(f"--request-rate values must be > 0 (or inf), got "
                          f"{args.request_rate}", param="request_rate")
    if args.max_concurrency is not None and args.max_concurrency < 1:
        raise ClientError("--max-concurrency must be >= 1", param="max_concurrency")
    if args.dataset_name != "random" and args.dataset_path is None:
        raise ClientError(f"--dataset-name {args.dataset_name} needs --dataset-path",
                          param="dataset_path")
    sampling = argparse.Namespace(**vars(args))
    sampling.tokenizer, sampling.model = tokenizer_name, None
    tokenizer = load_bench_tokenizer(sampling)
    samples = sample_requests(sampling, tokenizer)
    return Workload(samples, sorted(args.request_rate), args.burstiness, args.max_concurrency,
                    args.seed)


def slos_from_args(args: argparse.Namespace):
    return parse_slos(args.slo)


def workload_description(args: argparse.Namespace) -> dict:
    """The workload flags as plain data (stored with a study, to refuse resuming it on a
    different workload, and printed in reports)."""
    keys = ("dataset_name", "dataset_path", "num_prompts", "random_input_len",
            "random_output_len", "random_range_ratio", "random_prefix_len",
            "sharegpt_output_len", "jsonl_output_len", "burstiness", "max_concurrency", "seed")
    description = {key: getattr(args, key) for key in keys}
    if description["dataset_path"] is not None:
        description["dataset_path"] = str(Path(description["dataset_path"]).resolve())
    description["request_rate"] = [rate if math.isfinite(rate) else "inf"
                                   for rate in sorted(args.request_rate)]
    description["slo"] = sorted(args.slo)
    return description
