"""The decode GEMVs' in-kernel split-K reduction (``pagellm.ops.triton.gemv_split_k``) and the
bf16 decode GEMV (``pagellm.ops.triton.dense_gemv``) on CUDA: the bf16 GEMV against its torch
twin at Llama-3.1-8B's TP=1 and TP=2 shapes (LM head included), the in-kernel reduction bit-equal
to the two-launch path for the W4A16, fp8 and bf16 GEMVs with the ticket counters back at 0,
the gate|up GEMV with SiLU-and-mul in its epilogue bit-equal to the GEMV then the SiLU-and-mul
kernel, four split GEMVs captured in one CUDA graph and replayed twice on new inputs (bit-equal
to eager calls, counters at 0), and the unquantized linear method's table-driven dispatch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pagellm.ops.triton.gemv_split_k import split_k_counters
from pagellm.ops.triton.quant_gemv import GEMV_CALLS, TUNED_CONFIGS, GemvConfig
from tests.gpu.quant_gemv_cases import check_dense_gemv, gemv_calls, relative_error

pytestmark = pytest.mark.gpu

TOLERANCE = 1e-2     # max |kernel - twin| / max |twin|: bf16 output rounding and fp32 order
LLAMA_8B = [(4096, 6144), (4096, 4096), (4096, 28672), (14336, 4096), (4096, 128256),
            (4096, 3072), (2048, 4096), (4096, 14336), (7168, 4096), (4096, 64128)]  # (K, N)
BF16 = dict(device="cuda", dtype=torch.bfloat16)


def counters_at_zero() -> bool:
    torch.cuda.synchronize()
    return split_k_counters(torch.device("cuda")).count_nonzero().item() == 0


@pytest.mark.parametrize("M", [1, 2])
@pytest.mark.parametrize("K, N", LLAMA_8B)
def test_dense_gemv_llama_shapes(K, N, M):
    assert check_dense_gemv(M, K, N, False, **BF16) < TOLERANCE
    assert counters_at_zero()


@pytest.mark.parametrize("M", [1, 2, 5])
def test_dense_gemv_forced_split_fp16_odd_shape(M):
    """Split-K with a partial last slice, N not a multiple of the column block, bias, fp16,
    and the sweep's wide corner (32 columns, 8 warps)."""
    for config in (GemvConfig(2, 16, 256, 7), GemvConfig(2, 32, 256, 3, num_warps=8)):
        assert check_dense_gemv(M, 4000, 1000, True, device="cuda", dtype=torch.float16,
                                config=config) < TOLERANCE
    assert counters_at_zero()


@pytest.mark.parametrize("kind", ["wna16", "fp8", "dense"])
@pytest.mark.parametrize("M, bias", [(1, True), (2, False)])
def test_in_kernel_reduce_equals_two_launches(kind, M, bias):
    """Bit-equal outputs at the rules' launch (split-K at these shapes) and at a forced
    7-way split; called twice (the second call needs the counters the first reset)."""
    for (K, N), config in (((4096, 4096), None), ((14336, 4096), GemvConfig(2, 16, 256, 7))):
        x, call = gemv_calls(kind, M, K, N, bias, **BF16)
        two_launches = call(config, False)
        for _ in range(2):
            assert torch.equal(call(config, True), two_launches), (kind, K, N)
            assert counters_at_zero()


@pytest.mark.parametrize("M", [1, 2])
@pytest.mark.parametrize("K, N", [(4096, 28672), (4096, 14336)])
@pytest.mark.parametrize("split", [False, True])
def test_silu_mul_gemv_equals_gemv_then_silu_and_mul(K, N, M, split):
    from pagellm.ops.activation import silu_and_mul
    from pagellm.ops.quant import dense_gemv_torch
    from pagellm.ops.triton.activation import silu_and_mul_triton
    from pagellm.ops.triton.dense_gemv import dense_gemv_silu_mul_triton, dense_gemv_triton

    config = GemvConfig(M, 8, 256, 5 if split else 1)
    weight = torch.randn(N, K, **BF16) * 0.02
    bias = torch.randn(N, **BF16)
    x = torch.randn(M, K, **BF16)
    fused = dense_gemv_silu_mul_triton(x, weight, bias, config)
    assert torch.equal(fused, silu_and_mul_triton(dense_gemv_triton(x, weight, bias, config)))
    ref = silu_and_mul(dense_gemv_torch(x.float(), weight.float(), bias.float()))
    assert relative_error(fused, ref) < 2 * TOLERANCE       # gate, up, silu, product rounded
    assert counters_at_zero()


def test_split_gemvs_replay_in_a_cuda_graph_twice():
    """One graph with a split W4A16, fp8, bf16 and bf16 SiLU-and-mul GEMV (reduced in the
    kernel): two replays on new inputs each give the eager calls' bits, and leave the
    counters at 0."""
    from pagellm.ops.triton.dense_gemv import dense_gemv_silu_mul_triton

    split = GemvConfig(2, 16, 256, 4)
    cases = [gemv_calls(kind, 2, 4096, 2048, True, **BF16) for kind in ("wna16", "fp8", "dense")]
    silu_x = torch.randn(2, 4096, **BF16)
    silu_weight, silu_bias = torch.randn(4096, 4096, **BF16) * 0.02, torch.randn(4096, **BF16)
    cases.append((silu_x, lambda config, in_kernel: dense_gemv_silu_mul_triton(
        silu_x, silu_weight, silu_bias, config)))
    for _, call in cases:
        call(split, True)                                       # compile outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outs = [call(split, True) for _, call in cases]
    for seed in range(2):
        gen = torch.Generator(device="cuda").manual_seed(seed)
        for x, _ in cases:
            x.copy_(torch.randn(x.shape, device="cuda", generator=gen))
        graph.replay()
        assert counters_at_zero()
        for out, (_, call) in zip(outs, cases):
            assert torch.equal(out, call(split, True))


def test_first_split_call_inside_a_capture_takes_the_two_launch_path():
    """Without counters yet, a capture does not create them (they would be zeroed only by the
    first replay): the captured GEMV reduces in a second launch, with the same bits."""
    from pagellm.ops.triton import gemv_split_k as sk

    split = GemvConfig(2, 16, 256, 4)
    x, call = gemv_calls("dense", 2, 4096, 2048, True, **BF16)
    eager = call(split, True)                                   # compiles the kernels
    call(split, False)
    device = torch.device("cuda", torch.cuda.current_device())
    saved = sk._COUNTERS.pop(device)
    try:
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = call(split, True)
        assert device not in sk._COUNTERS
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(out, eager)
    finally:
        sk._COUNTERS[device] = saved


def test_unquantized_linear_takes_the_gemv_only_where_the_table_says():
    from pagellm.layers.linear import UnquantizedLinearMethod
    from pagellm.ops.triton.gemm_launch import num_sms

    sms = num_sms(torch.device("cuda"))
    layer = torch.nn.Module()
    layer.weight = torch.nn.Parameter(torch.randn(3072, 4096, **BF16) * 0.02,
                                      requires_grad=False)
    key = ("bf16", 1, 4096, 3072, sms)
    saved = TUNED_CONFIGS.pop(key, None)
    TUNED_CONFIGS[key] = GemvConfig(1, 16, 256, 4)
    try:
        for rows in (1, 2, 3):
            x = torch.randn(rows, 4096, **BF16)
            before = GEMV_CALLS["bf16"]
            out = UnquantizedLinearMethod().apply(layer, x)
            listed = ("bf16", rows, 4096, 3072, sms) in TUNED_CONFIGS and rows <= 2
            assert GEMV_CALLS["bf16"] - before == listed
            ref = F.linear(x, layer.weight)
            assert relative_error(out, ref) < TOLERANCE
            if not listed:
                assert torch.equal(out, ref)
    finally:
        del TUNED_CONFIGS[key]
        if saved is not None:
            TUNED_CONFIGS[key] = saved


def test_engine_decodes_through_the_tabled_bf16_gemvs(tmp_path):
    """A tiny bf16 Llama whose every linear shape (and the gate|up SiLU-and-mul) is listed in
    the table at M = 1: eager decode steps dispatch the GEMVs (each linear once a step, the
    MLP's gate_up as the fused GEMV), the CUDA-graph engine captures them and replays without
    dispatching, and both give the same greedy tokens."""
    import gc

    from pagellm import LLM, SamplingParams
    from pagellm.layers.linear import LinearBase, UnquantizedLinearMethod
    from pagellm.ops.triton.gemm_launch import num_sms
    from tests.helpers.tiny_models import make_tiny_model_dir

    model_dir = make_tiny_model_dir(tmp_path, "llama", hidden_size=256, intermediate_size=512)
    common = dict(device="cuda", dtype="bfloat16", max_model_len=256,
                  kv_cache_memory_bytes=2**26, max_num_batched_tokens=256)
    params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    prompt = [list(range(3, 3 + 20))]
    eager = LLM(str(model_dir), enforce_eager=True, **common)
    model = eager.llm_engine.engine_core.executor.worker.runner.model
    sms = num_sms(torch.device("cuda"))
    layers = [m for m in model.modules() if isinstance(m, LinearBase)
              and type(m.quant_method) is UnquantizedLinearMethod]
    added = {("bf16", 1, *m.weight.shape[::-1], sms) for m in layers}
    added |= {("bf16_silu_mul", 1, *m.weight.shape[::-1], sms) for m in layers
              if m.prefix.endswith("gate_up_proj")}
    assert all(key not in TUNED_CONFIGS for key in added)
    TUNED_CONFIGS.update({key: GemvConfig(1, 16, 64, 2) for key in added})
    try:
        before = dict(GEMV_CALLS)
        tokens = eager.generate(prompt, params, use_tqdm=False)[0].outputs[0].token_ids
        decode_steps = params.max_tokens - 1
        gate_ups = sum(m.prefix.endswith("gate_up_proj") for m in layers)
        assert GEMV_CALLS["bf16_silu_mul"] - before.get("bf16_silu_mul", 0) == (
            decode_steps * gate_ups)
        assert GEMV_CALLS["bf16"] - before.get("bf16", 0) == decode_steps * (
            len(layers) - gate_ups)                    # qkv, o, down (the prefill: cuBLAS)
        del eager, model
        gc.collect()
        torch.cuda.empty_cache()
        llm = LLM(str(model_dir), compilation_config={"cudagraph_capture_sizes": [1, 2]},
                  **common)
        graphs = llm.llm_engine.engine_core.executor.worker.runner.cuda_graphs
        before = dict(GEMV_CALLS)
        assert llm.generate(prompt, params, use_tqdm=False)[0].outputs[0].token_ids == tokens
        assert graphs.num_replays[1] == decode_steps
        assert GEMV_CALLS == before                    # decode ran only inside the graph
        assert counters_at_zero()
    finally:
        for key in added:
            del TUNED_CONFIGS[key]
