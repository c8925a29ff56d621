"""All kept-quantized GGUF linears of the default model, one pass at a given row count, as
in one forward (the weights stream from memory as in a real step, unlike a single-layer
microbenchmark that keeps one weight in cache): torch's int4 kernel vs the multi-row kernel
(``pagellm.ops.gguf_cpu``), best of ``--repeats`` passes, ms.

    PYTHONPATH=. python benchmarks/gguf_cpu_step_linears.py --rows 1 4 5 8 9 --repeats 15
"""

from __future__ import annotations

import argparse
import time

import torch

from pagellm import LLM
from pagellm.layers import gguf_linear


def step_linears(llm: LLM) -> list:
    """(layer, method, input size) of every GGUF linear of the worker's model, in order."""
    model = llm.llm_engine.engine_core.executor.worker.model
    return [(m, m.quant_method, m.qweight_0.shape[1] * 2 // (2 if m.quant_method.folded else 1))
            for m in model.modules()
            if isinstance(getattr(m, "quant_method", None), gguf_linear.GGUFLinearMethod)
            and hasattr(m, "qweight_0")]


def best_pass(linears: list, rows: int, repeats: int) -> float:
    inputs = {size: torch.randn(rows, size) for _, _, size in linears}
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for layer, method, size in linears:
            method.apply(layer, inputs[size])
        best = min(best, time.perf_counter() - start)
    return best * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 4, 5, 8, 9])
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    llm = LLM("default", kv_cache_memory_bytes=64 * 2**20, max_model_len=512, dtype="float32")
    linears = step_linears(llm)
    print(f"{len(linears)} GGUF linears; ms per pass (torch int4 / multi-row kernel)")
    for rows in args.rows:
        times = []
        for multi in (5, 0, 5, 0):
            gguf_linear.MULTI_ROW_MIN_ROWS = multi
            times.append(best_pass(linears, rows, args.repeats))
        times = [min(times[1], times[3]), min(times[0], times[2])]
        print(f"  {rows:2d} rows: {times[0]:6.2f} / {times[1]:6.2f}", flush=True)


if __name__ == "__main__":
    main()
