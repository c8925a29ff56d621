"""Issue 14's GPU measurement: W1 (Llama-3.1-8B shapes, random weights, batch 1) with n-gram
speculation on a repetitive prompt, against no speculation, in one process.

Random weights make acceptance meaningless as a claim about real models (the issue says so),
so besides tokens/s the table reports the per-step cost: wall ms per engine step with and
without drafts, tokens per step, and the CUDA-graph replays the steps used (decode graphs and,
where the runner has them, mixed/verify graphs), read from the model runner.

    source benchmarks/gpu_setup.sh; PYTHONPATH=. python benchmarks/w1_ngram_gpu.py \
        --model llama-3.1-8b --max-tokens 256 --k 4
"""

from __future__ import annotations

import argparse
import time

from pagellm import LLM, SamplingParams
from pagellm.bench.common import resolve_bench_model

PATTERN = list(range(1000, 1016))
"""16 token ids repeated 8 times: a 128-token prompt whose every 2..4-gram recurs."""


def graph_replays(llm: LLM) -> dict:
    """{kind: replays} of the in-process model runner's CUDA graphs (empty when eager)."""
    runner = llm.llm_engine.engine_core.executor.worker.runner
    graphs = getattr(runner, "cuda_graphs", None)
    if graphs is None:
        return {}
    counts = {"decode": sum(graphs.num_replays.values())}
    for name in ("num_mixed_replays", "num_verify_replays"):
        value = getattr(graphs, name, None)
        if value is not None:
            counts[name.removeprefix("num_").removesuffix("_replays")] = (
                sum(value.values()) if isinstance(value, dict) else value)
    return counts


def run(llm: LLM, max_tokens: int, repeats: int) -> tuple[float, int, int, dict]:
    """Best-of-``repeats`` decode tok/s of one greedy request; (tok/s, tokens, engine steps,
    graph replays during the best run)."""
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True,
                            detokenize=False)
    prompt = {"prompt_token_ids": PATTERN * 8}
    best = (0.0, 0, 0, {})
    for _ in range(repeats):
        core = llm.llm_engine.engine_core
        steps_before, replays_before = core.num_steps, graph_replays(llm)
        start = time.perf_counter()
        out = llm.generate([prompt], params, use_tqdm=False)[0]
        elapsed = time.perf_counter() - start
        tokens = len(out.outputs[0].token_ids)
        replays = {kind: count - replays_before.get(kind, 0)
                   for kind, count in graph_replays(llm).items()}
        if tokens / elapsed > best[0]:
            best = (tokens / elapsed, tokens, core.num_steps - steps_before, replays)
    return best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="llama-3.1-8b")
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    common = dict(load_format="dummy", dtype="bfloat16", max_model_len=1024,
                  skip_tokenizer_init=True, gpu_memory_utilization=0.45)
    rows = []
    for name, extra in (("no spec", {}), (f"n-gram k={args.k}", {"speculative_config": {
            "method": "ngram", "num_speculative_tokens": args.k, "prompt_lookup_min": 2,
            "prompt_lookup_max": 4, "adaptive": False}})):
        llm = LLM(resolve_bench_model(args.model), **common, **extra)
        run(llm, 16, 1)                                            # warm-up
        tps, tokens, steps, replays = run(llm, args.max_tokens, args.repeats)
        stats = getattr(llm.llm_engine.engine_core.scheduler, "spec_stats", None)
        acceptance = (f"{stats.num_accepted_tokens / max(stats.num_draft_tokens, 1):.1%}"
                      if stats is not None and stats.num_draft_tokens else "-")
        rows.append((name, tps, tokens, steps, 1e3 * tokens / tps / max(steps, 1),
                     tokens / max(steps, 1), acceptance, replays))
        llm.llm_engine.shutdown()
        del llm
    print(f"\nW1 {args.model} batch 1, repetitive 128-token prompt, {args.max_tokens} tokens:")
    print("run | tok/s | tokens | steps | ms/step | tokens/step | acceptance | graph replays")
    for name, tps, tokens, steps, ms, per_step, acceptance, replays in rows:
        print(f"{name} | {tps:.1f} | {tokens} | {steps} | {ms:.2f} | {per_step:.2f} | "
              f"{acceptance} | {replays}")


if __name__ == "__main__":
    main()
