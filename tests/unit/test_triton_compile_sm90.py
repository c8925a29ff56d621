"""The Triton kernels that only the GPU runs compile for sm_90 (H100/H200) here, without a GPU
(``tests/helpers/triton_compile.py``): the frontend, the passes and ptxas reject what the
interpreter accepts (a ``tl.constexpr`` reassigned in a ``static_range`` loop reached the
H200 once). Covers the decode GEMVs (quantized and dense, split-K reduced in the kernel and by
a second launch) in every launch the benchmark sweep can make, the one-shot all-reduce (plain
and fused), the split-KV decode attention (merged in the split launch and by the separate
merge launch) and the rotary kernel (alone, and fused with q/k norm and the KV-cache write)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")

from tests.helpers.triton_compile import compiling_for_sm90  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_decode_gemvs_compile_in_every_swept_launch():
    from pagellm.ops.quant import pack_int32
    from pagellm.ops.triton import quant_gemv as q
    from pagellm.ops.triton.dense_gemv import dense_gemv_silu_mul_triton, dense_gemv_triton

    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    try:
        from quant_gemv_bench import sweep_configs
    finally:
        sys.path.remove(str(REPO_ROOT / "benchmarks"))
    K, N, group = 4096, 4096, 128
    qweight = pack_int32(torch.randint(0, 16, (K, N)), 4, 0)
    scales = torch.rand(K // group, N, dtype=torch.bfloat16)
    qzeros = pack_int32(torch.randint(0, 16, (K // group, N)), 4, 1)
    g_idx = (torch.arange(K) // group).to(torch.int32)
    fp8 = torch.zeros(N, K, dtype=torch.float8_e4m3fn)
    dense = torch.zeros(N, K, dtype=torch.bfloat16)
    with compiling_for_sm90() as compiled:
        for M in (1, 2):
            x = torch.randn(M, K, dtype=torch.bfloat16)
            for config in sweep_configs("wna16", M, K, N, 132):
                q.wna16_gemv_triton(x, qweight, scales, qzeros, None, 4, config=config)
            for config in sweep_configs("fp8", M, K, N, 132):
                q.fp8_gemv_triton(x, fp8, torch.rand(N), config=config)
            for config in few_of(sweep_configs("bf16", M, K, N, 132), M):
                dense_gemv_triton(x, dense, config=config)
            for config in few_of(sweep_configs("bf16_silu_mul", M, K, N, 132), M):
                dense_gemv_silu_mul_triton(x, dense, torch.randn(N, dtype=torch.bfloat16),
                                           config=config)
            q.wna16_gemv_triton(x, qweight, scales, None, g_idx, 4)       # act order, sym
            q.wna16_gemv_triton(x, qweight, scales.float(), qzeros, None, 4,
                                config=q.GemvConfig(M, 64, 64, 2))       # groups per word row
        split = q.GemvConfig(2, 16, 256, 4)                # bias, both split-K reductions
        for in_kernel in (True, False):
            x = torch.randn(2, K, dtype=torch.bfloat16)
            bias = torch.randn(N, dtype=torch.bfloat16)
            q.wna16_gemv_triton(x, qweight, scales, qzeros, None, 4, bias, split, in_kernel)
            q.fp8_gemv_triton(x, fp8, torch.rand(N), bias, split, in_kernel)
            dense_gemv_triton(x, dense.half(), bias.half(), split, in_kernel)
    names = [name for name, _ in compiled]
    assert set(names) == {"_wna16_gemv_kernel", "_fp8_gemv_kernel", "_dense_gemv_kernel",
                          "_split_k_reduce_kernel"}
    assert names[-9:] == ["_wna16_gemv_kernel", "_fp8_gemv_kernel", "_dense_gemv_kernel",
                          "_wna16_gemv_kernel", "_split_k_reduce_kernel", "_fp8_gemv_kernel",
                          "_split_k_reduce_kernel", "_dense_gemv_kernel",
                          "_split_k_reduce_kernel"]
    assert names.count("_split_k_reduce_kernel") == 3      # the swept splits reduce in-kernel
    modes = {(name, c["SPLIT_MODE"]) for name, c in compiled if name != "_split_k_reduce_kernel"}
    assert modes == {(kernel, mode) for kernel in ("_wna16_gemv_kernel", "_fp8_gemv_kernel",
                                                   "_dense_gemv_kernel") for mode in (0, 1, 2)}
    silu = {(c["SPLIT_MODE"], c["BLOCK_M"]) for name, c in compiled if c.get("SILU_MUL")}
    assert silu == {(mode, block_m) for mode in (0, 2) for block_m in (1, 2)}
    assert {c["GROUP_MODE"] for name, c in compiled if name == "_wna16_gemv_kernel"} == {0, 1, 2}


def few_of(configs: list, M: int) -> list:
    """The dense GEMVs' swept launches that differ in what compiles, trimmed for time: at M = 2
    every variant without split-K and the first with it (the epilogue does not depend on the
    tile sizes); at M = 1 the first variant with and without."""
    unsplit = [c for c in configs if c.split_k == 1]
    split = [c for c in configs if c.split_k > 1][:1]
    return (unsplit if M == 2 else unsplit[:1]) + split


def test_one_shot_all_reduce_and_split_decode_attention_compile():
    from pagellm.ops.triton.one_shot_all_reduce import (one_shot_all_gather,
                                                        one_shot_all_reduce,
                                                        one_shot_embedding_all_reduce)
    from pagellm.ops.triton.paged_attention import paged_attention_triton

    pointers, counters = torch.zeros(2, dtype=torch.int64), torch.zeros(64, dtype=torch.int32)
    hidden = torch.randn(3, 4096, dtype=torch.bfloat16)
    with compiling_for_sm90() as compiled:
        one_shot_all_reduce(hidden, pointers, pointers, counters, 1 << 20, 0, hidden.clone(),
                            torch.randn(4096, dtype=torch.bfloat16), 1e-5)
        one_shot_all_reduce(hidden.view(-1, 1024), pointers, pointers, counters, 1 << 20, 1)
        one_shot_embedding_all_reduce(torch.tensor([5, 70000]), torch.zeros(64128, 4096,
                                      dtype=torch.bfloat16), 64128, pointers, pointers,
                                      counters, 1 << 22, 1)
        one_shot_all_gather(torch.randn(1, 64128, dtype=torch.bfloat16), pointers, pointers,
                            counters, 1 << 20, 0, torch.float32)
        cache = torch.zeros(2, 8, 16, 2, 128, dtype=torch.bfloat16)   # [2, blocks, 16, kv, d]
        query = torch.randn(2, 8, 128, dtype=torch.bfloat16)
        for merge_in_split_kernel in (True, False):
            paged_attention_triton(query, cache, torch.zeros(2, 8, dtype=torch.int32),
                                   torch.tensor([0, 1, 2], dtype=torch.int32),
                                   torch.tensor([100, 30], dtype=torch.int32), 0.1,
                                   max_query_len=1, max_seq_len=128, num_kv_splits=4,
                                   merge_in_split_kernel=merge_in_split_kernel)
    assert [name for name, _ in compiled] == ["_one_shot_all_reduce_kernel"] * 4 + [
        "_split_decode_kernel", "_split_decode_kernel", "_split_decode_reduce_kernel"]
    assert [(c["NORM"], c["EMBED"], c["GATHER"]) for _, c in compiled[:4]] == [
        (True, False, False), (False, False, False), (False, True, False), (False, False, True)]
    assert [c["MERGE"] for _, c in compiled[4:6]] == [True, False]


@pytest.mark.parametrize("num_kv_heads,group,head_dim,segments", [(8, 4, 128, 256), (1, 6, 80, 7),
                                                                   (4, 1, 64, 33)])
def test_split_decode_merge_compiles_for_every_tree_depth(num_kv_heads, group, head_dim, segments):
    """The ticket merge's pairwise tree at its deepest (MAX_KV_SPLITS segments, Llama-8B's
    GQA 4 at d=128), with an odd group and head dim, and with a group of one."""
    from pagellm.ops.triton.paged_attention import MAX_KV_SPLITS, paged_attention_triton

    assert MAX_KV_SPLITS == 256
    cache = torch.zeros(2, 8, 16, num_kv_heads, head_dim, dtype=torch.bfloat16)
    query = torch.randn(1, num_kv_heads * group, head_dim, dtype=torch.bfloat16)
    with compiling_for_sm90() as compiled:
        paged_attention_triton(query, cache, torch.zeros(1, 8, dtype=torch.int32),
                               torch.tensor([0, 1], dtype=torch.int32),
                               torch.tensor([100], dtype=torch.int32), 0.1, max_query_len=1,
                               max_seq_len=segments * 256, num_kv_splits=segments)
    assert [(name, c["MERGE"], c["SEGMENTS_PAD"]) for name, c in compiled] == [
        ("_split_decode_kernel", True, 1 << (segments - 1).bit_length())]


def test_rotary_kernels_compile():
    """Rotary alone (partial rotary dim), and fused with the q/k norms and the KV write into
    bf16 and fp8 caches, at Llama-8B / Qwen3 shapes and an odd head dim."""
    from pagellm.ops.triton.rotary import apply_rotary_triton_, qk_norm_rotary_and_cache_triton_

    positions, slots = torch.zeros(3, dtype=torch.int64), torch.zeros(3, dtype=torch.int64)
    with compiling_for_sm90() as compiled:
        for heads, kv_heads, head_dim, norm, cache_dtype in (
                (32, 8, 128, False, torch.bfloat16), (16, 8, 128, True, torch.bfloat16),
                (12, 2, 80, True, torch.float8_e4m3fn)):
            qkv = torch.randn(3, (heads + 2 * kv_heads) * head_dim, dtype=torch.bfloat16)
            q, k, v = qkv.split([heads * head_dim, kv_heads * head_dim, kv_heads * head_dim], -1)
            q, k, v = (q.view(3, heads, head_dim), k.view(3, kv_heads, head_dim),
                       v.view(3, kv_heads, head_dim))
            weight = torch.ones(head_dim, dtype=torch.bfloat16) if norm else None
            cache = torch.zeros(2, 4, 16, kv_heads, head_dim, dtype=cache_dtype)
            qk_norm_rotary_and_cache_triton_(q, k, v, positions, torch.randn(64, head_dim),
                                             cache, slots, 0.5, 2.0, weight, weight, 1e-6)
        apply_rotary_triton_(q, k, positions, torch.randn(64, 40))       # rotary_dim 40 < 80
    assert [(c["QK_NORM"], c["WRITE_CACHE"], c["FP8_MAX"]) for _, c in compiled] == [
        (False, True, 0.0), (True, True, 0.0), (True, True, 448.0), (False, False, 0.0)]


def test_pdl_gemvs_prefetch_and_wait_before_any_memory_access(monkeypatch):
    """With programmatic dependent launch the GEMVs are launched with ``launch_pdl`` and their
    PTX is: let dependents launch, ask L2 for the weight rows, wait for the previous grid, and
    only then any global load, store or atomic (the input, the output, the split-K counters):
    the order that makes an early launch as safe as stream order (``pdl`` module)."""
    from pagellm.ops.triton import dense_gemv, pdl, quant_gemv
    from pagellm.ops.triton.quant_gemv import GemvConfig

    monkeypatch.setattr(pdl, "pdl_enabled", lambda device: True)     # CPU tensors here
    K, N = 4096, 1024
    x = torch.randn(1, K, dtype=torch.bfloat16)
    dense = torch.zeros(2 * N, K, dtype=torch.bfloat16)
    split = GemvConfig(1, 16, 256, 4)
    with compiling_for_sm90() as compiled:
        dense_gemv.dense_gemv_triton(x, dense[:N])
        dense_gemv.dense_gemv_triton(x, dense[:N], config=split)
        dense_gemv.dense_gemv_silu_mul_triton(x, dense, config=split)
        quant_gemv.fp8_gemv_triton(x, torch.zeros(N, K, dtype=torch.float8_e4m3fn),
                                   torch.rand(N), config=split)
    assert [c["PDL"] for _, c in compiled] == [True] * 4
    for binary in compiled.binaries:
        assert binary.metadata.launch_pdl
        lines = [re.sub(r"^@!?%p\d+\s+", "", line.strip())      # drop a predicate guard
                 for line in binary.asm["ptx"].splitlines()]
        trigger = next(i for i, s in enumerate(lines) if s.startswith("griddepcontrol.launch"))
        prefetches = [i for i, s in enumerate(lines) if "cp.async.bulk.prefetch.L2" in s]
        wait = next(i for i, s in enumerate(lines) if s.startswith("griddepcontrol.wait"))
        accesses = [i for i, s in enumerate(lines)
                    if s.startswith(("ld.global", "st.global", "atom.", "red."))]
        assert trigger < min(prefetches) and max(prefetches) < wait < min(accesses)
    # the SiLU-and-mul GEMV prefetches its gate and its up rows
    silu_ptx = compiled.binaries[2].asm["ptx"]
    assert silu_ptx.count("cp.async.bulk.prefetch.L2") >= 2


def test_kernels_before_a_gemv_let_it_launch_early():
    """The kernels a decode GEMV follows (RMSNorm, the one-shot all-reduce, split-KV attention)
    execute ``griddepcontrol.launch_dependents`` before anything else."""
    from pagellm.ops.triton.norm import fused_add_rms_norm_triton
    from pagellm.ops.triton.one_shot_all_reduce import one_shot_all_reduce
    from pagellm.ops.triton.paged_attention import paged_attention_triton

    hidden = torch.randn(1, 4096, dtype=torch.bfloat16)
    weight = torch.randn(4096, dtype=torch.bfloat16)
    pointers, counters = torch.zeros(2, dtype=torch.int64), torch.zeros(64, dtype=torch.int32)
    with compiling_for_sm90() as compiled:
        fused_add_rms_norm_triton(hidden, hidden.clone(), weight, 1e-5)
        one_shot_all_reduce(hidden, pointers, pointers, counters, 1 << 20, 0, hidden.clone(),
                            weight, 1e-5)
        paged_attention_triton(torch.randn(1, 8, 128, dtype=torch.bfloat16),
                               torch.zeros(2, 8, 16, 2, 128, dtype=torch.bfloat16),
                               torch.zeros(1, 8, dtype=torch.int32),
                               torch.tensor([0, 1], dtype=torch.int32),
                               torch.tensor([100], dtype=torch.int32), 0.1, max_query_len=1,
                               max_seq_len=128, num_kv_splits=4)
    assert [name for name, _ in compiled] == ["_rms_norm_kernel", "_one_shot_all_reduce_kernel",
                                              "_split_decode_kernel"]
    for binary in compiled.binaries:
        lines = [re.sub(r"^@!?%p\d+\s+", "", line.strip())      # drop a predicate guard
                 for line in binary.asm["ptx"].splitlines()]
        trigger = next(i for i, s in enumerate(lines) if s.startswith("griddepcontrol.launch"))
        accesses = [i for i, s in enumerate(lines) if s.startswith(("ld.global", "st.global"))]
        assert trigger < min(accesses)
