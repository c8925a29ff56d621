"""Cases of the decode GEMVs (``pagellm.ops.triton.quant_gemv``, ``dense_gemv``) against their
torch twins, shared by the GPU tests and the interpreter test (``TRITON_INTERPRET=1``, CPU).
Each ``check_*`` builds a random weight on ``device``, runs kernel and twin (the twin in
float32 on the same bf16/fp16/fp32 inputs) and returns max |kernel - twin| / max |twin|."""

from __future__ import annotations

import torch

from pagellm.ops.quant import (dense_gemv_torch, fp8_weight_only_linear_torch, pack_int32,
                               quantize_fp8_per_channel, wna16_linear_torch)


def random_wna16(K: int, N: int, bits: int, num_groups: int, zeros: bool, act_order: bool,
                 dtype: torch.dtype, device: str, seed: int = 0):
    """(qweight int32 [K / pack, N], scales [G, N] dtype, qzeros [G, N / pack] | None,
    g_idx int32 [K] | None) of the internal layout, random values, on ``device``."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randint(0, 1 << bits, (K, N), generator=gen)                # [K, N]
    scales = (torch.rand(num_groups, N, generator=gen) * 0.02 + 0.002).to(dtype)
    qzeros = (pack_int32(torch.randint(0, 1 << bits, (num_groups, N), generator=gen), bits, 1)
              if zeros else None)
    g_idx = ((torch.randperm(K, generator=gen) // (K // num_groups)).to(torch.int32)
             if act_order else None)
    to_device = lambda t: None if t is None else t.to(device)  # noqa: E731
    return (to_device(pack_int32(q, bits, 0)), to_device(scales), to_device(qzeros),
            to_device(g_idx))


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.float() - ref.float()).abs().max() / ref.float().abs().max()).item()


def check_wna16_gemv(M: int, K: int, N: int, bits: int, num_groups: int, zeros: bool,
                     act_order: bool, bias: bool, device: str, dtype: torch.dtype,
                     config=None, seed: int = 0) -> float:
    from pagellm.ops.triton.quant_gemv import wna16_gemv_triton

    qweight, scales, qzeros, g_idx = random_wna16(K, N, bits, num_groups, zeros, act_order,
                                                  dtype, device, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(M, K, generator=gen).to(device, dtype)
    b = torch.randn(N, generator=gen).to(device, dtype) if bias else None
    out = wna16_gemv_triton(x, qweight, scales, qzeros, g_idx, bits, b, config=config)
    ref = wna16_linear_torch(x.float(), qweight, scales.float(), qzeros, g_idx, bits,
                             None if b is None else b.float())
    assert out.dtype == dtype and out.shape == (M, N)
    return relative_error(out, ref)


def random_fp8(N: int, K: int, per_channel: bool, device: str, seed: int = 0):
    """(weight float8_e4m3fn [N, K], weight_scale float32 [N] or per-tensor [1])."""
    gen = torch.Generator().manual_seed(seed)
    dense = torch.randn(N, K, generator=gen) * 0.02
    if per_channel:
        weight, scale = quantize_fp8_per_channel(dense)
    else:
        scale = (dense.abs().max() / 448.0).reshape(1)
        weight = (dense / scale).to(torch.float8_e4m3fn)
    return weight.to(device), scale.to(device)


def check_fp8_gemv(M: int, K: int, N: int, per_channel: bool, bias: bool, device: str,
                   dtype: torch.dtype, config=None, seed: int = 0) -> float:
    from pagellm.ops.triton.quant_gemv import fp8_gemv_triton

    weight, scale = random_fp8(N, K, per_channel, device, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(M, K, generator=gen).to(device, dtype)
    b = torch.randn(N, generator=gen).to(device, dtype) if bias else None
    out = fp8_gemv_triton(x, weight, scale, b, config=config)
    ref = fp8_weight_only_linear_torch(x.float(), weight, scale, None if b is None else b.float())
    assert out.dtype == dtype and out.shape == (M, N)
    return relative_error(out, ref)


def check_dense_gemv(M: int, K: int, N: int, bias: bool, device: str, dtype: torch.dtype,
                     config=None, seed: int = 0) -> float:
    """The unquantized GEMV (weight [N, K] in ``dtype``) against ``dense_gemv_torch``."""
    from pagellm.ops.triton.dense_gemv import dense_gemv_triton

    gen = torch.Generator().manual_seed(seed)
    weight = (torch.randn(N, K, generator=gen) * 0.02).to(device, dtype)
    x = torch.randn(M, K, generator=gen).to(device, dtype)
    b = torch.randn(N, generator=gen).to(device, dtype) if bias else None
    out = dense_gemv_triton(x, weight, b, config=config)
    ref = dense_gemv_torch(x.float(), weight.float(), None if b is None else b.float())
    assert out.dtype == dtype and out.shape == (M, N)
    return relative_error(out, ref)


def gemv_calls(kind: str, M: int, K: int, N: int, bias: bool, device: str, dtype: torch.dtype,
               seed: int = 0):
    """(x [M, K], call): ``call(config, in_kernel_reduce)`` runs the ``kind`` GEMV ("wna16":
    4-bit, 128-row groups with zero points; "fp8" per channel; "dense") on one fixed random
    weight (+ bias)."""
    from pagellm.ops.triton.dense_gemv import dense_gemv_triton
    from pagellm.ops.triton.quant_gemv import fp8_gemv_triton, wna16_gemv_triton

    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(M, K, generator=gen).to(device, dtype)
    b = torch.randn(N, generator=gen).to(device, dtype) if bias else None
    if kind == "wna16":
        qweight, scales, qzeros, _ = random_wna16(K, N, 4, max(K // 128, 1), True, False, dtype,
                                                  device, seed)
        return x, lambda config, in_kernel: wna16_gemv_triton(
            x, qweight, scales, qzeros, None, 4, b, config, in_kernel)
    if kind == "fp8":
        weight, scale = random_fp8(N, K, True, device, seed)
        return x, lambda config, in_kernel: fp8_gemv_triton(x, weight, scale, b, config,
                                                            in_kernel)
    weight = (torch.randn(N, K, generator=gen) * 0.02).to(device, dtype)
    return x, lambda config, in_kernel: dense_gemv_triton(x, weight, b, config, in_kernel)
