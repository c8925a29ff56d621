"""Cost of one GGUF linear of the default model (SmolLM2-135M) on this CPU by row count: the
candidates for a speculative verify step (2..8 rows) next to a 1-row decode.

    PYTHONPATH=. python benchmarks/gguf_cpu_rows.py --rows 1 2 4 5 8 --repeats 7

Per shape (N x K: qkv 960x576, o 576x576, gate_up 3072x576, down 576x1536) and row count, the
best of ``--repeats`` timings (each the mean of ``--iters`` calls; the machine is shared) in
microseconds of: torch's int4 kernel (today's path), a dense bfloat16 and float32 F.linear,
``_weight_int8pack_mm`` (int8 per-channel, bfloat16 activations), and the kernels named by
``--extra``. Random 4-bit codes; only the timing matters here.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.nn import functional as F

SHAPES = {"qkv": (960, 576), "o": (576, 576), "gate_up": (3072, 576), "down": (576, 1536)}


def _time(fn, iters: int, repeats: int) -> float:
    """Best over ``repeats`` of the mean time of ``iters`` calls, microseconds."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(iters):
            fn()
        best = min(best, (time.perf_counter() - start) / iters)
    return best * 1e6


def candidates(n: int, k: int, extra: list[str]) -> dict:
    """name -> f(x bf16 [M, K]) for a random weight [n, k]."""
    gen = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 16, (n, k), dtype=torch.int32, generator=gen)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 1)
    scales_and_zeros = (torch.rand(k // 32, n, 2, generator=gen) * 0.01).to(torch.bfloat16)
    dense = torch.randn(n, k, generator=gen).to(torch.bfloat16)
    dense32 = dense.float()
    int8 = torch.randint(-128, 128, (n, k), dtype=torch.int8, generator=gen)
    int8_scales = torch.rand(n, generator=gen).to(torch.bfloat16)
    fns = {
        "int4pack": lambda x: torch.ops.aten._weight_int4pack_mm_for_cpu(x, packed, 32,
                                                                          scales_and_zeros),
        "dense_bf16": lambda x: F.linear(x, dense),
        "dense_fp32": lambda x: F.linear(x.float(), dense32),
        "int8pack": lambda x: torch.ops.aten._weight_int8pack_mm(x, int8, int8_scales),
    }
    if "gguf_mm" in extra:
        from pagellm.ops.gguf_cpu import gguf_int4_mm
        fns["gguf_mm"] = lambda x: gguf_int4_mm(x, packed, scales_and_zeros)
    return fns


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 2, 4, 5, 8])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--shapes", default=",".join(SHAPES))
    parser.add_argument("--extra", nargs="*", default=[])
    parser.add_argument("--only", nargs="*", default=None, help="candidate names to time")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, microseconds per call")
    for shape in args.shapes.split(","):
        n, k = SHAPES[shape]
        fns = candidates(n, k, args.extra)
        names = [name for name in fns if args.only is None or name in args.only]
        print(f"\n{shape} {n}x{k}: rows | " + " | ".join(names))
        for rows in args.rows:
            x = torch.randn(rows, k).to(torch.bfloat16)
            times = [_time(lambda: fns[name](x), args.iters, args.repeats) for name in names]
            print(f"  {rows:3d} | " + " | ".join(f"{t:7.1f}" for t in times), flush=True)


if __name__ == "__main__":
    main()
