"""The Triton kernels on CPU through Triton's interpreter (``TRITON_INTERPRET=1``), float32,
tiny shapes, against their torch twins. The variable must be set before triton is imported,
so the checks run in a subprocess (this file's ``__main__``). Skipped without triton."""

from __future__ import annotations

import sys

import pytest

from tests.helpers.triton_interpret import run_interpreted

CHECKS = ["attention", "split_decode", "kv_cache", "norm_activation", "backend", "fp8_kv_cache",
          "wna16_gemm", "one_shot_all_reduce", "rotary_and_cache", "split_merge", "layer_rotary"]


@pytest.mark.parametrize("check", CHECKS)
def test_kernels_in_interpreter(check):
    pytest.importorskip("triton")
    run_interpreted("tests.unit.test_triton_interpret", check,
                    extra_env={"PAGELLM_ATTENTION_BACKEND": "triton"})


def _run(check: str) -> None:
    import torch

    from pagellm.layers.attention import TritonAttentionBackend, get_attn_backend
    from pagellm.platforms import current_platform
    from tests.gpu import kernel_cases as cases

    cpu = dict(device="cpu", dtype=torch.float32)
    small = dict(num_heads=4, num_kv_heads=2, head_dim=16, **cpu)
    if check == "attention":
        # prefill, chunks on a cached prefix (one ending on a block boundary), decodes
        assert cases.check_paged_attention([1, 7, 1, 12, 3, 8], [9, 20, 1, 12, 35, 16],
                                           block_size=4, **small) < 1e-5
        assert cases.check_paged_attention([5, 2], [5, 70], block_size=1, num_heads=2,
                                           num_kv_heads=2, head_dim=24, **cpu) < 1e-5
    elif check == "split_decode":
        assert cases.check_paged_attention([1, 1, 1], [5, 70, 130], num_kv_splits=3,
                                           **small) < 1e-5
        assert cases.check_paged_attention([1, 1], [700, 64], num_heads=8, **cpu) < 1e-5
    elif check == "kv_cache":
        assert cases.check_write_kv_cache(9, block_size=4, num_kv_heads=3, head_dim=8, **cpu)
    elif check == "norm_activation":
        assert max(cases.check_rms_norm(3, 48, **cpu)) < 1e-5
        assert cases.check_silu_and_mul(3, 40, **cpu) < 1e-5
    elif check == "backend":
        assert isinstance(get_attn_backend(current_platform("cpu")), TritonAttentionBackend)
        error, caches_equal = cases.check_backends_agree([1, 6, 1], [10, 6, 23], block_size=4,
                                                         **small)
        assert caches_equal and error < 1e-5
    elif check == "fp8_kv_cache":
        fp8 = dict(kv_cache_dtype=torch.float8_e4m3fn, k_scale=0.5, v_scale=2.0)
        assert cases.check_write_kv_cache(9, block_size=4, num_kv_heads=3, head_dim=8,
                                          k_scale=0.5, v_scale=2.0, device="cpu",
                                          dtype=torch.float8_e4m3fn, fp8_representable=True)
        assert cases.check_paged_attention([1, 7, 1, 3], [9, 20, 1, 35], block_size=4, **small,
                                           **fp8) < 1e-5
        assert cases.check_paged_attention([1, 1], [5, 70], num_kv_splits=3, **small, **fp8) < 1e-5
        # The interpreter's fp32 -> fp8 rounding is wrong for some values, so only the outputs
        # are compared here (the GPU test compares the written bytes too).
        error, _ = cases.check_backends_agree([1, 6], [10, 6], block_size=4, **small, **fp8)
        assert error < 0.1
    elif check == "rotary_and_cache":
        _check_rotary_and_cache()
    elif check == "split_merge":
        _check_split_merge()
    elif check == "layer_rotary":
        for qk_norm in (True, False):          # a prefill, a chunk on a prefix, decodes
            fused, unfused = cases.check_layer_rotary_paths([1, 6, 1], [10, 6, 23],
                                                            qk_norm=qk_norm, block_size=4,
                                                            **small)
            assert fused < 1e-5 and unfused < 1e-5
    elif check == "wna16_gemm":
        _check_wna16_gemm()
    elif check == "one_shot_all_reduce":
        _check_one_shot_all_reduce()
    else:
        raise ValueError(check)


def _check_split_merge() -> None:
    """Split-KV merged by the last segment program == the separate merge launch, bit for
    bit, twice in a row (counters reset): several segments per context, unused segments
    (short contexts), GQA groups 6, 1 and 4, an fp8 cache."""
    import torch

    from tests.gpu import kernel_cases as cases

    from pagellm.ops.triton import paged_attention

    fp8 = torch.float8_e4m3fn
    for seq_lens, splits, heads, kv_heads, head_dim, cache_dtype, max_values in (
            ([5, 70, 130, 300], 5, 6, 1, 80, None, 16384), ([400, 1], 7, 4, 4, 16, fp8, 16384),
            ([333, 64], 3, 8, 2, 16, None, 64)):         # 64: the merge walks 4-dim chunks
        paged_attention.MERGE_MAX_VALUES = max_values
        same_bits, error = cases.check_split_merge(
            seq_lens, splits, num_heads=heads, num_kv_heads=kv_heads, head_dim=head_dim,
            kv_cache_dtype=cache_dtype, device="cpu", dtype=torch.float32)
        assert same_bits and error < 1e-5, seq_lens


def _check_rotary_and_cache() -> None:
    """The fused q/k-norm + rotary + KV-write kernel vs its twin: GQA groups 6, 1 and 4,
    head dims 80, 64 (half rotated) and 128, qk-norm on and off, padding slots, an fp8 cache
    (stored through the KV-write kernel's rounding: the interpreter's fp8 rounding is its
    own) and a bf16 one (the interpreter truncates to bf16: a tolerance, not bits)."""
    import torch

    from tests.gpu import kernel_cases as cases

    cpu = dict(device="cpu", dtype=torch.float32)
    fp32_cases = [dict(num_heads=6, num_kv_heads=1, head_dim=80, qk_norm=True, num_padding=2),
                  dict(num_heads=4, num_kv_heads=4, head_dim=64, rotary_dim=32, qk_norm=False),
                  dict(num_heads=8, num_kv_heads=2, head_dim=128, qk_norm=False, num_padding=1,
                       kv_cache_dtype=torch.float8_e4m3fn, k_scale=0.5, v_scale=2.0,
                       cache_oracle="triton"),
                  dict(num_heads=8, num_kv_heads=2, head_dim=80, qk_norm=True,
                       kv_cache_dtype=torch.float8_e4m3fn, k_scale=2.0, cache_oracle="triton")]
    for case in fp32_cases:
        q_error, cache_error, intact = cases.check_rotary_and_cache(7, **case, **cpu)
        assert q_error < 1e-6 and cache_error < 1e-6 and intact, case
    q_error, cache_error, intact = cases.check_rotary_and_cache(
        6, num_heads=8, num_kv_heads=2, head_dim=64, qk_norm=True, num_padding=1,
        device="cpu", dtype=torch.bfloat16)
    assert q_error < 2e-2 and cache_error < 2e-2 and intact


def _check_wna16_gemm() -> None:
    """The W4A16/W8A16 kernel in both unpack variants: split-K decode with one group per K
    tile and zero points, an act-order g_idx prefill tile, a per-channel 8-bit odd K."""
    import torch

    import pagellm.ops.triton.wna16_gemm as wna16
    from pagellm.ops.quant import pack_int32, wna16_linear_torch

    gen = torch.Generator().manual_seed(0)
    for registers in (True, False):
        wna16.UNPACK_IN_REGISTERS = registers
        for M, K, N, bits, groups, zeros, act_order in ((1, 256, 64, 4, 2, True, False),
                                                        (40, 128, 24, 4, 4, False, True),
                                                        (5, 200, 16, 8, 1, True, False)):
            q = pack_int32(torch.randint(0, 1 << bits, (K, N), generator=gen), bits, 0)
            scales = torch.rand(groups, N, generator=gen) * 0.01
            qzeros = (pack_int32(torch.randint(0, 1 << bits, (groups, N), generator=gen), bits, 1)
                      if zeros else None)
            g_idx = ((torch.randperm(K, generator=gen) // (K // groups)).to(torch.int32)
                     if act_order else None)
            x = torch.randn(M, K, generator=gen)
            ref = wna16_linear_torch(x, q, scales, qzeros, g_idx, bits)
            out = wna16.wna16_gemm_triton(x, q, scales, qzeros, g_idx, bits)
            assert (out - ref).abs().max() / ref.abs().max() < 1e-5, (M, K, N, registers)
    empty = wna16.wna16_gemm_triton(torch.randn(0, K), q, scales, qzeros, g_idx, bits)
    assert empty.shape == (0, N)                  # no rows: nothing launched


def _check_one_shot_all_reduce() -> None:
    """The one-shot all-reduce kernel as rank 1 of 2 and of 3 in one process: the peers'
    pushes into this rank's buffer are written and their barrier flags raised by the test (what
    the peers' kernels do), every slot starts as garbage, so a wrong parity, source slot, rank
    index, row-to-program mapping or flag slot gives a wrong sum; the kernel's own pushes into
    the peers' buffers are checked. Plain and fused with add + RMSNorm; more rows than
    programs; six calls per case (both parities, three times)."""
    import torch

    from pagellm.ops.norm import fused_add_rms_norm
    from pagellm.ops.triton.one_shot_all_reduce import MAX_PROGRAMS, one_shot_all_reduce

    gen = torch.Generator().manual_seed(0)
    slot, rank = 4096, 1
    for world, rows, hidden in ((2, 3, 40), (3, MAX_PROGRAMS + 6, 24)):
        buffers = [torch.randn(2, world, slot, generator=gen) for _ in range(world)]  # garbage
        flags = [torch.zeros(MAX_PROGRAMS, world, dtype=torch.int32) for _ in range(world)]
        counters = torch.zeros(MAX_PROGRAMS, dtype=torch.int32)
        data_ptrs = torch.tensor([b.data_ptr() for b in buffers], dtype=torch.int64)
        flag_ptrs = torch.tensor([f.data_ptr() for f in flags], dtype=torch.int64)
        residual = torch.randn(rows, hidden, generator=gen)
        weight = torch.randn(hidden, generator=gen)
        programs, used = min(rows, MAX_PROGRAMS), rows * hidden
        for epoch in range(1, 7):
            xs = [torch.randn(rows, hidden, generator=gen) for _ in range(world)]
            for peer in range(world):
                if peer != rank:
                    buffers[rank][epoch % 2, peer, :used] = xs[peer].reshape(-1)
                    flags[rank][:programs, peer] = epoch
            total = xs[0] + xs[1] + (xs[2] if world == 3 else 0)
            if epoch % 3:
                got = one_shot_all_reduce(xs[rank], data_ptrs, flag_ptrs, counters, slot, rank,
                                          residual, weight, 1e-6)
                want = fused_add_rms_norm(total, residual, weight, 1e-6)
                assert all(torch.allclose(g, w, atol=1e-5) for g, w in zip(got, want)), epoch
            else:
                got = one_shot_all_reduce(xs[rank], data_ptrs, flag_ptrs, counters, slot, rank)
                assert torch.allclose(got, total, atol=1e-5), epoch
            assert counters[:programs].tolist() == [epoch] * programs
            for peer in range(world):     # pushed its rows and raised its flag on every peer
                pushed = buffers[peer][epoch % 2, rank, :used]
                assert torch.equal(pushed, xs[rank].reshape(-1)), (epoch, peer)
                assert (flags[peer][:programs, rank] == epoch).all() == (peer != rank), peer


if __name__ == "__main__":
    _run(sys.argv[1])
