"""The cost of verifying k drafts relative to one decode step (the ``draft_token_cost`` of
adaptive speculation, ``pagellm.config.spec_adaptive``): the default model at batch 1 on this
CPU, engine steps with k forced drafts (all rejected: the verify costs the same) against plain
decode steps, the fastest of ``--steps`` each (the CPU is shared: the minimum is the least
disturbed). c = (t(k) - t(0)) / (k t(0)).

    PYTHONPATH=. python benchmarks/spec_verify_cost.py --k 4 --steps 20
"""

from __future__ import annotations

import argparse
import time

from pagellm import LLM, SamplingParams


def step_times(llm: LLM, num_drafts: int, steps: int) -> list[float]:
    """Seconds per engine step of one running request verifying ``num_drafts`` drafts."""
    engine = llm.llm_engine
    prompt = {"prompt_token_ids": list(range(1000, 1064))}
    engine.add_request(prompt, SamplingParams(temperature=0.0, max_tokens=steps + 2,
                                              ignore_eos=True))
    engine.step()                                               # prefill
    (request,) = engine.engine_core.scheduler.running
    times = []
    for _ in range(steps):
        # drafts nobody would accept (token 0): the verify runs 1 + num_drafts positions
        request.spec_token_ids, request.spec_base = [0] * num_drafts, request.num_tokens
        start = time.perf_counter()
        engine.step()
        times.append(time.perf_counter() - start)
    while engine.has_unfinished_requests():
        engine.step()
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    llm = LLM("default", kv_cache_memory_bytes=64 * 2**20, max_model_len=512, dtype="float32",
              speculative_config={"method": "ngram", "num_speculative_tokens": args.k,
                                  "adaptive": False})
    step_times(llm, 0, 3)                                       # warm-up
    base = min(step_times(llm, 0, args.steps))
    for k in range(1, args.k + 1):
        verify = min(step_times(llm, k, args.steps))
        print(f"k={k}: decode step {base * 1e3:.1f} ms, verify of 1+{k} {verify * 1e3:.1f} ms, "
              f"draft_token_cost {(verify - base) / (k * base):.3f}")


if __name__ == "__main__":
    main()
