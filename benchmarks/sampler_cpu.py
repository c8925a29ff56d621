"""Microbenchmark: one sampler call on [64, 49152] float32 logits (W6b's batch, the default
model's vocabulary) for greedy, temperature 1, top-p, top-k + top-p and min-p.

    PYTHONPATH=. python benchmarks/sampler_cpu.py [--rows 64] [--vocab 49152] [--iters 10]

Prints one line per case: median milliseconds per call. Runs on whatever ``pagellm`` is on
PYTHONPATH, so the same script measures an older checkout (before/after comparisons).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from pagellm.layers.sampler import Sampler, SamplingMetadata


def metadata(rows: int, temperature: float, top_k: int = 0, top_p: float = 1.0,
             min_p: float = 0.0) -> SamplingMetadata:
    """The metadata the model runner builds when every row has the same parameters."""
    fields = dict(
        temperature=torch.full((rows,), temperature), all_greedy=temperature == 0.0,
        all_random=temperature != 0.0,
        top_k=torch.full((rows,), top_k, dtype=torch.int64) if top_k else None,
        top_p=torch.full((rows,), top_p) if top_p < 1.0 else None,
        min_p=torch.full((rows,), min_p) if min_p else None, generators={},
        presence_penalties=None, frequency_penalties=None, repetition_penalties=None,
        prompt_token_ids=None, output_token_ids=[[] for _ in range(rows)],
        logit_bias=[None] * rows, min_tokens_mask=[], max_num_logprobs=None)
    if "max_top_k" in SamplingMetadata.__dataclass_fields__:  # absent before the no-sort sampler
        fields["max_top_k"] = top_k
    return SamplingMetadata(**fields)


CASES = {
    "greedy": dict(temperature=0.0),
    "temperature 1": dict(temperature=1.0),
    "temperature 1, top_p 0.9": dict(temperature=1.0, top_p=0.9),
    "temperature 1, top_k 50, top_p 0.9": dict(temperature=1.0, top_k=50, top_p=0.9),
    "temperature 1, top_k 50": dict(temperature=1.0, top_k=50),
    "temperature 1, min_p 0.05": dict(temperature=1.0, min_p=0.05),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--vocab", type=int, default=49152)
    parser.add_argument("--iters", type=int, default=10)
    args = parser.parse_args()
    generator = torch.Generator().manual_seed(0)
    # Logits shaped like a small LM's at temperature 1: a few peaked rows, many flat ones.
    logits = torch.randn((args.rows, args.vocab), generator=generator) * 2.5  # [B, V]
    sampler = Sampler()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"[{args.rows}, {args.vocab}] float32")
    for name, params in CASES.items():
        meta = metadata(args.rows, **params)
        sampler(logits.clone(), meta)  # warm-up
        times = []
        for _ in range(args.iters):
            batch = logits.clone()
            start = time.perf_counter()
            sampler(batch, meta)
            times.append((time.perf_counter() - start) * 1e3)
        print(f"{name:38s} {statistics.median(times):8.2f} ms")


if __name__ == "__main__":
    main()
