"""``pagellm bench latency``: end-to-end latency of one batch, as vLLM's ``vllm bench latency``.

Each iteration generates ``--batch-size`` random prompts of ``--input-len`` tokens to exactly
``--output-len`` tokens (``ignore_eos``) in one ``LLM.generate`` call. Prints vLLM's lines
(average and 10/25/50/75/90/99% percentile latency), then what the request metrics add: time
to first token, time per output token, and decode tokens/s (the BENCHMARKS.md W1 metric at
batch 1).

    pagellm bench latency --model llama-3.1-8b --dtype bfloat16 --batch-size 1 \\
        --input-len 128 --output-len 256
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from tqdm.auto import tqdm

from pagellm.bench.common import bench_engine_kwargs, vocabulary, write_json
from pagellm.bench.datasets import sample_random_requests
from pagellm.config.cli_args import add_engine_args
from pagellm.errors import ClientError

PERCENTAGES = (10, 25, 50, 75, 90, 99)


def add_cli_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input-len", type=int, default=32, help="prompt tokens")
    parser.add_argument("--output-len", type=int, default=128, help="output tokens")
    parser.add_argument("--batch-size", type=int, default=8, help="prompts per iteration")
    parser.add_argument("--n", type=int, default=1, help="completions per prompt")
    parser.add_argument("--num-iters-warmup", type=int, default=10,
                        help="iterations run before measuring")
    parser.add_argument("--num-iters", type=int, default=30, help="iterations measured")
    parser.add_argument("--disable-detokenize", action="store_true",
                        help="do not detokenize outputs (always off without a tokenizer)")
    parser.add_argument("--output-json", default=None, help="write the results to this file")
    add_engine_args(parser)


def main(args: argparse.Namespace) -> dict:
    """Run the benchmark, print the latency summary, write --output-json; returns the
    results dict."""
    from pagellm import LLM, SamplingParams

    for name in ("input_len", "output_len", "batch_size", "num_iters"):
        if getattr(args, name) < 1:
            raise ClientError(f"{name} must be >= 1, got {getattr(args, name)}", param=name)
    engine_kwargs = bench_engine_kwargs(args)
    llm = LLM(**engine_kwargs)
    vocab_size, special_ids = vocabulary(llm, engine_kwargs["model"])
    seed = 0 if args.seed is None else args.seed
    requests = sample_random_requests(args.batch_size, (args.input_len, args.input_len),
                                      (args.output_len, args.output_len), vocab_size, seed,
                                      excluded_token_ids=special_ids)
    prompts = [request.prompt_token_ids for request in requests]
    detokenize = not (args.disable_detokenize or engine_kwargs.get("skip_tokenizer_init"))
    params = SamplingParams(n=args.n, temperature=1.0, top_p=1.0, ignore_eos=True,
                            max_tokens=args.output_len, detokenize=detokenize)

    def run_once() -> tuple[float, list]:
        start = time.perf_counter()
        outputs = llm.generate(prompts, params, use_tqdm=False)
        return time.perf_counter() - start, outputs

    print("Warming up...")
    for _ in tqdm(range(args.num_iters_warmup), desc="Warmup iterations"):
        run_once()
    runs = [run_once() for _ in tqdm(range(args.num_iters), desc="Profiling iterations")]
    results = summarize([latency for latency, _ in runs], [outputs for _, outputs in runs],
                        args.batch_size * args.n * args.output_len)
    print_results(results)
    if args.output_json:
        write_json(args.output_json, results)
    return results


def summarize(latencies: list[float], runs_outputs: list[list], output_tokens: int) -> dict:
    """vLLM's latency JSON (avg_latency, latencies, percentiles) plus, from the request
    metrics, mean TTFT and TPOT (seconds), decode tokens/s (all sequences of the batch, from
    the TPOT) and output tokens/s (``output_tokens`` per iteration over the mean latency)."""
    latencies_array = np.array(latencies)
    ttfts, tpots, sequences = [], [], 0
    for outputs in runs_outputs:
        for output in outputs:
            metrics = output.metrics
            ttfts.append(metrics.first_token_time - metrics.arrival_time)
            for completion in output.outputs:
                if len(completion.token_ids) > 1:
                    tpots.append((metrics.last_token_time - metrics.first_token_time)
                                 / (len(completion.token_ids) - 1))
        sequences = sum(len(output.outputs) for output in outputs)
    avg_tpot = float(np.mean(tpots)) if tpots else None
    return {
        "avg_latency": float(np.mean(latencies_array)),
        "latencies": latencies_array.tolist(),
        "percentiles": dict(zip(PERCENTAGES,
                                np.percentile(latencies_array, PERCENTAGES).tolist())),
        "avg_ttft": float(np.mean(ttfts)),
        "avg_tpot": avg_tpot,
        "decode_tokens_per_second": sequences / avg_tpot if avg_tpot else None,
        "output_tokens_per_second": output_tokens / float(np.mean(latencies_array)),
    }


def print_results(results: dict) -> None:
    print(f"Avg latency: {results['avg_latency']} seconds")
    for percentage, value in results["percentiles"].items():
        print(f"{percentage}% percentile latency: {value} seconds")
    print(f"Avg time to first token: {results['avg_ttft']:.4f} seconds")
    if results["avg_tpot"] is not None:
        print(f"Avg time per output token: {results['avg_tpot'] * 1000:.2f} ms; decode "
              f"{results['decode_tokens_per_second']:.2f} tokens/s")
    print(f"Output tokens/s (including prefill): {results['output_tokens_per_second']:.2f}")
