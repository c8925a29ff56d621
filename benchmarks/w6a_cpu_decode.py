"""W6(a) on CPU: batch-1 decode tokens/s of the default model (128-token prompt), GGUF kept
quantized vs dequantized at load. Best of ``--repeats`` runs (the CPU is shared: take the best).

    PYTHONPATH=. python benchmarks/w6a_cpu_decode.py --repeats 3                    # quantized
    PAGELLM_GGUF_DEQUANTIZE=1 PYTHONPATH=. python benchmarks/w6a_cpu_decode.py --repeats 3

Decode time = time of a generate with N output tokens minus that of one with 1 (the prefill).
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from pagellm import LLM, SamplingParams


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args()
    torch.set_num_threads(2)
    llm = LLM("default", kv_cache_memory_bytes=64 * 2**20, max_model_len=512, dtype=args.dtype,
              enable_prefix_caching=False)
    prompt = list(range(1000, 1128))                                     # 128 tokens
    run = lambda n: llm.generate([prompt], SamplingParams(  # noqa: E731
        temperature=0.0, max_tokens=n, ignore_eos=True), use_tqdm=False)
    run(4)                                                               # warm-up
    best = 0.0
    for _ in range(args.repeats):
        start = time.perf_counter()
        run(1)
        prefill = time.perf_counter() - start
        start = time.perf_counter()
        run(args.output_len)
        total = time.perf_counter() - start
        best = max(best, (args.output_len - 1) / (total - prefill))
    mode = "dequantized" if os.environ.get("PAGELLM_GGUF_DEQUANTIZE") == "1" else "kept quantized"
    print(f"default model, GGUF {mode}: best batch-1 decode {best:.1f} tokens/s")


if __name__ == "__main__":
    main()
