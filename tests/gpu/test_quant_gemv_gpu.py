"""The weight-only decode GEMVs (``pagellm.ops.triton.quant_gemv``) on CUDA: kernel vs torch
twin at Llama-3.1-8B shapes for M = 1, 2, 4, 8 (bf16; GPTQ-symmetric and AWQ-style
asymmetric int4 with 128-row groups, act-order and 8-bit on one shape, fp8 per-channel and
per-tensor), forced split-K, one GEMV captured in a CUDA graph and replayed on new inputs,
and an engine with CUDA graphs whose decode steps replay captured GEMVs."""

from __future__ import annotations

import gc
import json

import pytest
import torch

from pagellm.ops.triton.quant_gemv import GEMV_CALLS, GemvConfig
from tests.gpu.quant_gemv_cases import check_fp8_gemv, check_wna16_gemv

pytestmark = pytest.mark.gpu

TOLERANCE = 1e-2     # max |kernel - twin| / max |twin|: bf16 output rounding and fp32 order
LLAMA_8B = [(4096, 6144), (4096, 4096), (4096, 28672), (14336, 4096)]   # (K, N)
ROWS = [1, 2, 4, 8]
BF16 = dict(device="cuda", dtype=torch.bfloat16)


@pytest.mark.parametrize("M", ROWS)
@pytest.mark.parametrize("K, N", LLAMA_8B)
@pytest.mark.parametrize("zeros", [False, True])
def test_wna16_gemv_llama_shapes(K, N, M, zeros):
    assert check_wna16_gemv(M, K, N, 4, K // 128, zeros, False, False, **BF16) < TOLERANCE


@pytest.mark.parametrize("M", [1, 5, 8])
@pytest.mark.parametrize("bits, act_order", [(4, True), (8, False), (8, True)])
def test_wna16_gemv_act_order_and_8_bit(M, bits, act_order):
    assert check_wna16_gemv(M, 4096, 4096, bits, 32, True, act_order, True, **BF16) < TOLERANCE


@pytest.mark.parametrize("M", ROWS)
@pytest.mark.parametrize("K, N", LLAMA_8B)
def test_fp8_gemv_llama_shapes(K, N, M):
    assert check_fp8_gemv(M, K, N, True, False, **BF16) < TOLERANCE


@pytest.mark.parametrize("M", [1, 3])
def test_fp8_gemv_per_tensor_fp16_odd_shape(M):
    assert check_fp8_gemv(M, 1000, 4100, False, True, device="cuda",
                          dtype=torch.float16) < TOLERANCE


@pytest.mark.parametrize("M", [1, 7])
def test_forced_split_k_and_odd_shapes(M):
    """The partial-sum buffer and the reduce kernel at launch shapes the rules do not pick
    (7 slices of 64-row W4A16 tiles, 2 rows a program; fp8 with every row in one program),
    and N not a multiple of the column block."""
    split = GemvConfig(block_m=2, block_n=32, block_k=64, split_k=7)
    assert check_wna16_gemv(M, 4096, 1000, 4, 32, True, False, True, **BF16,
                            config=split) < TOLERANCE
    assert check_wna16_gemv(M, 1152, 72, 4, 36, False, False, False, **BF16) < TOLERANCE
    assert check_fp8_gemv(M, 4096, 1000, True, True, **BF16,
                          config=GemvConfig(8, 16, 512, 5)) < TOLERANCE
    # the sweep's other corners: 256-row tiles over 128-row groups (a scale gather per
    # packed row), 128 columns and 8 warps, no split
    wide = GemvConfig(block_m=min(M, 2), block_n=128, block_k=256, split_k=1, num_warps=8)
    assert check_wna16_gemv(M, 4096, 4096, 4, 32, True, False, False, **BF16,
                            config=wide) < TOLERANCE


def test_gemv_replays_in_a_cuda_graph():
    """Captured once (one host-side dispatch), replayed on new inputs: the twin's result."""
    from pagellm.ops.quant import wna16_linear_torch
    from pagellm.ops.triton.quant_gemv import wna16_gemv_triton
    from tests.gpu.quant_gemv_cases import random_wna16, relative_error

    qweight, scales, qzeros, _ = random_wna16(4096, 6144, 4, 32, True, False, torch.bfloat16,
                                              "cuda")
    x = torch.randn(1, 4096, device="cuda", dtype=torch.bfloat16)
    wna16_gemv_triton(x, qweight, scales, qzeros, None, 4)        # compile outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    before = GEMV_CALLS["wna16"]
    with torch.cuda.graph(graph):
        out = wna16_gemv_triton(x, qweight, scales, qzeros, None, 4)
    assert GEMV_CALLS["wna16"] == before + 1
    for seed in range(3):
        x.copy_(torch.randn(1, 4096, device="cuda", generator=torch.Generator(
            device="cuda").manual_seed(seed)))
        graph.replay()
        ref = wna16_linear_torch(x.float(), qweight, scales.float(), qzeros, None, 4)
        assert relative_error(out, ref) < TOLERANCE
    assert GEMV_CALLS["wna16"] == before + 1                      # replays: no host dispatch


@pytest.mark.parametrize("quantization, kind", [("gptq", "wna16"), ("fp8", "fp8")])
def test_engine_decode_replays_captured_gemvs(tmp_path, quantization, kind):
    """A tiny dummy-quantized Llama with CUDA graphs: capturing the sizes up to the kind's
    GEMV row limit (FP8_GEMV_MAX_ROWS / WNA16_GEMV_MAX_ROWS) dispatches the GEMV for every
    linear (2 warm-ups + the capture per size); the decode steps replay the size-1 graph
    without dispatching again; tokens equal the eager engine's."""
    from pagellm.ops.triton.quant_gemv import FP8_GEMV_MAX_ROWS, WNA16_GEMV_MAX_ROWS
    from pagellm import LLM, SamplingParams
    from tests.helpers.tiny_models import make_tiny_model_dir

    model_dir = make_tiny_model_dir(tmp_path, "llama", hidden_size=256, intermediate_size=512)
    config = json.loads((model_dir / "config.json").read_text())
    if quantization == "gptq":
        config["quantization_config"] = {"quant_method": "gptq", "bits": 4, "group_size": 128,
                                         "desc_act": False, "sym": True}
        (model_dir / "config.json").write_text(json.dumps(config))
    linears = 4 * config["num_hidden_layers"]                    # qkv, o, gate_up, down
    sizes = [1, 2, 4, 8]
    common = dict(device="cuda", dtype="bfloat16", load_format="dummy", max_model_len=256,
                  kv_cache_memory_bytes=2**26, max_num_batched_tokens=256,
                  quantization=None if quantization == "gptq" else quantization)
    params = SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True)
    prompt = [list(range(3, 3 + 40))]                  # 40-token prefill: the tile GEMM
    before = GEMV_CALLS[kind]
    llm = LLM(str(model_dir), compilation_config={"cudagraph_capture_sizes": sizes}, **common)
    limit = FP8_GEMV_MAX_ROWS if kind == "fp8" else WNA16_GEMV_MAX_ROWS
    assert GEMV_CALLS[kind] - before >= 3 * len([s for s in sizes if s <= limit]) * linears
    graphs = llm.llm_engine.engine_core.executor.worker.runner.cuda_graphs
    before = GEMV_CALLS[kind]
    tokens = llm.generate(prompt, params, use_tqdm=False)[0].outputs[0].token_ids
    assert graphs.num_replays[1] == params.max_tokens - 1
    assert GEMV_CALLS[kind] == before                  # decode ran only inside the graph
    del llm
    gc.collect()
    torch.cuda.empty_cache()
    eager = LLM(str(model_dir), enforce_eager=True, **common)
    before = GEMV_CALLS[kind]
    assert eager.generate(prompt, params, use_tqdm=False)[0].outputs[0].token_ids == tokens
    assert GEMV_CALLS[kind] - before == (params.max_tokens - 1) * linears
