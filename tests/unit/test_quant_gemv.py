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


def test_launch_shapes_fill_the_h200_and_split_only_narrow_layers():
    from pagellm.ops.triton.quant_gemv import (GemvConfig, fp8_gemv_config, split_for,
                                               wna16_gemv_config)

    # Llama-8B decode: every layer has >= 128 column blocks of 32 int4 columns: no split
    for K, N in ((4096, 6144), (4096, 4096), (4096, 28672), (14336, 4096)):
        assert wna16_gemv_config(1, N, K, 4, H200_SMS) == GemvConfig(1, 32, 512, 1)
        assert fp8_gemv_config(1, N, K, H200_SMS) == GemvConfig(1, 16, 512, 1)
    # more rows: smaller K tiles (the products stay at 32 registers a thread)
    assert wna16_gemv_config(3, 4096, 4096, 4, H200_SMS) == GemvConfig(4, 32, 256, 1)
    assert wna16_gemv_config(8, 4096, 4096, 8, H200_SMS) == GemvConfig(8, 32, 64, 1)
    # a narrow layer (TP-sharded o_proj, 1024 columns = 32 blocks) splits K into 8 slices
    narrow = wna16_gemv_config(1, 1024, 4096, 4, H200_SMS)
    assert narrow.split_k == 8 and narrow.k_per_split(4096) == 512
    # never an empty slice: one column block on 4 SMs wants 8 slices of 10 tiles -> 2 tiles
    # a slice -> 5 slices
    assert split_for(32, 10 * 512, 32, 512, 4) == 5
    assert split_for(32, 9 * 512 + 1, 32, 512, 4) == 5
    assert split_for(32, 3 * 512, 32, 512, 4) == 3           # fewer tiles than wanted
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
    assert stdout.split() == ["ok"] * 4, stdout


# (M, K, N, bits, groups, zeros, act_order, bias): M 1..5, N not a multiple of 32, several
# groups per tile (group mode 1), one group a tile (mode 0), act-order g_idx (mode 2),
# per-channel 8-bit, split-K (4 interpreter "SMs": few column blocks split) and not
WNA16_CASES = [(1, 1024, 40, 4, 8, True, False, True), (2, 96, 24, 4, 3, False, False, False),
               (3, 1024, 72, 4, 2, True, False, False), (4, 512, 48, 4, 4, True, True, True),
               (5, 256, 72, 8, 1, True, False, False), (1, 384, 16, 8, 12, False, True, False),
               (3, 2048, 8, 4, 16, False, False, True)]
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


def _check_edges() -> None:
    from pagellm.ops.triton.quant_gemv import GEMV_MAX_ROWS, fp8_gemv_triton, wna16_gemv_triton
    from tests.gpu.quant_gemv_cases import random_fp8, random_wna16

    qweight, scales, _, _ = random_wna16(64, 8, 4, 1, False, False, torch.float32, "cpu")
    assert wna16_gemv_triton(torch.randn(0, 64), qweight, scales, None, None, 4).shape == (0, 8)
    weight, scale = random_fp8(8, 64, True, "cpu")
    assert fp8_gemv_triton(torch.randn(2, 3, 64), weight, scale).shape == (2, 3, 8)
    with pytest.raises(ValueError, match="at most 8 rows"):
        fp8_gemv_triton(torch.randn(GEMV_MAX_ROWS + 1, 64), weight, scale)
    print("ok")


def _check_dispatch() -> None:
    """The linear methods take the GEMV for <= GEMV_MAX_ROWS rows and the W4A16 tile GEMM /
    W8A8 path above (the CUDA conditions forced true: the interpreter runs on CPU)."""
    import pagellm.layers.quantization.fp8 as fp8_module
    import pagellm.layers.quantization.wna16 as wna16_module
    from pagellm.layers.quantization.fp8 import Fp8LinearMethod
    from pagellm.layers.quantization.gptq import GPTQConfig, GPTQLinearMethod
    from pagellm.ops.quant import fp8_linear_torch, wna16_linear_torch
    from pagellm.ops.triton.fp8_quant import quantize_fp8_per_token_triton
    from pagellm.ops.triton.quant_gemv import GEMV_CALLS, GEMV_MAX_ROWS
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
    for rows, gemv_calls in ((GEMV_MAX_ROWS, 1), (GEMV_MAX_ROWS + 1, 0)):
        x = torch.randn(rows, 256)
        before = dict(GEMV_CALLS)
        out = gptq.apply(layer, x)
        ref = wna16_linear_torch(x, layer.qweight, layer.scales, layer.qzeros, None, 4)
        assert (out - ref).abs().max() / ref.abs().max() < 1e-5
        fp8_out = fp8.apply(layer, x)
        if gemv_calls:
            fp8_ref = fp8_weight_only_linear_torch(x, layer.weight, layer.weight_scale)
        else:
            fp8_ref = fp8_linear_torch(*quantize_fp8_per_token_triton(x), layer.weight,
                                       layer.weight_scale, x.dtype)   # W8A8, Triton quantizer
        torch.testing.assert_close(fp8_out, fp8_ref, rtol=1e-5, atol=1e-5)
        assert GEMV_CALLS["wna16"] - before.get("wna16", 0) == gemv_calls
        assert GEMV_CALLS["fp8"] - before.get("fp8", 0) == gemv_calls
    print("ok")


if __name__ == "__main__":
    _check_kernels()
    _check_edges()
    _check_dispatch()
