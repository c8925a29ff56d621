"""The weight-only decode GEMVs (``pagellm.ops.triton.quant_gemv``): launch shapes chosen
from (M, N, K) alone, the weight-only fp8 twin, and the kernels against their torch twins
under Triton's interpreter (``TRITON_INTERPRET=1`` must be set before triton is imported,
so those checks run in a subprocess: this file's ``__main__``, ~3 s), including the linear
methods' dispatch (GEMV for <= GEMV_MAX_ROWS rows, the tile GEMM above)."""

from __future__ import annotations

import pytest
import torch

from pagellm.ops.quant import fp8_weight_only_linear_torch, quantize_fp8_per_channel
from tests.helpers.triton_interpret import run_interpreted

H200_SMS = 132


def test_launch_shapes_give_several_programs_per_sm_on_the_h200():
    from pagellm.ops.triton.quant_gemv import (FP8_PROGRAMS_PER_SM, TUNED_CONFIGS,
                                               WNA16_PROGRAMS_PER_SM, GemvConfig,
                                               fp8_gemv_config, split_for, wna16_gemv_config)

    assert not TUNED_CONFIGS or all(key[0] in ("fp8", "wna16", "bf16", "fp16", "bf16_silu_mul")
                                    for key in TUNED_CONFIGS)
    saved = dict(TUNED_CONFIGS)
    TUNED_CONFIGS.clear()                          # the rules, not the H200's measurements
    try:
        # Llama-8B decode, W4A16: 256-column blocks of 64-row K tiles (within one 128-row
        # group), split to >= 4 programs per SM: qkv 24 blocks x 22 slices, o 16 x 32 (512
        # programs), gate_up 112 x 5, down 16 x 32 (7 tiles a slice)
        for (K, N), split in {(4096, 6144): 22, (4096, 4096): 32, (4096, 28672): 5,
                              (14336, 4096): 32}.items():
            for M, block_m in ((1, 1), (2, 2), (5, 2)):
                config = wna16_gemv_config(M, N, K, 4, H200_SMS)
                assert config == GemvConfig(block_m, 256, 64, split, 4, 1), (K, N, M)
                # (the no-empty-slice rounding may keep a few percent under the target)
                assert N // 256 * split >= 0.95 * WNA16_PROGRAMS_PER_SM * H200_SMS
        # fp8: gate_up's 1792 blocks of 16 columns need no split; the others 2-3 slices
        for (K, N), split in {(4096, 6144): 2, (4096, 4096): 3, (4096, 28672): 1,
                              (14336, 4096): 3}.items():
            assert fp8_gemv_config(1, N, K, H200_SMS) == GemvConfig(1, 16, 512, split)
            assert fp8_gemv_config(2, N, K, H200_SMS) == GemvConfig(2, 16, 512, split)
            assert N // 16 * split >= FP8_PROGRAMS_PER_SM * H200_SMS
        # smaller groups: the K tile stays within one group (64, 32), never below 32 rows
        assert wna16_gemv_config(1, 4096, 4096, 4, H200_SMS, 64).block_k == 64
        assert wna16_gemv_config(1, 4096, 4096, 4, H200_SMS, 16).block_k == 32
        assert wna16_gemv_config(1, 4096, 96, 4, H200_SMS, 32).block_k == 32
        # a measured entry replaces the rule for its exact shape (4-bit, tile in one group)
        tuned = GemvConfig(1, 128, 128, 8, 8, 4)
        TUNED_CONFIGS[("wna16", 1, 4096, 4096, H200_SMS)] = tuned
        assert wna16_gemv_config(1, 4096, 4096, 4, H200_SMS) == tuned
        assert wna16_gemv_config(1, 4096, 4096, 8, H200_SMS) != tuned
        assert wna16_gemv_config(1, 4096, 4096, 4, H200_SMS, 64) != tuned
    finally:
        TUNED_CONFIGS.clear()
        TUNED_CONFIGS.update(saved)
    # never an empty slice: one column block on 4 SMs x 2 wants 8 slices of 10 tiles -> 2
    # tiles a slice -> 5 slices
    assert split_for(32, 10 * 512, 32, 512, 4, 2) == 5
    assert split_for(32, 9 * 512 + 1, 32, 512, 4, 2) == 5
    assert split_for(32, 3 * 512, 32, 512, 4, 2) == 3           # fewer tiles than wanted
    assert split_for(1024, 4096, 32, 512, 4, 8) == 1            # 32 blocks fill 4 SMs x 8
    for K in (512, 1000, 4096, 14336):
        config = wna16_gemv_config(1, 256, K, 4, H200_SMS)
        assert (config.split_k - 1) * config.k_per_split(K) < K <= (
            config.split_k * config.k_per_split(K))


def test_fp8_weight_only_twin_multiplies_unquantized_activations():
    gen = torch.Generator().manual_seed(0)
    weight, scale = quantize_fp8_per_channel(torch.randn(24, 40, generator=gen))
    x, bias = torch.randn(3, 40, generator=gen), torch.randn(24, generator=gen)
    dense = weight.double() * scale.double()[:, None]                    # [N, K]
    expected = (x.double() @ dense.t() + bias.double()).float()
    torch.testing.assert_close(fp8_weight_only_linear_torch(x, weight, scale, bias), expected)
    per_tensor = fp8_weight_only_linear_torch(x, weight, scale[:1])      # one scale: [1]
    torch.testing.assert_close(per_tensor, (x.double() @ weight.double().t() * scale[0]).float())


def test_kernels_in_interpreter():
    pytest.importorskip("triton")
    stdout = run_interpreted("tests.unit.test_quant_gemv")
    assert stdout.split() == ["ok"] * 6, stdout


# (M, K, N, bits, groups, zeros, act_order, bias): M 1..5 (M > 2: several row blocks of 2),
# N not a multiple of the column block, one group a tile (group mode 0), 16-row groups
# (several a tile: mode 1), act-order g_idx (mode 2), per-channel 8-bit, split-K (the CPU
# counts as 4 SMs: every case splits) with a partial last slice (K = 1152 = 9 tiles)
WNA16_CASES = [(1, 1024, 40, 4, 8, True, False, True), (2, 96, 24, 4, 3, False, False, False),
               (3, 1024, 72, 4, 2, True, False, False), (4, 512, 48, 4, 4, True, True, True),
               (5, 256, 72, 8, 1, True, False, False), (1, 384, 16, 8, 12, False, True, False),
               (3, 2048, 8, 4, 16, False, False, True), (2, 256, 40, 4, 16, True, False, False),
               (1, 1152, 200, 4, 9, True, False, True)]
# (M, K, N, per_channel, bias)
FP8_CASES = [(1, 1024, 40, True, True), (3, 200, 24, False, False), (5, 64, 100, True, False),
             (2, 1500, 16, False, True)]


def _check_kernels() -> None:
    from tests.gpu.quant_gemv_cases import check_fp8_gemv, check_wna16_gemv

    cpu = dict(device="cpu", dtype=torch.float32)
    for case in WNA16_CASES:
        assert check_wna16_gemv(*case, **cpu) < 1e-5, case
    assert check_wna16_gemv(2, 256, 40, 4, 2, True, False, True, "cpu", torch.bfloat16) < 1e-2
    print("ok")
    for case in FP8_CASES:
        assert check_fp8_gemv(*case, **cpu) < 1e-5, case
    print("ok")
    # launch shapes the rules do not pick (the sweep's): 256-row K tiles over 128-row groups
    # (mode 1), wide column blocks, more slices than tiles of one group, no split at all
    from pagellm.ops.triton.quant_gemv import GemvConfig

    # bfloat16 x read as int32 pairs with K and N whole tiles (EVEN: no masks), symmetric and
    # asymmetric, 4 and 8 bits, 1-3 rows (3: the second row block repeats its last row)
    bf16 = dict(device="cpu", dtype=torch.bfloat16)
    for M, bits, zeros, config in ((1, 4, False, GemvConfig(1, 64, 128, 2)),
                                   (3, 4, True, GemvConfig(2, 32, 64, 3)),
                                   (2, 8, False, GemvConfig(2, 64, 128, 1)),
                                   (1, 8, True, GemvConfig(1, 32, 128, 4))):
        assert check_wna16_gemv(M, 512, 128, bits, 4, zeros, False, True, **bf16,
                                config=config) < 1e-2, (M, bits, zeros, config)
    print("ok")
    for config in (GemvConfig(2, 32, 256, 3), GemvConfig(1, 128, 64, 5, 8, 4),
                   GemvConfig(2, 64, 128, 1)):
        M = config.block_m
        assert check_wna16_gemv(M, 1024, 136, 4, 8, True, False, True, **cpu,
                                config=config) < 1e-5, config
        assert check_fp8_gemv(M, 1024, 40, True, True, **cpu, config=GemvConfig(
            M, 8, 128, config.split_k)) < 1e-5, config
    print("ok")


def _check_edges() -> None:
    from pagellm.ops.triton.quant_gemv import (GEMV_MAX_ROWS, GemvConfig, fp8_gemv_triton,
                                               wna16_gemv_triton)
    from tests.gpu.quant_gemv_cases import random_fp8, random_wna16

    qweight, scales, _, _ = random_wna16(64, 8, 4, 1, False, False, torch.float32, "cpu")
    assert wna16_gemv_triton(torch.randn(0, 64), qweight, scales, None, None, 4).shape == (0, 8)
    weight, scale = random_fp8(8, 64, True, "cpu")
    assert fp8_gemv_triton(torch.randn(2, 3, 64), weight, scale).shape == (2, 3, 8)
    with pytest.raises(ValueError, match="at most 8 rows"):
        fp8_gemv_triton(torch.randn(GEMV_MAX_ROWS + 1, 64), weight, scale)
    with pytest.raises(ValueError, match="1 or 2 rows a program"):
        wna16_gemv_triton(torch.randn(4, 64), qweight, scales, None, None, 4,
                          config=GemvConfig(4, 8, 64, 1))
    print("ok")


def _check_dispatch() -> None:
    """The linear methods take the GEMV for <= FP8_GEMV_MAX_ROWS / WNA16_GEMV_MAX_ROWS rows
    and the W8A8 path / W4A16 tile GEMM above (6 rows: the CUDA logits test's fp8 batch,
    which must quantize its activations like the CPU twin); the CUDA conditions forced true
    (the interpreter runs on CPU)."""
    import pagellm.layers.quantization.fp8 as fp8_module
    import pagellm.layers.quantization.wna16 as wna16_module
    from pagellm.layers.quantization.fp8 import Fp8LinearMethod
    from pagellm.layers.quantization.gptq import GPTQConfig, GPTQLinearMethod
    from pagellm.ops.quant import fp8_linear_torch, wna16_linear_torch
    from pagellm.ops.triton.fp8_quant import quantize_fp8_per_token_triton
    from pagellm.ops.triton.quant_gemv import (FP8_GEMV_MAX_ROWS, GEMV_CALLS,
                                               WNA16_GEMV_MAX_ROWS)
    from tests.gpu.quant_gemv_cases import random_fp8, random_wna16

    wna16_module.use_triton_kernels = fp8_module.use_triton_kernels = lambda x: True
    fp8_module.fp8_tensor_cores = lambda device: True
    layer = torch.nn.Module()
    layer.qweight, layer.scales, layer.qzeros, layer.g_idx = random_wna16(
        256, 24, 4, 2, True, False, torch.float32, "cpu")
    layer.weight, layer.weight_scale = random_fp8(24, 256, True, "cpu")
    layer.scaled_mm_shape_ok = False
    gptq = GPTQLinearMethod(GPTQConfig(bits=4, group_size=128, desc_act=False, sym=False))
    fp8 = Fp8LinearMethod(serialized=True)
    assert FP8_GEMV_MAX_ROWS == 2 and WNA16_GEMV_MAX_ROWS in (1, 2)
    for rows in sorted({1, FP8_GEMV_MAX_ROWS, FP8_GEMV_MAX_ROWS + 1, WNA16_GEMV_MAX_ROWS,
                        WNA16_GEMV_MAX_ROWS + 1, 6}):
        x = torch.randn(rows, 256)
        before = dict(GEMV_CALLS)
        out = gptq.apply(layer, x)
        ref = wna16_linear_torch(x, layer.qweight, layer.scales, layer.qzeros, None, 4)
        assert (out - ref).abs().max() / ref.abs().max() < 1e-5
        fp8_out = fp8.apply(layer, x)
        if rows <= FP8_GEMV_MAX_ROWS:
            fp8_ref = fp8_weight_only_linear_torch(x, layer.weight, layer.weight_scale)
        else:
            fp8_ref = fp8_linear_torch(*quantize_fp8_per_token_triton(x), layer.weight,
                                       layer.weight_scale, x.dtype)   # W8A8, Triton quantizer
        torch.testing.assert_close(fp8_out, fp8_ref, rtol=1e-5, atol=1e-5)
        assert GEMV_CALLS["wna16"] - before.get("wna16", 0) == (rows <= WNA16_GEMV_MAX_ROWS)
        assert GEMV_CALLS["fp8"] - before.get("fp8", 0) == (rows <= FP8_GEMV_MAX_ROWS)
    print("ok")


if __name__ == "__main__":
    _check_kernels()
    _check_edges()
    _check_dispatch()


def test_tuned_configs_file_round_trips_and_rejects_a_malformed_file(tmp_path):
    """The sweep's JSON (``quant_gemv_bench.py --write-configs``) becomes TUNED_CONFIGS entries
    that the config functions return; a file of another shape is a ValueError naming it."""
    import dataclasses
    import json

    from pagellm.ops.triton import quant_gemv as q

    tuned = q.GemvConfig(1, 16, 512, 3, num_warps=8, num_stages=4)
    path = tmp_path / "configs.json"
    path.write_text(json.dumps([[["fp8", 1, 4096, 4096, 132], dataclasses.asdict(tuned)]]))
    saved = dict(q.TUNED_CONFIGS)
    try:
        assert q.load_tuned_configs(str(path)) == 1
        assert q.fp8_gemv_config(1, 4096, 4096, 132) == tuned
        assert q.fp8_gemv_config(1, 4096, 4096, 114) != tuned      # another GPU: the rules
        path.write_text(json.dumps([[["fp8", 1, 4096, 4096, 132], {"block_q": 3}]]))
        with pytest.raises(ValueError, match="configs.json"):
            q.load_tuned_configs(str(path))
    finally:
        q.TUNED_CONFIGS.clear()
        q.TUNED_CONFIGS.update(saved)
