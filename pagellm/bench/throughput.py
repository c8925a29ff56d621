"""``pagellm bench throughput``: offline throughput, as vLLM's ``vllm bench throughput``.

All requests go to one ``LLM.generate`` call; the wall time of that call gives requests/s,
total (prompt + output) tokens/s and output tokens/s. Sampling follows vLLM: temperature 1,
top_p 1, ``ignore_eos`` so every request generates exactly its output length.

    pagellm bench throughput --model qwen3-0.6b --dtype bfloat16 --num-prompts 256 \\
        --random-input-len-range 100 1024 --random-output-len-range 100 1024 --max-model-len 4096
"""

from __future__ import annotations

import argparse
import time

from pagellm.bench.common import bench_engine_kwargs, vocabulary, write_json
from pagellm.bench.datasets import (SampleRequest, ratio_range, sample_random_requests,
                                    sample_sharegpt_requests)
from pagellm.config.cli_args import add_engine_args
from pagellm.errors import ClientError

DEFAULT_RANDOM_INPUT_LEN = 1024
DEFAULT_RANDOM_OUTPUT_LEN = 128


def add_cli_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset-name", choices=("random", "sharegpt"), default=None,
                        help="random token ids, or ShareGPT conversations from --dataset-path "
                             "(default: sharegpt when --dataset-path is given, else random)")
    parser.add_argument("--dataset-path", default=None,
                        help="ShareGPT json: a list of {\"conversations\": [{\"from\": \"human\", "
                             "\"value\": ...}, {\"from\": \"gpt\", \"value\": ...}]}")
    parser.add_argument("--input-len", type=int, default=None,
                        help=f"random: prompt tokens (default {DEFAULT_RANDOM_INPUT_LEN})")
    parser.add_argument("--output-len", type=int, default=None,
                        help=f"output tokens per request (random default "
                             f"{DEFAULT_RANDOM_OUTPUT_LEN}; sharegpt default: the reply's length)")
    parser.add_argument("--prefix-len", type=int, default=0,
                        help="random: tokens of one shared prefix put before every prompt")
    parser.add_argument("--random-range-ratio", type=float, default=0.0,
                        help="random: lengths uniform in [len*(1-r), len*(1+r)], r in [0, 1)")
    parser.add_argument("--random-input-len-range", type=int, nargs=2, default=None,
                        metavar=("MIN", "MAX"),
                        help="random: prompt lengths uniform in [MIN, MAX] (overrides "
                             "--input-len and --random-range-ratio)")
    parser.add_argument("--random-output-len-range", type=int, nargs=2, default=None,
                        metavar=("MIN", "MAX"),
                        help="random: output lengths uniform in [MIN, MAX] (overrides "
                             "--output-len and --random-range-ratio)")
    parser.add_argument("--num-prompts", type=int, default=1000, help="number of requests")
    parser.add_argument("--n", type=int, default=1, help="completions per prompt")
    parser.add_argument("--disable-detokenize", action="store_true",
                        help="do not detokenize outputs (always off without a tokenizer)")
    parser.add_argument("--disable-tqdm", action="store_true", help="no progress bar")
    parser.add_argument("--output-json", default=None, help="write the results to this file")
    add_engine_args(parser)


def main(args: argparse.Namespace) -> dict:
    """Run the benchmark, print vLLM's summary lines, write --output-json; returns the
    results dict. Raises ClientError for bad options."""
    from pagellm import LLM, SamplingParams

    for name in ("num_prompts", "n"):
        if getattr(args, name) < 1:
            raise ClientError(f"{name} must be >= 1, got {getattr(args, name)}", param=name)
    dataset_name = args.dataset_name or ("sharegpt" if args.dataset_path else "random")
    if dataset_name == "sharegpt" and args.dataset_path is None:
        raise ClientError("--dataset-name sharegpt needs --dataset-path", param="dataset_path")
    length_ranges = random_length_ranges(args)   # checked before the engine starts
    engine_kwargs = bench_engine_kwargs(args)
    llm = LLM(**engine_kwargs)
    if dataset_name == "sharegpt":
        requests = sample_sharegpt(args, llm)
    else:
        vocab_size, special_ids = vocabulary(llm, engine_kwargs["model"])
        requests = sample_random_requests(args.num_prompts, *length_ranges, vocab_size,
                                          _seed(args), args.prefix_len, special_ids)
    detokenize = not (args.disable_detokenize or engine_kwargs.get("skip_tokenizer_init"))
    params = [SamplingParams(n=args.n, temperature=1.0, top_p=1.0, ignore_eos=True,
                             max_tokens=request.expected_output_len, detokenize=detokenize)
              for request in requests]
    prompts = [request.prompt_token_ids for request in requests]
    start = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=not args.disable_tqdm)
    elapsed_time = time.perf_counter() - start
    results = summarize(outputs, elapsed_time)
    print(f"Throughput: {results['requests_per_second']:.2f} requests/s, "
          f"{results['tokens_per_second']:.2f} total tokens/s, "
          f"{results['output_tokens_per_second']:.2f} output tokens/s")
    print(f"Total num prompt tokens:  {results['total_num_prompt_tokens']}")
    print(f"Total num output tokens:  {results['total_num_output_tokens']}")
    if args.output_json:
        write_json(args.output_json, results)
    return results


def random_length_ranges(args: argparse.Namespace) -> tuple[tuple[int, int], tuple[int, int]]:
    """(input, output) length ranges of the random dataset from the length options."""
    input_len = args.input_len or DEFAULT_RANDOM_INPUT_LEN
    output_len = args.output_len or DEFAULT_RANDOM_OUTPUT_LEN
    input_range = (args.random_input_len_range
                   or ratio_range(input_len, args.random_range_ratio, "input_len"))
    output_range = (args.random_output_len_range
                    or ratio_range(output_len, args.random_range_ratio, "output_len"))
    return tuple(input_range), tuple(output_range)


def sample_sharegpt(args: argparse.Namespace, llm) -> list[SampleRequest]:
    tokenizer = llm.get_tokenizer()
    if tokenizer is None:
        raise ClientError("--dataset-name sharegpt needs a tokenizer; this model has none "
                          "(pass --tokenizer)", param="dataset_path")
    return sample_sharegpt_requests(args.dataset_path, args.num_prompts, tokenizer.encode,
                                    _seed(args), args.output_len)


def _seed(args: argparse.Namespace) -> int:
    return 0 if args.seed is None else args.seed


def summarize(outputs, elapsed_time: float) -> dict:
    """vLLM's throughput JSON (elapsed_time, num_requests, total_num_tokens, requests_per_second,
    tokens_per_second) plus output_tokens_per_second and the prompt/output token totals."""
    prompt_tokens = sum(len(output.prompt_token_ids) for output in outputs)
    output_tokens = sum(len(completion.token_ids) for output in outputs
                        for completion in output.outputs)
    total_tokens = prompt_tokens + output_tokens
    return {
        "elapsed_time": elapsed_time,
        "num_requests": len(outputs),
        "total_num_tokens": total_tokens,
        "total_num_prompt_tokens": prompt_tokens,
        "total_num_output_tokens": output_tokens,
        "requests_per_second": len(outputs) / elapsed_time,
        "tokens_per_second": total_tokens / elapsed_time,
        "output_tokens_per_second": output_tokens / elapsed_time,
    }
