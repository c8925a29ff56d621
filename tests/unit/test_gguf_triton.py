"""GGUF in the GPU layout (``pagellm.ops.gguf``): the layout dequantizes to exactly gguf's
own dequantizer for every kept type (Q6_K's 16-weight groups included), stores the
documented bits per weight, looks embedding rows up, and the Triton GEMM equals its torch
twin under Triton's interpreter (``TRITON_INTERPRET=1``, set before triton is imported, so
in a subprocess running this file's ``__main__``; ~3 s)."""

from __future__ import annotations

import pytest
import torch
from gguf import GGMLQuantizationType as T

from pagellm.layers.gguf_linear import CODE_BITS, GGUFTritonLinearMethod
from pagellm.ops.gguf import dequantize_gguf, gguf_linear_torch, pack_gguf
from tests.helpers.gguf_blocks import random_gguf_weight
from tests.helpers.triton_interpret import run_interpreted

BITS_PER_WEIGHT = {T.Q4_0: 5, T.Q4_1: 5, T.Q8_0: 9, T.Q4_K: 6, T.Q5_K: 7, T.Q6_K: 10}


@pytest.mark.parametrize("qtype", list(CODE_BITS))
def test_layout_dequantizes_to_the_gguf_weight(qtype):
    codes, scale, offset, exact = random_gguf_weight(qtype, 40, 512)
    packed = pack_gguf(codes, scale, offset, CODE_BITS[qtype])
    assert torch.equal(dequantize_gguf(packed), exact)
    ids = torch.tensor([39, 0, 7, 7])
    assert torch.equal(dequantize_gguf(packed, ids), exact[ids])
    stored = sum(t.numel() * t.element_size() * 8 for t in
                 (packed.qweight, packed.qhigh, packed.scales, packed.offsets) if t is not None)
    assert stored == BITS_PER_WEIGHT[qtype] * 40 * 512


def test_linear_method_twin_and_embedding():
    codes, scale, offset, exact = random_gguf_weight(T.Q6_K, 24, 256)
    method, layer = GGUFTritonLinearMethod(6), torch.nn.Module()
    method.create_weights(layer, 256, [24], 256, 24, torch.float32)
    method.set_quantized(layer, codes, scale, offset)
    assert sorted(name for name, _ in layer.named_parameters()) == [
        "offsets", "qhigh", "qweight", "scales"]
    gen = torch.Generator().manual_seed(0)
    x, bias = torch.randn(3, 256, generator=gen), torch.randn(24, generator=gen)
    torch.testing.assert_close(method.apply(layer, x, bias), x @ exact.t() + bias,
                               rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(method.embedding(layer, torch.tensor([5, 23])), exact[[5, 23]])
    packed = method.packed(layer)
    torch.testing.assert_close(gguf_linear_torch(x.double(), packed).float(), x @ exact.t(),
                               rtol=1e-5, atol=1e-4)      # float32 vs float64 accumulation


def test_triton_kernel_in_interpreter():
    pytest.importorskip("triton")
    stdout = run_interpreted("tests.unit.test_gguf_triton")
    assert stdout.count("ok") == len(CODE_BITS) * 3 + 1, stdout


def _run() -> None:
    from tests.gpu.gguf_cases import check_gguf_gemm
    cpu = dict(device="cpu", dtype=torch.float32)
    # decode split-K (M=1), a 2-row decode, a prefill tile (M=65 > 32 rows), odd N
    for qtype in CODE_BITS:
        for M, N, K in [(1, 40, 512), (2, 24, 768), (65, 72, 256)]:
            error = check_gguf_gemm(qtype, M, N, K, bias=M == 2, **cpu)
            assert error < 1e-5, (qtype.name, M, N, K, error)
            print("ok", qtype.name, M, N, K, error)
    from pagellm.ops.triton.gguf_gemm import gguf_gemm_triton
    packed = pack_gguf(*random_gguf_weight(T.Q4_0, 8, 64)[:3], 4)
    assert gguf_gemm_triton(torch.randn(0, 64), packed).shape == (0, 8)   # no rows: no launch
    with pytest.raises(ValueError):
        gguf_gemm_triton(torch.randn(1, 48), packed)
    print("ok errors")


if __name__ == "__main__":
    _run()
