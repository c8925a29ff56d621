"""Where a W6b decode step's time goes on the CPU: torch.profiler over a few decode steps of
``--num-prompts`` concurrent requests (W6b: 64 × 128 in, temperature 1, top_p 1).

    PYTHONPATH=. python benchmarks/profile_cpu_step.py --num-prompts 64 --steps 4

Prefills every prompt first (not profiled), then profiles ``--steps`` decode steps and prints
the wall time per step and the top operators by self CPU time (ms per step), grouped as
GEMMs/linear, attention, sampler, elementwise and other.
"""

from __future__ import annotations

import argparse
import random
import time

import torch
from torch.profiler import ProfilerActivity, profile

from pagellm.engine.llm_engine import LLMEngine
from pagellm.sampling_params import SamplingParams


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--num-prompts", type=int, default=64)
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    engine = LLMEngine.from_engine_args(model=args.model, device="cpu", enable_prefix_caching=False)
    rng = random.Random(0)
    params = SamplingParams(max_tokens=1000, ignore_eos=True, temperature=args.temperature, top_p=1.0,
                            output_kind="delta")   # every step reports its new tokens
    for _ in range(args.num_prompts):
        engine.add_request([rng.randrange(100, 40000) for _ in range(args.input_len)], params)
    started: set[str] = set()
    while len(started) < args.num_prompts:   # every prompt prefilled and sampling
        started.update(output.request_id for output in engine.step())
    engine.step()
    walls = []
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            start = time.perf_counter()
            engine.step()
            walls.append(time.perf_counter() - start)
    print(f"decode step wall: {[round(w * 1e3) for w in walls]} ms "
          f"({args.num_prompts / (sum(walls) / len(walls)):.0f} output tok/s)")
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top)
    print(table)
    engine.engine_core.shutdown()


if __name__ == "__main__":
    main()
