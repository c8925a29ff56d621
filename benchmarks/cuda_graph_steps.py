"""Eager vs CUDA-graph engine step time for the steps the mixed graphs cover (issues 12 and 14):
(a) a speculative verify step (1 + k rows per request, k drafts that are all rejected: the
verify costs the same) at each ``--batch-size``, against a plain decode step; (b) a mixed step
of ``--decodes`` decoding requests plus one ``--chunk``-token prompt. One engine; "eager" runs
the same steps with the model runner's graphs detached (``runner.cuda_graphs = None``), "graph"
with them attached, each the fastest of ``--steps``; the replay counters prove which graphs ran.
Async scheduling off so each step is timed whole.

On one H200, Llama-3.1-8B shapes (random weights), about a minute:
    PYTHONPATH=. python benchmarks/cuda_graph_steps.py --model llama-3.1-8b --load-format dummy \
        --dtype bfloat16 --batch-size 1 64 --k 4 --decodes 32 --chunk 128 --steps 15
On this CPU only a smoke run is possible (no graphs: "graph" = eager):
    PYTHONPATH=. python benchmarks/cuda_graph_steps.py --batch-size 1 --decodes 2 --chunk 16 --steps 2
"""

from __future__ import annotations

import argparse
import sys
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from spec_verify_cost import bench_llm, step_times  # noqa: E402

from pagellm import LLM  # noqa: E402


def timed(llm: LLM, graphs, use_graphs: bool, measure) -> float:
    """The fastest step of ``measure()`` with the graphs attached or detached (ms)."""
    runner = llm.llm_engine.engine_core.executor.worker.runner
    runner.cuda_graphs = graphs if use_graphs else None
    try:
        measure()                                                       # warm-up
        return min(measure()) * 1e3
    finally:
        runner.cuda_graphs = graphs


def replays(graphs) -> tuple[int, int, int]:
    if graphs is None:
        return 0, 0, 0
    return (sum(graphs.num_replays.values()), sum(graphs.num_mixed_replays.values()),
            sum(graphs.num_uniform_replays.values()))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="default")
    parser.add_argument("--load-format", default="auto")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--batch-size", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--decodes", type=int, default=32)
    parser.add_argument("--chunk", type=int, default=128)
    parser.add_argument("--steps", type=int, default=15)
    args = parser.parse_args()
    max_seqs = max(args.batch_size + [args.decodes + 1])
    start = time.perf_counter()
    llm = bench_llm(args, max_num_seqs=max_seqs, enable_prefix_caching=False,
                    max_num_batched_tokens=max(512, max_seqs * (1 + args.k)))
    graphs = llm.llm_engine.engine_core.executor.worker.runner.cuda_graphs
    print(f"engine up in {time.perf_counter() - start:.1f} s (graph capture logged above)")
    cases = []
    for batch in args.batch_size:
        cases += [(f"decode, batch {batch}", partial(step_times, llm, 0, args.steps, batch)),
                  (f"verify 1+{args.k}, batch {batch}",
                   partial(step_times, llm, args.k, args.steps, batch))]
    cases.append((f"{args.decodes} decodes + {args.chunk}-token prompt",
                  partial(step_times, llm, 0, args.steps, args.decodes, args.chunk)))
    print("| step | eager ms | graph ms | eager / graph | replays so far (decode, mixed, verify) |")
    print("|---|---|---|---|---|")
    for name, measure in cases:
        eager, graph = timed(llm, graphs, False, measure), timed(llm, graphs, True, measure)
        print(f"| {name} | {eager:.2f} | {graph:.2f} | {eager / graph:.2f}x | {replays(graphs)} |",
              flush=True)

if __name__ == "__main__":
    main()
