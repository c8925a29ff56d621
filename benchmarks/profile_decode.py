"""Where a decode step's time goes (W1 shape): wall time per step vs GPU kernel time.

PYTHONPATH=. python benchmarks/profile_decode.py --model llama-3.1-8b --batch-size 1
Prints the top CUDA kernels and the step breakdown: GPU busy, and the rest (launch gaps and
host work: scheduling, input preparation, sampling, output processing).
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

from pagellm import LLM, SamplingParams
from pagellm.bench.common import resolve_bench_model


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="llama-3.1-8b")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--enforce-eager", action="store_true")
    args = parser.parse_args()
    llm = LLM(resolve_bench_model(args.model), load_format="dummy", skip_tokenizer_init=True,
              max_model_len=2048, enforce_eager=args.enforce_eager)
    prompts = [[100 + i] * args.input_len for i in range(args.batch_size)]
    params = SamplingParams(temperature=1.0, max_tokens=args.output_len, ignore_eos=True,
                            detokenize=False)
    llm.generate(prompts, params, use_tqdm=False)
    torch.cuda.synchronize()
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        llm.generate(prompts, params, use_tqdm=False)
        torch.cuda.synchronize()
    wall = time.perf_counter() - start
    events = prof.key_averages()
    gpu_us = sum(e.self_device_time_total for e in events if e.device_type.name == "CUDA")
    steps = args.output_len
    print(events.table(sort_by="self_cuda_time_total", row_limit=12, max_name_column_width=60))
    print(f"steps={steps} wall/step={wall / steps * 1e3:.2f} ms (profiled)  "
          f"gpu busy/step={gpu_us / steps / 1e3:.2f} ms  "
          f"gap/step={(wall * 1e6 - gpu_us) / steps / 1e3:.2f} ms")


if __name__ == "__main__":
    main()
