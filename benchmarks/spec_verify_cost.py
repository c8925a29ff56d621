"""The cost of verifying k drafts relative to one decode step (the ``draft_token_cost`` of
adaptive speculation, ``pagellm.config.spec_adaptive``): the default model at batch 1 on this
CPU, engine steps with k forced drafts (all rejected: the verify costs the same) against plain
decode steps, the fastest of ``--steps`` each (the CPU is shared: the minimum is the least
disturbed). c = (t(k) - t(0)) / (k t(0)).

    PYTHONPATH=. python benchmarks/spec_verify_cost.py --k 4 --steps 20
On one H200, Llama-3.1-8B shapes (random weights), batch 1 and 64 (issue 14's GPU measurement;
async scheduling off so each step is timed whole; decode steps replay the decode CUDA graphs,
verify steps of 1 + k tokens per request the mixed graphs; ``--cudagraph-mode
FULL_DECODE_ONLY`` runs the verify steps eager, as in session 6; eager and graph side by side:
``benchmarks/cuda_graph_steps.py``):
    PYTHONPATH=. python benchmarks/spec_verify_cost.py --model llama-3.1-8b --load-format dummy \
        --dtype bfloat16 --batch-size 1 64 --k 4 --steps 20
"""

from __future__ import annotations

import argparse
import time

from pagellm import LLM, SamplingParams


def step_times(llm: LLM, num_drafts: int, steps: int, batch_size: int = 1,
               new_prompt_len: int = 0) -> list[float]:
    """Seconds per engine step of ``batch_size`` running requests each verifying
    ``num_drafts`` drafts; with ``new_prompt_len`` > 0 each step also prefills a new prompt of
    that many tokens (max_tokens 1: it leaves after that step), a mixed step."""
    engine = llm.llm_engine
    for index in range(batch_size):
        prompt = {"prompt_token_ids": [1000 + index] + list(range(1001, 1064))}
        engine.add_request(prompt, SamplingParams(temperature=0.0, max_tokens=steps + 2,
                                                  ignore_eos=True, detokenize=False))
    requests = run_prefills(engine, batch_size)
    times = []
    for step in range(steps):
        # drafts nobody would accept (token 0): the verify runs 1 + num_drafts positions
        for request in requests:
            request.spec_token_ids, request.spec_base = [0] * num_drafts, request.num_tokens
        if new_prompt_len:
            prompt = [3000 + step] + list(range(3001, 3000 + new_prompt_len))
            engine.add_request({"prompt_token_ids": prompt}, SamplingParams(
                temperature=0.0, max_tokens=1, ignore_eos=True, detokenize=False))
        start = time.perf_counter()
        engine.step()
        times.append(time.perf_counter() - start)
    while engine.has_unfinished_requests():
        engine.step()
    return times


def run_prefills(engine, num_requests: int) -> list:
    """Step until ``num_requests`` requests run with their prompts computed; those requests."""
    scheduler = engine.engine_core.scheduler
    while len(scheduler.running) < num_requests or any(
            r.num_computed_tokens < r.num_prompt_tokens for r in scheduler.running):
        engine.step()
    return list(scheduler.running)


def bench_llm(args, **engine) -> LLM:
    """The engine of ``args.model`` (``--load-format``, ``--dtype``) with n-gram speculation of
    ``args.k`` drafts, async scheduling off, max_model_len 512, and ``engine``'s arguments."""
    from pagellm.bench.common import resolve_bench_model

    engine = dict(max_model_len=512, dtype=args.dtype, load_format=args.load_format,
                  async_scheduling=False, **engine,
                  speculative_config={"method": "ngram", "num_speculative_tokens": args.k,
                                      "adaptive": False})
    if args.model == "default":
        engine.setdefault("kv_cache_memory_bytes", 64 * 2**20)
    else:
        engine["skip_tokenizer_init"] = True
    return LLM(resolve_bench_model(args.model), **engine)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--model", default="default")
    parser.add_argument("--load-format", default="auto")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--batch-size", type=int, nargs="+", default=[1])
    parser.add_argument("--cudagraph-mode", default="FULL_AND_PIECEWISE")
    args = parser.parse_args()
    llm = bench_llm(args, max_num_seqs=max(args.batch_size),
                    compilation_config={"cudagraph_mode": args.cudagraph_mode})
    for batch_size in args.batch_size:
        step_times(llm, 0, 3, batch_size)                       # warm-up
        base = min(step_times(llm, 0, args.steps, batch_size))
        for k in range(1, args.k + 1):
            verify = min(step_times(llm, k, args.steps, batch_size))
            print(f"batch {batch_size} k={k}: decode step {base * 1e3:.2f} ms, verify of 1+{k} "
                  f"{verify * 1e3:.2f} ms ({verify / base:.2f}x), "
                  f"draft_token_cost {(verify - base) / (k * base):.3f}", flush=True)


if __name__ == "__main__":
    main()
