"""Paged attention on the device: Triton kernels vs the torch twin, with a decode roofline.

Decode batches (one new token per request, every request at the same context length) and two
prefill batches. Triton times are GPU times from ``triton.testing.do_bench_cudagraph`` (median
of CUDA-graph replays, so the ~50-100 us of Python launch overhead per call is excluded; it is
reported apart as "host us", the CPU time of one un-captured call). The torch twin is timed with
``triton.testing.do_bench`` (median, L2 flushed between runs), host overhead included.
Decode is memory-bound, so each decode row also reports the bytes of K/V it must read divided
by its time, against a device-to-device copy bandwidth measured in the same run (bytes read +
written / time). Prints a table last; writes JSON to ``$OUT/bench_attention.json`` when OUT is
set. Run from the repo root: ``PYTHONPATH=. python benchmarks/bench_attention.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
import triton
import triton.testing

from pagellm.ops.attention import paged_attention_torch
from pagellm.ops.triton.paged_attention import choose_num_kv_splits, paged_attention_triton

_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", choices=sorted(_DTYPES), default="bfloat16")
    parser.add_argument("--num-heads", type=int, default=32)
    parser.add_argument("--num-kv-heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--batches", default="1,8,32,64,128,256")
    parser.add_argument("--contexts", default="128,512,2048,8192")
    parser.add_argument("--torch-max-tokens", type=int, default=262144,
                        help="skip the torch twin above this many context tokens in a batch "
                             "(its gather + GQA repeat needs several times the cache's bytes)")
    return parser.parse_args()


def copy_bandwidth(num_bytes: int = 1 << 30) -> float:
    """Device-to-device copy, bytes read + written per second."""
    src = torch.empty(num_bytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = triton.testing.do_bench(lambda: dst.copy_(src), return_mode="median")
    return 2 * num_bytes / (ms * 1e-3)


def make_batch(args, query_lens: list[int], seq_lens: list[int], seed: int = 0) -> dict:
    """Random cache with each request's blocks scattered (as after some churn), its metadata
    and a query; only the blocks the batch needs are allocated."""
    gen = torch.Generator(device="cuda").manual_seed(seed)
    dtype, block_size = _DTYPES[args.dtype], args.block_size
    blocks_per_req = [-(-s // block_size) for s in seq_lens]
    num_blocks = sum(blocks_per_req)
    kv_cache = torch.randn(2, num_blocks, block_size, args.num_kv_heads, args.head_dim,
                           generator=gen, device="cuda", dtype=dtype)
    order = torch.randperm(num_blocks, generator=gen, device="cuda").to(torch.int32)
    block_tables = torch.zeros(len(seq_lens), max(blocks_per_req), dtype=torch.int32, device="cuda")
    start = 0
    for i, n in enumerate(blocks_per_req):
        block_tables[i, :n] = order[start:start + n]
        start += n
    query_start_loc_cpu = [0]
    for q_len in query_lens:
        query_start_loc_cpu.append(query_start_loc_cpu[-1] + q_len)
    query = torch.randn(query_start_loc_cpu[-1], args.num_heads, args.head_dim, generator=gen,
                        device="cuda", dtype=dtype)
    return dict(query=query, kv_cache=kv_cache, block_tables=block_tables,
                query_start_loc=torch.tensor(query_start_loc_cpu, dtype=torch.int32, device="cuda"),
                seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device="cuda"),
                query_start_loc_cpu=query_start_loc_cpu, seq_lens_cpu=list(seq_lens),
                max_query_len=max(query_lens), max_seq_len=max(seq_lens))


def time_triton(batch: dict, scale: float, num_kv_splits: int | None = None) -> float:
    """GPU milliseconds per call, CUDA-graph replayed."""
    return triton.testing.do_bench_cudagraph(_triton_call(batch, scale, num_kv_splits),
                                             return_mode="median")


def time_triton_eager(batch: dict, scale: float) -> float:
    """Milliseconds per call timed like the torch twin (do_bench, launch overhead partly hidden
    behind the L2 flush), for a like-for-like speedup."""
    return triton.testing.do_bench(_triton_call(batch, scale, None), return_mode="median")


def host_microseconds(batch: dict, scale: float, calls: int = 200) -> float:
    """CPU time of one call (launch overhead): the GPU queue absorbs the kernels meanwhile."""
    run = _triton_call(batch, scale, None)
    run()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        run()
    elapsed = time.perf_counter() - start
    torch.cuda.synchronize()
    return elapsed / calls * 1e6


def _triton_call(batch: dict, scale: float, num_kv_splits: int | None):
    out = torch.empty_like(batch["query"])

    def run():
        paged_attention_triton(batch["query"], batch["kv_cache"], batch["block_tables"],
                               batch["query_start_loc"], batch["seq_lens"], scale,
                               max_query_len=batch["max_query_len"],
                               max_seq_len=batch["max_seq_len"], num_kv_splits=num_kv_splits,
                               out=out)
    return run


def time_torch(batch: dict, scale: float) -> float:
    def run():
        paged_attention_torch(batch["query"], batch["kv_cache"], batch["block_tables"],
                              batch["seq_lens"], batch["query_start_loc_cpu"],
                              batch["seq_lens_cpu"], scale)
    return triton.testing.do_bench(run, return_mode="median")


def bench_decode(args, copy_bw: float) -> list[dict]:
    scale = args.head_dim ** -0.5
    element_bytes = torch.empty(0, dtype=_DTYPES[args.dtype]).element_size()
    sm_count = torch.cuda.get_device_properties(0).multi_processor_count
    rows = []
    for num_reqs in map(int, args.batches.split(",")):
        for context in map(int, args.contexts.split(",")):
            batch = make_batch(args, [1] * num_reqs, [context] * num_reqs)
            kv_bytes = 2 * num_reqs * context * args.num_kv_heads * args.head_dim * element_bytes
            row = dict(kind="decode", batch=num_reqs, context=context,
                       splits=choose_num_kv_splits(num_reqs, args.num_kv_heads, context, sm_count),
                       triton_ms=time_triton(batch, scale),
                       triton_unsplit_ms=time_triton(batch, scale, num_kv_splits=1),
                       torch_ms=(time_torch(batch, scale)
                                 if num_reqs * context <= args.torch_max_tokens else None),
                       host_us=host_microseconds(batch, scale),
                       triton_eager_ms=time_triton_eager(batch, scale))
            row["kv_gb_per_s"] = kv_bytes / (row["triton_ms"] * 1e-3) / 1e9
            row["roofline_fraction"] = kv_bytes / (row["triton_ms"] * 1e-3) / copy_bw
            rows.append(row)
            print(f"decode batch={num_reqs:4d} context={context:5d} {_format_times(row)} "
                  f"{row['kv_gb_per_s']:7.0f} GB/s", flush=True)
            del batch
            torch.cuda.empty_cache()
    return rows


def bench_prefill(args) -> list[dict]:
    """Four 2048-token prompts; a 512-token chunk on a 4096-token prefix beside 64 decodes."""
    scale = args.head_dim ** -0.5
    cases = {"prefill 4x2048": ([2048] * 4, [2048] * 4),
             "chunk 512@4096 + 64 decodes": ([512] + [1] * 64, [4608] + [2048] * 64)}
    rows = []
    for name, (query_lens, seq_lens) in cases.items():
        batch = make_batch(args, query_lens, seq_lens)
        # two matmuls (QK^T, PV) of 2 flops per multiply-add over each query's visible keys
        visible = sum(q * (s - q) + q * (q + 1) // 2 for q, s in zip(query_lens, seq_lens))
        flops = 4 * args.num_heads * args.head_dim * visible
        row = dict(kind=name, batch=len(query_lens), context=max(seq_lens), splits=1,
                   triton_ms=time_triton(batch, scale), triton_unsplit_ms=None,
                   torch_ms=time_torch(batch, scale), host_us=host_microseconds(batch, scale),
                   triton_eager_ms=time_triton_eager(batch, scale))
        row["tflops"] = flops / (row["triton_ms"] * 1e-3) / 1e12
        rows.append(row)
        print(f"{name}: {_format_times(row)} {row['tflops']:6.1f} TFLOP/s", flush=True)
    return rows


def _format_times(row: dict) -> str:
    def ms(value):
        return "      -" if value is None else f"{value:7.3f}"
    return (f"triton {ms(row['triton_ms'])} ms  unsplit {ms(row['triton_unsplit_ms'])} ms  "
            f"torch {ms(row['torch_ms'])} ms  host {row['host_us']:5.0f} us")


def print_table(device_name: str, copy_bw: float, decode: list[dict], prefill: list[dict]) -> None:
    print(f"\n{device_name}; copy bandwidth {copy_bw / 1e9:.0f} GB/s (read + write)")
    print("| case | batch | context | splits | triton ms (GPU) | unsplit ms | torch ms | speedup* "
          "| host us | KV GB/s | % of copy bw |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for row in decode + prefill:
        speedup = f"{row['torch_ms'] / row['triton_eager_ms']:.1f}x" if row["torch_ms"] else "-"
        unsplit = f"{row['triton_unsplit_ms']:.3f}" if row["triton_unsplit_ms"] else "-"
        torch_ms = f"{row['torch_ms']:.3f}" if row["torch_ms"] else "-"
        bandwidth = (f"{row['kv_gb_per_s']:.0f} | {100 * row['roofline_fraction']:.0f}%"
                     if "kv_gb_per_s" in row else f"{row['tflops']:.1f} TFLOP/s | -")
        print(f"| {row['kind']} | {row['batch']} | {row['context']} | {row['splits']} | "
              f"{row['triton_ms']:.3f} | {unsplit} | {torch_ms} | {speedup} | {row['host_us']:.0f} | "
              f"{bandwidth} |")
    print("* torch / triton, both timed with do_bench (launch overhead included alike); the GPU "
          "columns and bandwidth use CUDA-graph replays.")


def main() -> None:
    args = parse_args()
    torch.manual_seed(0)
    device_name = torch.cuda.get_device_name(0)
    copy_bw = copy_bandwidth()
    decode = bench_decode(args, copy_bw)
    prefill = bench_prefill(args)
    print_table(device_name, copy_bw, decode, prefill)
    if os.environ.get("OUT"):
        path = os.path.join(os.environ["OUT"], "bench_attention.json")
        with open(path, "w") as f:
            json.dump(dict(device=device_name, args=vars(args), copy_bytes_per_s=copy_bw,
                           torch=torch.__version__, triton=triton.__version__,
                           decode=decode, prefill=prefill), f, indent=1)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
