"""Split-K reduced inside the decode GEMVs (``pagellm.ops.triton.gemv_split_k``) and the
unquantized 16-bit GEMV (``pagellm.ops.triton.dense_gemv``) with its table-driven dispatch in
``UnquantizedLinearMethod``. The kernels run under Triton's interpreter in a subprocess (this
file's ``__main__``, ``TRITON_INTERPRET=1``): dense GEMV vs its torch twin on small odd shapes
(forced split-K, bias on/off, M = 1, 2, 3), the in-kernel reduction bit-equal to the two-launch
path for all three GEMVs with the ticket counters back at 0 after each call, the merged
gate|up GEMV with SiLU-and-mul in its epilogue bit-equal to the GEMV then the SiLU-and-mul
kernel, and the linear layers' dispatch."""

from __future__ import annotations

import pytest
import torch

from pagellm.ops.quant import dense_gemv_torch
from pagellm.ops.triton.quant_gemv import GemvConfig
from tests.helpers.triton_interpret import run_interpreted


def test_dense_twin_adds_the_bias_in_float32_before_the_cast():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 40, generator=gen).to(torch.bfloat16)
    weight = torch.randn(24, 40, generator=gen).to(torch.bfloat16)
    bias = torch.randn(24, generator=gen).to(torch.bfloat16)
    exact = x.double() @ weight.double().t() + bias.double()
    out = dense_gemv_torch(x, weight, bias)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, exact.float().to(torch.bfloat16))


def test_dense_gemv_runs_only_at_measured_shapes():
    """``tuned_dense_gemv_config``: a TUNED_CONFIGS entry of the weight's kind for exactly
    (M, K, N, SMs), and None for other row counts, dtypes, a float32 weight or a 3D x."""
    from pagellm.ops.triton import quant_gemv as q
    from pagellm.ops.triton.dense_gemv import dense_gemv_config, tuned_dense_gemv_config

    tuned = GemvConfig(1, 16, 256, 3)
    weight = torch.zeros(24, 64, dtype=torch.bfloat16)
    saved = dict(q.TUNED_CONFIGS)
    q.TUNED_CONFIGS[("bf16", 1, 64, 24, 4)] = tuned                  # CPU tensors: 4 SMs
    try:
        assert tuned_dense_gemv_config(torch.zeros(1, 64, dtype=torch.bfloat16), weight) == tuned
        assert tuned_dense_gemv_config(torch.zeros(2, 64, dtype=torch.bfloat16), weight) is None
        assert tuned_dense_gemv_config(torch.zeros(1, 64), weight) is None      # x float32
        assert tuned_dense_gemv_config(torch.zeros(1, 64, dtype=torch.float16),
                                       weight.half()) is None                   # kind fp16
        assert tuned_dense_gemv_config(torch.zeros(1, 1, 64, dtype=torch.bfloat16),
                                       weight) is None
    finally:
        q.TUNED_CONFIGS.clear()
        q.TUNED_CONFIGS.update(saved)
    # the rule (the benchmark's default): 8 KB tiles, split to 4 programs per SM
    assert dense_gemv_config(1, 4096, 4096, 132) == GemvConfig(1, 16, 256, 3)
    assert dense_gemv_config(2, 28672, 4096, 132) == GemvConfig(2, 16, 256, 1)
    assert dense_gemv_config(1, 24, 40, 4) == GemvConfig(1, 16, 64, 1)


def test_kernels_in_interpreter():
    pytest.importorskip("triton")
    stdout = run_interpreted("tests.unit.test_gemv_split_k")
    assert stdout.split() == ["ok"] * 4, stdout


# (M, K, N, bias, config): split-K with a partial last slice and an empty one (K = 333 in
# 64-row tiles, 4 slices of 128 rows), N not a multiple of the column block, 2 row blocks
# (M = 3), no split, and the rules' launch (None)
DENSE_CASES = [(1, 1000, 40, True, GemvConfig(1, 16, 128, 3)),
               (2, 333, 24, False, GemvConfig(2, 8, 64, 4)),
               (3, 200, 24, True, GemvConfig(2, 8, 64, 2)),
               (2, 96, 17, True, GemvConfig(2, 16, 32, 1)),
               (1, 520, 9, False, None)]
# (kind, config): forced splits of a K = 640 weight (5 tiles of 128 rows: slices of 2, 2, 1)
SPLIT_CASES = [("wna16", GemvConfig(2, 32, 128, 3)), ("fp8", GemvConfig(2, 8, 128, 3)),
               ("dense", GemvConfig(2, 8, 64, 5))]


def _check_dense() -> None:
    from tests.gpu.quant_gemv_cases import check_dense_gemv

    for M, K, N, bias, config in DENSE_CASES:
        error = check_dense_gemv(M, K, N, bias, "cpu", torch.float32, config)
        assert error < 1e-5, (M, K, N, bias, config, error)
    assert check_dense_gemv(2, 333, 24, True, "cpu", torch.bfloat16,
                            GemvConfig(2, 8, 64, 4)) < 1e-2
    print("ok")


class _CountingKernel:
    """Stands in the module's place for ``_split_k_reduce_kernel`` and counts its launches
    (the real kernel still runs)."""

    def __init__(self, kernel):
        self.kernel, self.launches = kernel, 0

    def __getitem__(self, grid):
        self.launches += 1
        return self.kernel[grid]


def _check_in_kernel_reduce() -> None:
    """In-kernel reduction == two launches bit for bit, without the reduce launch; counters
    at 0 after every call (a second call, which needs them at 0, gives the same bits); more
    output tiles than counters fall back to two launches."""
    from pagellm.ops.triton import gemv_split_k as sk
    from tests.gpu.quant_gemv_cases import gemv_calls

    reduce_kernel = sk._split_k_reduce_kernel = _CountingKernel(sk._split_k_reduce_kernel)
    counters = sk.split_k_counters(torch.device("cpu"))
    for (kind, config), (M, bias) in zip(SPLIT_CASES * 2, [(1, True)] * 3 + [(2, False)] * 3):
        x, call = gemv_calls(kind, M, 640, 40, bias, "cpu", torch.bfloat16)
        two_launches = call(config, False)
        assert reduce_kernel.launches == 1, kind
        for _ in range(2):
            in_kernel = call(config, True)
            assert reduce_kernel.launches == 1, kind
            assert torch.equal(in_kernel, two_launches), (kind, M)
            assert counters.count_nonzero() == 0, kind
        reduce_kernel.launches = 0
    saved, sk.MAX_SPLIT_K_TILES = sk.MAX_SPLIT_K_TILES, 4         # 5 column blocks > 4
    try:
        assert torch.equal(call(config, True), two_launches)
        assert reduce_kernel.launches == 1
    finally:
        sk.MAX_SPLIT_K_TILES = saved
    print("ok")


def _check_silu_mul() -> None:
    """The fused gate|up GEMV == dense GEMV + silu_and_mul_triton bit for bit (split in the
    kernel or not, bias on/off, M = 1, 2), close to the torch twins; counters at 0; too many
    output tiles for the counters is a ValueError (no second launch applies the SiLU)."""
    from pagellm.ops.activation import silu_and_mul
    from pagellm.ops.triton import gemv_split_k as sk
    from pagellm.ops.triton.activation import silu_and_mul_triton
    from pagellm.ops.triton.dense_gemv import dense_gemv_silu_mul_triton, dense_gemv_triton

    gen = torch.Generator().manual_seed(3)
    for M, bias, config in ((1, True, GemvConfig(1, 8, 64, 3)), (2, False, GemvConfig(2, 8, 64, 4)),
                            (2, True, GemvConfig(2, 16, 128, 1))):
        weight = (torch.randn(2 * 20, 300, generator=gen) * 0.05).to(torch.bfloat16)  # [2d, K]
        x = torch.randn(M, 300, generator=gen).to(torch.bfloat16)
        b = torch.randn(2 * 20, generator=gen).to(torch.bfloat16) if bias else None
        fused = dense_gemv_silu_mul_triton(x, weight, b, config)
        assert fused.shape == (M, 20)
        two_step = dense_gemv_triton(x, weight, b, config)
        assert torch.equal(fused, silu_and_mul_triton(two_step)), (M, bias, config)
        ref = silu_and_mul(dense_gemv_torch(x.float(), weight.float(), None if b is None
                                            else b.float()))
        assert ((fused.float() - ref).abs().max() / ref.abs().max()) < 2e-2
        assert sk.split_k_counters(torch.device("cpu")).count_nonzero() == 0
    saved, sk.MAX_SPLIT_K_TILES = sk.MAX_SPLIT_K_TILES, 2          # 3 column blocks > 2
    try:
        with pytest.raises(ValueError, match="only be added in the kernel"):
            dense_gemv_silu_mul_triton(x, weight, b, GemvConfig(2, 8, 64, 4))
    finally:
        sk.MAX_SPLIT_K_TILES = saved
    print("ok")


def _check_linear_dispatch() -> None:
    """UnquantizedLinearMethod on "CUDA" (forced: the interpreter runs on CPU): the GEMV at
    the shape the table lists (M = 1, bf16), F.linear at M = 2 and for float32 weights."""
    import torch.nn.functional as F

    import pagellm.layers.linear as linear_module
    from pagellm.layers.linear import UnquantizedLinearMethod
    from pagellm.ops.triton.quant_gemv import GEMV_CALLS, TUNED_CONFIGS

    linear_module.use_triton_kernels = lambda x: True
    _check_merged_silu_mul_dispatch()
    TUNED_CONFIGS[("bf16", 1, 200, 24, 4)] = GemvConfig(1, 8, 64, 2)
    TUNED_CONFIGS[("fp16", 1, 200, 24, 4)] = GemvConfig(1, 8, 64, 2)   # not bf16: unused
    gen = torch.Generator().manual_seed(0)
    layer = torch.nn.Module()
    layer.weight = torch.nn.Parameter((torch.randn(24, 200, generator=gen) * 0.05).to(
        torch.bfloat16), requires_grad=False)
    bias = torch.randn(24, generator=gen).to(torch.bfloat16)
    method = UnquantizedLinearMethod()
    start = dict(GEMV_CALLS)
    for rows, gemv in ((1, True), (2, False)):
        x = torch.randn(rows, 200, generator=gen).to(torch.bfloat16)
        before = GEMV_CALLS["bf16"]
        out = method.apply(layer, x, bias)
        assert GEMV_CALLS["bf16"] - before == gemv
        if gemv:
            ref = dense_gemv_torch(x, layer.weight, bias)
            assert ((out.float() - ref.float()).abs().max() / ref.float().abs().max()) < 1e-2
        else:
            assert torch.equal(out, F.linear(x, layer.weight, bias))
    layer.weight = torch.nn.Parameter(layer.weight.float(), requires_grad=False)
    x = torch.randn(1, 200, generator=gen)
    assert torch.equal(method.apply(layer, x), linear_module.linear(x, layer.weight))
    assert GEMV_CALLS["fp16"] == start.get("fp16", 0)
    assert GEMV_CALLS["bf16"] == start["bf16"] + 1
    print("ok")


def _check_merged_silu_mul_dispatch() -> None:
    """MergedColumnParallelLinear.forward_silu_and_mul: the fused GEMV where the table lists
    kind bf16_silu_mul for the shape, None at other row counts, under LoRA-like wrapped
    methods, and for gate/up pieces of different widths."""
    from pagellm.layers.linear import MergedColumnParallelLinear
    from pagellm.ops.activation import silu_and_mul
    from pagellm.ops.triton.quant_gemv import GEMV_CALLS, TUNED_CONFIGS

    TUNED_CONFIGS[("bf16_silu_mul", 1, 64, 48, 4)] = GemvConfig(1, 8, 32, 2)
    layer = MergedColumnParallelLinear(64, [24, 24], bias=True, params_dtype=torch.bfloat16)
    gen = torch.Generator().manual_seed(5)
    layer.weight.data.copy_(torch.randn(48, 64, generator=gen) * 0.1)
    layer.bias.data.copy_(torch.randn(48, generator=gen))
    x = torch.randn(1, 64, generator=gen).to(torch.bfloat16)
    before = GEMV_CALLS["bf16_silu_mul"]
    fused = layer.forward_silu_and_mul(x)
    assert GEMV_CALLS["bf16_silu_mul"] == before + 1
    ref = silu_and_mul(layer(x))                       # bf16 product: no table entry, F.linear
    assert fused.shape == (1, 24)             # bf16 rounding of gate, up, silu, product
    assert (fused.float() - ref.float()).abs().max() / ref.float().abs().max() < 3e-2
    assert layer.forward_silu_and_mul(torch.randn(2, 64).to(torch.bfloat16)) is None
    uneven = MergedColumnParallelLinear(64, [16, 32], bias=False, params_dtype=torch.bfloat16)
    TUNED_CONFIGS[("bf16_silu_mul", 1, 64, 48, 4)] = GemvConfig(1, 8, 32, 2)
    assert uneven.forward_silu_and_mul(x) is None
    layer.quant_method = type("Wrapped", (type(layer.quant_method),), {})()   # e.g. LoRA's
    assert layer.forward_silu_and_mul(x) is None
    assert GEMV_CALLS["bf16_silu_mul"] == before + 1


if __name__ == "__main__":
    _check_dense()
    _check_in_kernel_reduce()
    _check_silu_mul()
    _check_linear_dispatch()
