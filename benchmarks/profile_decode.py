"""Where a decode step's time goes (W1 shape): wall time per step vs GPU kernel time, on
one GPU or on every rank of a tensor- or pipeline-parallel engine.

PYTHONPATH=. python benchmarks/profile_decode.py --model llama-3.1-8b --batch-size 1 [-tp 2]
PYTHONPATH=. python benchmarks/profile_decode.py --batch-size 64 --input-len 1024 --output-len 32 \
    --quantization fp8        # a W3-like prefill-heavy run (steps = output tokens)
Prints rank 0's top CUDA kernels (each rank's with --all-ranks) and the step breakdown: GPU
busy, and the rest (launch gaps and host work: scheduling, input preparation, sampling,
output processing). The profiler runs inside the worker processes (LLM.start_profile).
"""

from __future__ import annotations

import argparse
import re
import time

import torch

from pagellm import LLM, SamplingParams
from pagellm.bench.common import resolve_bench_model


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="llama-3.1-8b")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--enforce-eager", action="store_true")
    parser.add_argument("-tp", "--tensor-parallel-size", type=int, default=1)
    parser.add_argument("-pp", "--pipeline-parallel-size", type=int, default=1)
    parser.add_argument("--all-ranks", action="store_true")
    parser.add_argument("--quantization", default=None)
    args = parser.parse_args()
    llm = LLM(resolve_bench_model(args.model), load_format="dummy", skip_tokenizer_init=True,
              max_model_len=2048, enforce_eager=args.enforce_eager,
              tensor_parallel_size=args.tensor_parallel_size,
              pipeline_parallel_size=args.pipeline_parallel_size,
              quantization=args.quantization)
    prompts = [[100 + i] * args.input_len for i in range(args.batch_size)]
    params = SamplingParams(temperature=1.0, max_tokens=args.output_len, ignore_eos=True,
                            detokenize=False)
    llm.generate(prompts, params, use_tqdm=False)
    llm.start_profile()
    start = time.perf_counter()
    llm.generate(prompts, params, use_tqdm=False)
    wall = time.perf_counter() - start
    summaries = llm.stop_profile()
    steps = args.output_len
    for rank, summary in enumerate(summaries if args.all_ranks else summaries[:1]):
        print(f"--- rank {rank} ---\n{summary}")
    device_ms = float(re.search(r"device time total: ([\d.]+) ms", summaries[0]).group(1))
    print(f"steps={steps} wall/step={wall / steps * 1e3:.2f} ms (profiled)  "
          f"gpu busy/step={device_ms / steps:.2f} ms  "
          f"gap/step={(wall * 1e3 - device_ms) / steps:.2f} ms")


if __name__ == "__main__":
    main()
