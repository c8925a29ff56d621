"""The dequantizing GGUF GEMM on CUDA against its torch twin: every kept type, decode rows
1..16 (split-K), prefill 128, odd N, bf16 and fp16 activations; and a GGUF model loaded on
CUDA keeps its weights quantized by default (GGUFTritonLinearMethod) with logits close to
the dequantized load."""

from __future__ import annotations

import pytest
import torch
from gguf import GGMLQuantizationType as T

from pagellm.layers.gguf_linear import CODE_BITS, GGUFTritonLinearMethod
from tests.gpu.gguf_cases import check_gguf_gemm

pytestmark = pytest.mark.gpu

TOLERANCE = {torch.bfloat16: 1e-2, torch.float16: 2e-3}
"""‖kernel − twin‖ / ‖twin‖: the dequantized tile is rounded to the activation dtype."""


@pytest.mark.parametrize("qtype", list(CODE_BITS))
@pytest.mark.parametrize("M", [1, 2, 5, 8, 16, 128])
def test_gguf_gemm_matches_twin(qtype, M):
    error = check_gguf_gemm(qtype, M, 1000, 2304, dtype=torch.bfloat16, device="cuda")
    assert error < TOLERANCE[torch.bfloat16], error


@pytest.mark.parametrize("qtype", [T.Q4_1, T.Q6_K, T.Q5_K])
@pytest.mark.parametrize("M, N, K", [(3, 72, 256), (33, 8, 512), (300, 1000, 768),
                                     (1, 49152, 512)])
def test_gguf_gemm_odd_shapes_fp16_bias(qtype, M, N, K):
    error = check_gguf_gemm(qtype, M, N, K, dtype=torch.float16, device="cuda", bias=True)
    assert error < TOLERANCE[torch.float16], error


@pytest.mark.parametrize("qtype", [T.Q4_0, T.Q8_0])
def test_gguf_gemm_k_not_a_multiple_of_256(qtype):
    # 32-weight types may have K = 576 (SmolLM2): tiles of 64 / 32
    for M in (1, 128):
        error = check_gguf_gemm(qtype, M, 1536, 576, dtype=torch.bfloat16, device="cuda")
        assert error < TOLERANCE[torch.bfloat16], error


def test_gguf_model_on_cuda_stays_quantized(tmp_path, monkeypatch):
    from tests.helpers.quantized_gguf import load_both_ways
    quantized, dense, logits_q, logits_d = load_both_ways(tmp_path, monkeypatch, "cuda")
    kinds = {type(m.quant_method) for m in quantized.modules() if hasattr(m, "quant_method")}
    assert GGUFTritonLinearMethod in kinds
    assert not any(n.endswith("proj.weight") for n, _ in quantized.named_parameters())
    rel = ((logits_q.float() - logits_d.float()).norm() / logits_d.float().norm()).item()
    assert rel < 2e-2, rel
