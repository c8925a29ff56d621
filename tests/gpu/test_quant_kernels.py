"""Quantized GEMMs on CUDA against their torch twins (pagellm.ops.quant): the Triton
W4A16/W8A16 kernel (both unpack variants, decode split-K and prefill tiles, odd shapes,
group boundaries inside and across K tiles, act-order g_idx, zero points or none), the fp8
``torch._scaled_mm`` path, int8 ``torch._int_mm``, and a tiny quantized model end to end
(CUDA logits close to the CPU twin path on the same checkpoint)."""

from __future__ import annotations

import pytest
import torch

import pagellm.ops.triton.wna16_gemm as wna16
from pagellm.ops.quant import (fp8_linear, fp8_linear_torch, int8_linear, pack_int32,
                               quantize_fp8_per_channel, quantize_fp8_per_token,
                               quantize_int8_per_token, scaled_mm_supported, wna16_linear_torch)

pytestmark = pytest.mark.gpu

TOLERANCE = 1e-2     # max |kernel - twin| / max |twin|, bf16 / fp16


def random_wna16(K: int, N: int, bits: int, group: int, zeros: bool, act_order: bool,
                 dtype: torch.dtype, seed: int = 0):
    """A random weight of the internal layout on CUDA: (qweight, scales, qzeros, g_idx)."""
    gen = torch.Generator().manual_seed(seed)
    num_groups = 1 if group == -1 else K // group
    q = torch.randint(0, 1 << bits, (K, N), generator=gen)
    scales = (torch.rand(num_groups, N, generator=gen) * 0.02 + 0.002).to(dtype)
    qzeros = (pack_int32(torch.randint(0, 1 << bits, (num_groups, N), generator=gen), bits, 1)
              if zeros else None)
    g_idx = ((torch.randperm(K, generator=gen) // (K // num_groups)).to(torch.int32)
             if act_order else None)
    to_cuda = lambda t: None if t is None else t.cuda()  # noqa: E731
    return to_cuda(pack_int32(q, bits, 0)), to_cuda(scales), to_cuda(qzeros), to_cuda(g_idx)


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.float() - ref.float()).abs().max() / ref.float().abs().max()).item()


# (M, K, N, group): decode rows 1/7/32, prefill 33/300; K with 1..32 groups, N odd multiples of 8
SHAPES = [(1, 4096, 4096, 128), (7, 1024, 264, 64), (32, 320, 520, 32), (33, 2048, 1000, 128),
          (300, 1024, 776, -1), (1, 11008, 4096, 128), (5, 96, 8, 32)]


# (shape, bits, dtype, unpack variant): every shape in bf16 at 4 and 8 bits with the default
# unpack; fp16 and the row-wise unpack on a decode, a prefill and an odd shape (compiles are
# the slow part: each combination of the kernel's constants is one)
KERNEL_CASES = ([(shape, bits, torch.bfloat16, "registers") for shape in SHAPES for bits in (4, 8)]
                + [(SHAPES[i], 4, torch.float16, "registers") for i in (0, 3, 6)]
                + [(SHAPES[i], 4, torch.bfloat16, "rows") for i in (0, 3, 6)])


@pytest.mark.parametrize("shape, bits, dtype, unpack", KERNEL_CASES)
@pytest.mark.parametrize("zeros, act_order", [(False, False), (True, False), (True, True)])
def test_wna16_kernel_matches_twin(shape, bits, dtype, unpack, zeros, act_order, monkeypatch):
    M, K, N, group = shape
    if act_order and group == -1:
        group = 32                            # act-order needs groups
    monkeypatch.setattr(wna16, "UNPACK_IN_REGISTERS", unpack == "registers")
    qweight, scales, qzeros, g_idx = random_wna16(K, N, bits, group, zeros, act_order, dtype)
    x = torch.randn(M, K, device="cuda", dtype=dtype)
    bias = torch.randn(N, device="cuda", dtype=dtype)
    out = wna16.wna16_gemm_triton(x, qweight, scales, qzeros, g_idx, bits, bias)
    ref = wna16_linear_torch(x.float(), qweight, scales.float(), qzeros, g_idx, bits, bias.float())
    assert out.dtype == dtype and out.shape == (M, N)
    assert relative_error(out, ref) < TOLERANCE


def test_wna16_decode_uses_split_k():
    config = wna16.launch_config(1, 4096, 4096, 128, False, 4, 132)
    assert config["split_k"] > 1 and config["one_group"]
    assert wna16.launch_config(512, 4096, 4096, 128, False, 4, 132)["split_k"] == 1


@pytest.mark.parametrize("rows", [1, 16, 77, 512])
def test_fp8_scaled_mm_matches_emulation(rows):
    gen = torch.Generator(device="cuda").manual_seed(rows)
    weight, weight_scale = quantize_fp8_per_channel(
        torch.randn(1024, 512, device="cuda", generator=gen, dtype=torch.bfloat16) * 0.02)
    assert scaled_mm_supported(weight)
    x = torch.randn(rows, 512, device="cuda", generator=gen, dtype=torch.bfloat16)
    x_q, x_scale = quantize_fp8_per_token(x)
    out = fp8_linear(x_q, x_scale, weight, weight_scale, torch.bfloat16, use_scaled_mm=True)
    ref = fp8_linear_torch(x_q, x_scale, weight, weight_scale, torch.float32)
    assert relative_error(out, ref) < TOLERANCE


@pytest.mark.parametrize("rows", [1, 16, 17, 200])
def test_int8_int_mm_matches_cpu(rows):
    gen = torch.Generator().manual_seed(rows)
    weight = torch.randint(-127, 128, (256, 512), generator=gen, dtype=torch.int8)
    weight_scale = torch.rand(256, generator=gen) * 0.01
    x = torch.randn(rows, 512, generator=gen)
    x_q, x_scale = quantize_int8_per_token(x)
    cpu = int8_linear(x_q, x_scale, weight, weight_scale, torch.float32)
    cuda = int8_linear(x_q.cuda(), x_scale.cuda(), weight.cuda(), weight_scale.cuda(),
                       torch.float32)
    torch.testing.assert_close(cuda.cpu(), cpu, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("quantization", ["fp8", "gptq"])
def test_quantized_dummy_model_cuda_matches_cpu_path(tmp_path, quantization, monkeypatch):
    """The same dummy-quantized tiny model (weights generated on CPU, moved to CUDA): the
    CUDA path (Triton / _scaled_mm) gives the CPU twins' logits within bf16 error."""
    import json

    from pagellm.models.hf_config import load_hf_config
    from pagellm.models.loader import load_model
    from tests.helpers.paged import build_attn_metadata, positions_for, random_block_tables
    from tests.helpers.tiny_models import make_tiny_model_dir

    model_dir = make_tiny_model_dir(tmp_path, "llama", hidden_size=256, intermediate_size=512)
    if quantization == "gptq":
        config = json.loads((model_dir / "config.json").read_text())
        config["quantization_config"] = {"quant_method": "gptq", "bits": 4, "group_size": 128,
                                         "desc_act": False, "sym": True}
        (model_dir / "config.json").write_text(json.dumps(config))
    hf_config = load_hf_config(str(model_dir))
    cpu = load_model(str(model_dir), hf_config, "dummy", torch.bfloat16, torch.device("cpu"),
                     quantization=quantization)
    gpu = load_model(str(model_dir), hf_config, "dummy", torch.bfloat16, torch.device("cpu"),
                     quantization=quantization).cuda()
    query_lens = [5, 1]
    tables = random_block_tables([8, 8], 4, 16, torch.Generator().manual_seed(0))
    ids = torch.tensor([3, 9, 27, 81, 243, 7])
    positions = positions_for(query_lens, query_lens)

    def logits(model, device):
        caches = [torch.zeros(2, 16, 4, model.num_kv_heads, model.head_dim, dtype=model.dtype,
                              device=device) for _ in range(model.num_layers)]
        meta = build_attn_metadata(query_lens, query_lens, tables, 4, device=device)
        hidden = model(ids.to(device), positions.to(device), caches, meta)
        return model.compute_logits(hidden).float().cpu()

    with torch.no_grad():
        assert relative_error(logits(gpu, "cuda"), logits(cpu, "cpu")) < 5e-2


@pytest.mark.parametrize("shape", [(1, 4096), (7, 14336), (300, 100), (2, 5000)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_fp8_per_token_quant_kernel_matches_twin(shape, dtype):
    from pagellm.ops.triton.fp8_quant import quantize_fp8_per_token_triton

    gen = torch.Generator(device="cuda").manual_seed(shape[0])
    x = torch.randn(shape, device="cuda", generator=gen, dtype=dtype)
    x[0] *= 100.0
    if shape[0] > 1:
        x[1] = 0.0                           # an all-zero token: the scale floor
    q, scale = quantize_fp8_per_token_triton(x)
    q_ref, scale_ref = quantize_fp8_per_token(x)
    torch.testing.assert_close(scale, scale_ref, rtol=0, atol=0)
    assert torch.equal(q.float(), q_ref.float())
