"""Prefill step time vs token budget (``max_num_batched_tokens``) on CPU, default model.

One request with a ``--prompt-len`` token prompt and max_tokens=1 runs alone; every engine step
is timed. With chunked prefill the prompt takes ceil(prompt_len / budget) steps; the slowest
step is how long a running stream would stall behind that prompt. Used to pick the CPU
default of ``SchedulerConfig.max_num_batched_tokens`` (see benchmarks/RESULTS.md).

    python benchmarks/cpu_chunk_size.py --prompt-len 0 --budgets 128 256 512 1024 --repeats 3
"""

from __future__ import annotations

import argparse
import random
import time

from pagellm.engine.llm_engine import LLMEngine
from pagellm.sampling_params import SamplingParams


def time_steps(engine: LLMEngine, prompt_len: int, seed: int) -> list[float]:
    """Seconds of each step that serves one ``prompt_len``-token prompt (1 output token)."""
    rng = random.Random(seed)
    prompt = [rng.randrange(100, 40000) for _ in range(prompt_len)]
    engine.add_request(prompt, SamplingParams(max_tokens=1, ignore_eos=True,
                                              temperature=0.0))
    times = []
    while engine.has_unfinished_requests():
        start = time.perf_counter()
        engine.step()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="default")
    parser.add_argument("--prompt-len", type=int, default=4096,
                        help="0: only time single steps of `budget` prompt tokens")
    parser.add_argument("--budgets", type=int, nargs="+", default=[256, 512, 1024, 2048])
    parser.add_argument("--repeats", type=int, default=3,
                        help="single-step runs per budget; the fastest is reported (a shared "
                             "CPU makes the others slower, never faster)")
    args = parser.parse_args()
    for budget in args.budgets:
        engine = LLMEngine.from_engine_args(model=args.model, max_num_batched_tokens=budget,
                                            enable_prefix_caching=False, device="cpu")
        time_steps(engine, 64, seed=1)          # warm-up
        single = min(time_steps(engine, budget, seed=2 + i)[0] for i in range(args.repeats))
        line = (f"budget {budget:5d}: one step of {budget} prompt tokens {single:.3f} s "
                f"(best of {args.repeats}, {budget / single:.0f} tok/s)")
        if args.prompt_len:
            times = time_steps(engine, args.prompt_len, seed=0)
            line += (f"; {args.prompt_len}-token prompt: {len(times)} steps, max "
                     f"{max(times):.3f} s, total {sum(times):.2f} s")
        print(line, flush=True)
        engine.engine_core.shutdown()


if __name__ == "__main__":
    main()
