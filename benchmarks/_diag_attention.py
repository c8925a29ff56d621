import time, itertools, torch, triton, triton.testing
import pagellm.ops.triton.paged_attention as pa
from benchmarks.bench_attention import make_batch
import argparse
args = argparse.Namespace(dtype="bfloat16", num_heads=32, num_kv_heads=8, head_dim=128, block_size=16)
orig = pa._launch_config
overrides = {}
pa._launch_config = lambda *a: {**orig(*a), **overrides}
def call(b, splits):
    return lambda: pa.paged_attention_triton(b["query"], b["kv_cache"], b["block_tables"], b["query_start_loc"], b["seq_lens"], 0.088, max_query_len=b["max_query_len"], max_seq_len=b["max_seq_len"], num_kv_splits=splits)
def host_us(fn):
    fn(); torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(200): fn()
    el = (time.perf_counter() - t) / 200 * 1e6
    torch.cuda.synchronize(); return el
for nr, ctx in [(1, 2048), (1, 8192), (8, 2048), (8, 8192), (32, 512), (32, 8192)]:
    b = make_batch(args, [1]*nr, [ctx]*nr)
    for splits in [1, 4, 8, 16, 32]:
        for tile, stages, warps in itertools.product([32, 64, 128], [2, 3, 4], [4]):
            if splits > 1 and ctx // splits < tile: continue
            overrides.clear(); overrides.update(TILE_N=tile, num_stages=stages, num_warps=warps)
            fn = call(b, splits)
            try:
                ms = triton.testing.do_bench(fn, return_mode="median")
                g = triton.testing.do_bench_cudagraph(fn, return_mode="median")
            except Exception as e:
                print(nr, ctx, splits, tile, stages, "ERR", type(e).__name__, str(e)[:100]); continue
            print(f"b={nr:3d} ctx={ctx:5d} splits={splits:2d} tile={tile:3d} stages={stages} warps={warps}: do_bench {ms*1e3:7.1f} us  graph {g*1e3:7.1f} us", flush=True)
    overrides.clear()
    print(f"b={nr} ctx={ctx} host launch us: unsplit {host_us(call(b,1)):.1f} split8 {host_us(call(b,8)):.1f}", flush=True)
