"""Batch-1 decode attention at W1's short contexts: GPU µs per call (CUDA graph) of the split-KV
kernel for forced segment counts and decode tile sizes, as the decode CUDA graphs launch it
(``max_seq_len`` = the model length, 2048 in W1; the kernel sizes its segments from the real
context). Llama-3.1-8B heads (32 query, 8 KV, d = 128), bf16, 16-token blocks scattered.

PYTHONPATH=. python benchmarks/attention_decode_splits.py [--contexts 128,256,384,1024]
"""

from __future__ import annotations

import argparse
import types

import torch
import triton.testing

from pagellm.ops.triton import paged_attention as pa

sys_args = types.SimpleNamespace(dtype="bfloat16", num_heads=32, num_kv_heads=8, head_dim=128,
                                 block_size=16)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contexts", default="128,256,384,1024")
    parser.add_argument("--splits", default="1,2,4,8,16")
    parser.add_argument("--tiles", default="128,64,32")
    parser.add_argument("--max-seq-len", type=int, default=2048)
    args = parser.parse_args()
    import sys
    sys.path.insert(0, "benchmarks")
    from bench_attention import make_batch

    scale = sys_args.head_dim ** -0.5
    print("| context | tile | " + " | ".join(f"splits {s}" for s in args.splits.split(","))
          + " |\n|---|---|" + "---|" * len(args.splits.split(",")))
    for context in map(int, args.contexts.split(",")):
        batch = make_batch(sys_args, [1], [context])
        for tile in map(int, args.tiles.split(",")):
            pa.DECODE_TILE_N = tile
            cells = []
            for splits in map(int, args.splits.split(",")):
                out = torch.empty_like(batch["query"])

                def run():
                    pa.paged_attention_triton(
                        batch["query"], batch["kv_cache"], batch["block_tables"],
                        batch["query_start_loc"], batch["seq_lens"], scale, max_query_len=1,
                        max_seq_len=args.max_seq_len, num_kv_splits=splits, out=out)
                ms = triton.testing.do_bench_cudagraph(run, return_mode="median")
                cells.append(f"{ms * 1000:.1f}")
            print(f"| {context} | {tile} | " + " | ".join(cells) + " |", flush=True)
    pa.DECODE_TILE_N = 128
    default = pa.choose_num_kv_splits(1, 8, args.max_seq_len, pa._sm_count(torch.device("cuda")))
    print(f"\nthe engine's choice at max_seq_len {args.max_seq_len}: {default} splits, tile 128")


if __name__ == "__main__":
    main()
