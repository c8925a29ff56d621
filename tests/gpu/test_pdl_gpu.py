"""Programmatic dependent launch of the decode GEMVs (``pagellm.ops.triton.pdl``) on a Hopper
GPU: a GEMV launched early really waits for the kernel before it (a slow writer of its input,
which lets dependents launch first thing), a decoder-layer-like chain (RMSNorm, GEMV, gate|up
GEMV with SiLU-and-mul, GEMV) captured in a CUDA graph with PDL on equals eager launches with
PDL off bit for bit over several replays on new inputs, and the split-K counters are back at 0."""

from __future__ import annotations

import pytest
import torch
import triton
import triton.language as tl

from pagellm.ops.triton import pdl
from pagellm.ops.triton.dense_gemv import dense_gemv_silu_mul_triton, dense_gemv_triton
from pagellm.ops.triton.gemv_split_k import split_k_counters
from pagellm.ops.triton.norm import fused_add_rms_norm_triton
from pagellm.ops.triton.quant_gemv import GemvConfig

pytestmark = pytest.mark.gpu

BF16 = dict(device="cuda", dtype=torch.bfloat16)


@pytest.fixture(autouse=True)
def _hopper():
    if torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("programmatic dependent launch needs sm_90+")
    assert pdl.pdl_enabled(torch.device("cuda"))


@triton.jit
def _slow_writer_kernel(out_ptr, value_ptr, n, spins, BLOCK: tl.constexpr):
    """Lets dependents launch, burns ``spins`` dependent iterations, then writes value -> out
    (unchanged: plus 0 times the burnt number)."""
    pdl.launch_dependents()
    offs = tl.arange(0, BLOCK)
    value = tl.load(value_ptr + offs, mask=offs < n, other=0.0)
    burn = value.to(tl.float32)
    for _ in range(spins):
        burn = burn * 1.0000001 + 1e-30
    tl.store(out_ptr + offs, (value.to(tl.float32) + burn * 0.0).to(out_ptr.dtype.element_ty),
             mask=offs < n)


def test_gemv_waits_for_a_slow_writer_of_its_input():
    """The writer runs ~100 µs and writes x at its very end; the PDL GEMV, launched as soon as
    the writer starts and prefetching its weight meanwhile, must read the new x (not the zeros
    left there), in eager launches and in a CUDA graph."""
    K, N = 4096, 3072
    weight = torch.randn(N, K, **BF16) / 64
    value = torch.randn(1, K, **BF16)
    x = torch.zeros(1, K, **BF16)
    config = GemvConfig(1, 16, 256, 4)
    want = dense_gemv_triton(value, weight, config=config)

    def step():
        _slow_writer_kernel[(1,)](x, value, K, 20000, BLOCK=4096, num_warps=8)
        return dense_gemv_triton(x, weight, config=config)

    for _ in range(3):
        x.zero_()
        assert torch.equal(step(), want)
    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        step()
        with torch.cuda.graph(graph, stream=stream):
            out = step()
    torch.cuda.current_stream().wait_stream(stream)
    for _ in range(3):
        x.zero_()
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(out, want)


def _layer_chain(hidden, residual, norm_weight, qkv, gate_up, down):
    """Four layers of norm -> GEMV -> gate|up GEMV + SiLU-and-mul -> GEMV (the decode MLP's
    launch pattern, the qkv GEMV feeding the residual to keep the chain dependent)."""
    for _ in range(4):
        normed, residual = fused_add_rms_norm_triton(hidden, residual, norm_weight, 1e-5)
        q = dense_gemv_triton(normed, qkv)
        activated = dense_gemv_silu_mul_triton(q, gate_up, config=GemvConfig(1, 16, 256, 4))
        hidden = dense_gemv_triton(activated, down, config=GemvConfig(1, 16, 256, 8))
    return hidden, residual


def test_layer_chain_graph_with_pdl_equals_eager_without(monkeypatch):
    K, F = 4096, 7168
    gen = torch.Generator("cuda").manual_seed(0)
    qkv = torch.randn(K, K, generator=gen, **BF16) / 64
    gate_up = torch.randn(2 * F, K, generator=gen, **BF16) / 64
    down = torch.randn(K, F, generator=gen, **BF16) / 96
    norm_weight = torch.rand(K, generator=gen, **BF16) + 0.5
    hidden = torch.randn(1, K, generator=gen, **BF16)
    residual = torch.randn(1, K, generator=gen, **BF16)

    monkeypatch.setenv("PAGELLM_PDL", "0")
    assert not pdl.pdl_enabled(torch.device("cuda"))
    wants = []
    inputs = [(hidden * (i + 1), residual - i) for i in range(3)]
    for h, r in inputs:
        wants.append(_layer_chain(h, r, norm_weight, qkv, gate_up, down))
    monkeypatch.setenv("PAGELLM_PDL", "1")
    static_h, static_r = hidden.clone(), residual.clone()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        _layer_chain(static_h, static_r, norm_weight, qkv, gate_up, down)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream):
            out_h, out_r = _layer_chain(static_h, static_r, norm_weight, qkv, gate_up, down)
    torch.cuda.current_stream().wait_stream(stream)
    for (h, r), (want_h, want_r) in zip(inputs, wants):
        static_h.copy_(h)
        static_r.copy_(r)
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(out_h, want_h) and torch.equal(out_r, want_r)
    assert split_k_counters(torch.device("cuda")).count_nonzero().item() == 0
