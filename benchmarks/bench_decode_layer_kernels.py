"""Per-layer decode kernels inside a CUDA graph, before and after session 8's fusions.

Llama-8B attention shapes (32 query / 8 kv heads, head_dim 128, bf16, block size 16) at
batch 1 and 64, context 256 and 4096. For each shape, one CUDA graph per variant holds the
variant's launches for ``--layers`` layers, each layer with its own KV cache (so the caches
do not sit in L2 as they would not between a real model's GEMVs); the time of one replay
divided by the layer count is the per-layer time. Variants:

* pre-attention, Llama: rotary launch + KV-write launch (old) vs the fused
  ``qk_norm_rotary_and_cache_triton_`` (new);
* pre-attention, Qwen3-style q/k norm: q norm + k norm + rotary + KV write (old, four
  launches) vs the fused launch with the norms (new);
* attention: split-KV with its separate merge launch (old) vs merged by the last segment
  program (new). The split count is the engine's for a graph captured at
  ``--max-model-len`` (the contexts are shorter than that, as in a real replay); batch 64
  has enough (request, kv head) pairs to skip split-KV, so old and new are the same kernel.

Also checks that new attention output equals old bit for bit and that the fused pre-attention
output is within 1e-2 of the old. Prints one table; writes JSON to
``$OUT/bench_decode_layer_kernels.json`` when OUT is set. Run from the repo root (one H200,
about a minute):

    PYTHONPATH=. python benchmarks/bench_decode_layer_kernels.py
"""

from __future__ import annotations

import argparse
import json
import os

import torch

from pagellm.ops.rotary import rope_cos_sin_cache, rope_inv_freq
from pagellm.ops.triton.kv_cache import write_kv_cache_triton
from pagellm.ops.triton.norm import rms_norm_triton
from pagellm.ops.triton.paged_attention import choose_num_kv_splits, paged_attention_triton
from pagellm.ops.triton.rotary import apply_rotary_triton_, qk_norm_rotary_and_cache_triton_

NUM_HEADS, NUM_KV_HEADS, HEAD_DIM, BLOCK_SIZE = 32, 8, 128, 16
DTYPE = torch.bfloat16


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", default="1,64")
    parser.add_argument("--contexts", default="256,4096")
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--max-model-len", type=int, default=8192)
    parser.add_argument("--replays", type=int, default=50)
    parser.add_argument("--kv-cache-dtype", choices=["auto", "fp8"], default="auto")
    return parser.parse_args()


class Layer:
    """One layer's step inputs: q/k/v views of a fused QKV output, and its own paged cache
    holding ``context`` tokens per request (the last one written this step)."""

    def __init__(self, batch: int, context: int, cache_dtype: torch.dtype, gen: torch.Generator):
        sizes = [NUM_HEADS * HEAD_DIM, NUM_KV_HEADS * HEAD_DIM, NUM_KV_HEADS * HEAD_DIM]
        self.qkv = torch.randn(batch, sum(sizes), device="cuda", dtype=DTYPE, generator=gen)
        q, k, v = self.qkv.split(sizes, dim=-1)
        self.q = q.view(batch, NUM_HEADS, HEAD_DIM)                    # [B, H, D]
        self.k = k.view(batch, NUM_KV_HEADS, HEAD_DIM)                 # [B, KVH, D]
        self.v = v.view(batch, NUM_KV_HEADS, HEAD_DIM)
        blocks_per_req = -(-context // BLOCK_SIZE)
        num_blocks = batch * blocks_per_req
        self.kv_cache = torch.randn(2, num_blocks, BLOCK_SIZE, NUM_KV_HEADS, HEAD_DIM,
                                    device="cuda", dtype=DTYPE, generator=gen).to(cache_dtype)
        order = torch.randperm(num_blocks, device="cuda", generator=gen)
        self.block_tables = order.view(batch, blocks_per_req).to(torch.int32)
        last = context - 1
        self.slot_mapping = (self.block_tables[:, last // BLOCK_SIZE].long() * BLOCK_SIZE
                             + last % BLOCK_SIZE)                      # [B]


def graph_us(layers: list[Layer], step, replays: int) -> float:
    """GPU time of one layer's ``step(layer)``: a CUDA graph of every layer's, replayed."""
    for layer in layers:                                     # compile outside the capture
        step(layer)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for layer in layers:
            step(layer)
    graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(replays):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1e3 / replays / len(layers)


def pre_attention_steps(common: dict, norms: tuple | None):
    """(old, new) steps, each returning the rotated query: the separate launches, and the
    fused one (with ``norms``, Qwen3's)."""
    positions, cos_sin, eps = common["positions"], common["cos_sin"], 1e-6

    def old(layer: Layer) -> torch.Tensor:
        q, k = layer.q, layer.k
        if norms is not None:
            q = rms_norm_triton(q, norms[0], eps)
            k = rms_norm_triton(k, norms[1], eps)
        apply_rotary_triton_(q, k, positions, cos_sin)
        write_kv_cache_triton(k, layer.v, layer.kv_cache, layer.slot_mapping)
        return q

    def new(layer: Layer) -> torch.Tensor:
        q_norm, k_norm = norms or (None, None)
        return qk_norm_rotary_and_cache_triton_(layer.q, layer.k, layer.v, positions, cos_sin,
                                                layer.kv_cache, layer.slot_mapping,
                                                q_norm_weight=q_norm, k_norm_weight=k_norm,
                                                eps=eps)
    return old, new


def attention_step(common: dict, merge_in_split_kernel: bool):
    def step(layer: Layer) -> torch.Tensor:
        return paged_attention_triton(
            layer.q, layer.kv_cache, layer.block_tables, common["query_start_loc"],
            common["seq_lens"], HEAD_DIM ** -0.5, max_query_len=1,
            max_seq_len=common["max_model_len"], out=common["out"],
            merge_in_split_kernel=merge_in_split_kernel)
    return step


def check_outputs(layer: Layer, common: dict, norms: tuple) -> tuple[bool, float]:
    """(attention old == new bit for bit, fused pre-attention q max relative error)."""
    old_out, new_out = torch.empty_like(layer.q), torch.empty_like(layer.q)
    attention_step(dict(common, out=old_out), False)(layer)
    attention_step(dict(common, out=new_out), True)(layer)
    q_before, k_before = layer.q.clone(), layer.k.clone()
    old, new = pre_attention_steps(common, norms)
    want = old(layer).clone()
    layer.q.copy_(q_before)
    layer.k.copy_(k_before)
    got = new(layer)
    error = ((got.float() - want.float()).norm() / want.float().norm()).item()
    return torch.equal(old_out, new_out), error


def run_shape(args, batch: int, context: int) -> dict:
    gen = torch.Generator(device="cuda").manual_seed(0)
    cache_dtype = torch.float8_e4m3fn if args.kv_cache_dtype == "fp8" else DTYPE
    layers = [Layer(batch, context, cache_dtype, gen) for _ in range(args.layers)]
    common = dict(positions=torch.full((batch,), context - 1, device="cuda"),
                  cos_sin=rope_cos_sin_cache(rope_inv_freq(HEAD_DIM, 500000.0),
                                             args.max_model_len).cuda(),
                  query_start_loc=torch.arange(batch + 1, device="cuda", dtype=torch.int32),
                  seq_lens=torch.full((batch,), context, device="cuda", dtype=torch.int32),
                  max_model_len=args.max_model_len, out=torch.empty_like(layers[0].q))
    norms = tuple(1 + 0.1 * torch.randn(HEAD_DIM, device="cuda", dtype=DTYPE, generator=gen)
                  for _ in range(2))
    sm_count = torch.cuda.get_device_properties(0).multi_processor_count
    row = dict(batch=batch, context=context, num_kv_splits=choose_num_kv_splits(
        batch, NUM_KV_HEADS, args.max_model_len, sm_count))          # 128-key tiles at d=128
    for name, norm_weights in (("rotary_kv", None), ("qknorm_rotary_kv", norms)):
        old, new = pre_attention_steps(common, norm_weights)
        row[f"{name}_old_us"] = graph_us(layers, old, args.replays)
        row[f"{name}_new_us"] = graph_us(layers, new, args.replays)
    row["attention_old_us"] = graph_us(layers, attention_step(common, False), args.replays)
    row["attention_new_us"] = graph_us(layers, attention_step(common, True), args.replays)
    row["attention_bits_equal"], row["fused_q_error"] = check_outputs(layers[0], common, norms)
    return row


def print_table(rows: list[dict]) -> None:
    print(f"{'batch':>5} {'ctx':>5} {'splits':>6} | {'rot+kv old':>10} {'new':>6} | "
          f"{'norm+rot+kv old':>15} {'new':>6} | {'attn old':>8} {'new':>6} | "
          f"{'layer old':>9} {'new':>6} {'saved':>6} | bits= q err")
    for r in rows:
        old = r["rotary_kv_old_us"] + r["attention_old_us"]
        new = r["rotary_kv_new_us"] + r["attention_new_us"]
        print(f"{r['batch']:>5} {r['context']:>5} {r['num_kv_splits']:>6} | "
              f"{r['rotary_kv_old_us']:>10.2f} {r['rotary_kv_new_us']:>6.2f} | "
              f"{r['qknorm_rotary_kv_old_us']:>15.2f} {r['qknorm_rotary_kv_new_us']:>6.2f} | "
              f"{r['attention_old_us']:>8.2f} {r['attention_new_us']:>6.2f} | "
              f"{old:>9.2f} {new:>6.2f} {old - new:>6.2f} | "
              f"{str(r['attention_bits_equal']):>5} {r['fused_q_error']:.1e}")
    print("us per layer (GPU time in a CUDA graph); 'layer' = Llama: rotary+KV write + "
          "attention; bits= : new attention output equals old bit for bit")


def main() -> None:
    args = parse_args()
    rows = [run_shape(args, batch, context)
            for batch in map(int, args.batches.split(","))
            for context in map(int, args.contexts.split(","))]
    print(json.dumps(dict(device=torch.cuda.get_device_name(), args=vars(args), rows=rows)))
    print_table(rows)
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "bench_decode_layer_kernels.json"), "w") as f:
            json.dump(dict(device=torch.cuda.get_device_name(), args=vars(args), rows=rows), f,
                      indent=1)


if __name__ == "__main__":
    main()
