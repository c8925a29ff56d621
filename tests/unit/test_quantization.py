"""Quantization configs and twins: which method a checkpoint and ``quantization=`` give (and
the errors naming what is supported), the packing helpers against the published formats
(AutoAWQ's own unpacking), the fp8 / int8 twins against hand computations, and quantized
dummy weights (fp8 at load, random GPTQ words) at their quantized size."""

from __future__ import annotations

import json

import pytest
import torch

from pagellm.errors import ClientError
from pagellm.layers.linear import ColumnParallelLinear
from pagellm.layers.quantization import QUANTIZATION_METHODS, get_quantization_config
from pagellm.layers.quantization.awq import AWQConfig, awq_unpack
from pagellm.layers.quantization.compressed_tensors import CompressedTensorsConfig
from pagellm.layers.quantization.fp8 import Fp8Config
from pagellm.layers.quantization.gptq import GPTQConfig
from pagellm.models import load_hf_config, load_model
from pagellm.models.loader import LoadStats
from pagellm.ops.quant import (dequantize_wna16, fp8_linear_torch, int8_linear, pack_int32,
                               quantize_fp8_per_token, quantize_int8_per_token, unpack_int32)
from tests.helpers.quantized_models import TINY_QUANT_SHAPES
from tests.helpers.tiny_models import make_tiny_model_dir

GPTQ = {"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": False, "sym": True}
AWQ = {"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": True, "version": "gemm"}


class Config:
    """An HF config stand-in with only what the resolver reads."""

    def __init__(self, quantization_config=None):
        if quantization_config is not None:
            self.quantization_config = quantization_config


def test_registry_has_vllm_names():
    assert set(QUANTIZATION_METHODS) == {"fp8", "awq", "awq_marlin", "gptq", "gptq_marlin",
                                         "compressed-tensors"}


@pytest.mark.parametrize("checkpoint, quantization, expected", [
    (GPTQ, None, GPTQConfig), (GPTQ, "gptq", GPTQConfig), (GPTQ, "gptq_marlin", GPTQConfig),
    (AWQ, None, AWQConfig), (AWQ, "awq_marlin", AWQConfig),
    ({"quant_method": "fp8", "activation_scheme": "dynamic"}, "fp8", Fp8Config),
    (None, None, type(None)), (None, "fp8", Fp8Config),
])
def test_checkpoint_and_argument_pick_the_method(tmp_path, checkpoint, quantization, expected):
    config = get_quantization_config(str(tmp_path), Config(checkpoint), quantization)
    assert type(config) is expected
    if isinstance(config, Fp8Config):
        assert config.is_checkpoint_fp8_serialized == (checkpoint is not None)


@pytest.mark.parametrize("checkpoint, quantization, message", [
    (None, "bitsandbytes", "quantization='bitsandbytes' is not supported; supported: fp8, awq, "
                           "awq_marlin, gptq, gptq_marlin, compressed-tensors"),
    (GPTQ, "awq", "quantization='awq' does not match the checkpoint's quantization method "
                  "'gptq'; leave quantization unset or use gptq, gptq_marlin"),
    (AWQ, "fp8", "does not match the checkpoint's quantization method 'awq'"),
    (None, "gptq", "needs a checkpoint quantized with gptq"),
    ({"quant_method": "bitsandbytes"}, None, "method 'bitsandbytes' is not supported; supported"),
    ({**GPTQ, "bits": 3}, None, r"bits=3 \(supported: 4, 8\)"),
    ({**GPTQ, "group_size": 256}, None, r"group_size=256 \(supported: \[-1, 32, 64, 128\]\)"),
    ({**AWQ, "version": "gemv"}, None, "version='gemv'"),
    ({**AWQ, "bits": 8}, None, r"w_bit=8 \(supported: 4\)"),
    ({"quant_method": "fp8", "weight_block_size": [128, 128]}, None, "block-wise fp8"),
    ({"quant_method": "compressed-tensors", "config_groups": {"g": {
        "targets": ["Linear"], "format": "nvfp4-pack-quantized",
        "weights": {"num_bits": 4, "type": "float", "strategy": "tensor_group"}}}},
     None, "compressed-tensors scheme not supported.*supported: W4A16 / W8A16"),
    ({"quant_method": "compressed-tensors", "quantization_status": "frozen",
      "config_groups": {"g": {}}}, None, "quantization_status 'frozen'"),
])
def test_unsupported_or_mismatched_is_a_client_error(tmp_path, checkpoint, quantization, message):
    with pytest.raises(ClientError, match=message) as error:
        get_quantization_config(str(tmp_path), Config(checkpoint), quantization)
    assert error.value.param == "quantization"


def test_legacy_quantize_config_json_is_gptq(tmp_path):
    (tmp_path / "quantize_config.json").write_text(json.dumps(
        {"bits": 8, "group_size": 64, "desc_act": True, "sym": False}))
    config = get_quantization_config(str(tmp_path), Config(), "gptq_marlin")
    assert isinstance(config, GPTQConfig)
    assert (config.spec.bits, config.spec.group_size, config.spec.has_g_idx) == (8, 64, True)


def test_compressed_tensors_ignore_and_fused_schemes():
    config = CompressedTensorsConfig.from_config({"config_groups": {
        "a": {"targets": ["re:.*self_attn.*"], "format": "pack-quantized",
              "weights": {"num_bits": 4, "type": "int", "strategy": "group", "group_size": 32}},
        "b": {"targets": ["re:.*mlp.gate_proj"], "format": "pack-quantized",
              "weights": {"num_bits": 8, "type": "int", "strategy": "channel"}}},
        "ignore": ["model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.k_proj",
                   "model.layers.1.self_attn.v_proj"]})
    assert config.get_quant_method(None, "model.layers.0.self_attn.qkv_proj").spec.bits == 4
    assert config.get_quant_method(None, "model.layers.1.self_attn.qkv_proj") is None
    with pytest.raises(ClientError, match="different compressed-tensors schemes"):
        config.get_quant_method(None, "model.layers.0.mlp.gate_up_proj")


@pytest.mark.parametrize("bits", [4, 8])
def test_pack_unpack_round_trip_follows_gptq_bit_order(bits):
    values = torch.randint(0, 1 << bits, (16, 6))
    packed = pack_int32(values, bits, dim=0)                   # [16 / pack, 6]
    assert packed.dtype == torch.int32 and packed.shape == (16 * bits // 32, 6)
    assert torch.equal(unpack_int32(packed, bits, dim=0), values)
    word = int(packed[0, 0]) & 0xFFFFFFFF                      # value i at bits [i*b, (i+1)*b)
    assert [(word >> (bits * i)) & ((1 << bits) - 1) for i in range(32 // bits)] == \
        values[:32 // bits, 0].tolist()


def test_awq_unpack_matches_autoawq():
    from awq.utils.packing_utils import reverse_awq_order, unpack_awq

    generator = torch.Generator().manual_seed(0)
    qweight = torch.randint(-2**31, 2**31 - 1, (8, 4), generator=generator, dtype=torch.int32)
    qzeros = torch.randint(-2**31, 2**31 - 1, (2, 4), generator=generator, dtype=torch.int32)
    iweight, izeros = reverse_awq_order(*unpack_awq(qweight, qzeros, 4), 4)
    assert torch.equal(awq_unpack(qweight), iweight & 15)
    assert torch.equal(awq_unpack(qzeros), izeros & 15)


def test_wna16_twin_with_act_order_matches_row_by_row_reference():
    generator = torch.Generator().manual_seed(1)
    q = torch.randint(0, 16, (64, 16), generator=generator)
    zeros = torch.randint(0, 16, (4, 16), generator=generator)
    scales = torch.rand(4, 16, generator=generator)
    g_idx = torch.randperm(64, generator=generator) % 4
    weight = dequantize_wna16(pack_int32(q, 4, 0), scales, pack_int32(zeros, 4, 1),
                              g_idx.to(torch.int32), 4)
    for k in (0, 17, 63):
        expected = (q[k] - zeros[g_idx[k]]).float() * scales[g_idx[k]]
        torch.testing.assert_close(weight[k], expected)
    symmetric = dequantize_wna16(pack_int32(q, 4, 0), scales, None, None, 4)
    torch.testing.assert_close(symmetric[20], (q[20] - 8).float() * scales[20 // 16])


def test_fp8_twin_quantizes_each_token_to_its_range():
    x = torch.tensor([[1.0, -2.0, 0.5], [0.0, 0.0, 0.0], [300.0, 1.0, -448.0]])
    x_q, scale = quantize_fp8_per_token(x)
    assert x_q.dtype == torch.float8_e4m3fn
    torch.testing.assert_close(scale[:, 0], torch.tensor([2.0 / 448, 1 / (448 * 512), 1.0]))
    assert x_q.float().abs().amax(dim=1).tolist() == [448.0, 0.0, 448.0]
    weight = torch.tensor([[1.0, 2.0, 3.0]]).to(torch.float8_e4m3fn)
    out = fp8_linear_torch(x_q, scale, weight, torch.tensor([0.5]), torch.float32)
    expected = (x_q.float() * scale) @ torch.tensor([[0.5], [1.0], [1.5]])
    torch.testing.assert_close(out, expected)


def test_int8_twin_is_exact_integer_gemm():
    x = torch.tensor([[0.5, -1.0, 0.25, 1.0]])
    x_q, scale = quantize_int8_per_token(x)
    assert x_q.tolist() == [[64, -127, 32, 127]] and scale.item() == pytest.approx(1 / 127.5)
    weight = torch.tensor([[1, 2, 3, 4], [-1, 0, 1, 0]], dtype=torch.int8)
    out = int8_linear(x_q, scale, weight, torch.tensor([0.1, 2.0]), torch.float32)
    integer = torch.tensor([64 - 254 + 96 + 508, -64 + 32], dtype=torch.float32)
    torch.testing.assert_close(out[0], integer * scale[0, 0] * torch.tensor([0.1, 2.0]))


def test_online_fp8_layer_keeps_only_fp8_weights():
    layer = ColumnParallelLinear(32, 16, bias=True, quant_config=Fp8Config(), prefix="x.o_proj")
    weight = torch.randn(16, 32)
    layer.weight_loader(layer.weight, weight)
    layer.weight_loader(layer.bias, torch.zeros(16))
    layer.quant_method.process_weights_after_loading(layer)
    assert layer.weight.dtype == torch.float8_e4m3fn and layer.weight_scale.shape == (16,)
    torch.testing.assert_close(layer.weight.float() * layer.weight_scale[:, None], weight,
                               rtol=0.07, atol=0)
    x = torch.randn(3, 32)
    out, dense = layer(x), x @ weight.t()
    assert (out - dense).norm() / dense.norm() < 0.05        # e4m3: 3 mantissa bits


CT_W8A8_INT8 = {"quant_method": "compressed-tensors", "config_groups": {"g": {
    "targets": ["Linear"], "format": "int-quantized",
    "weights": {"num_bits": 8, "type": "int", "strategy": "channel", "symmetric": True},
    "input_activations": {"num_bits": 8, "type": "int", "strategy": "token", "dynamic": True}}}}
CT_W4A16_ASYM = {"quant_method": "compressed-tensors", "config_groups": {"g": {
    "targets": ["Linear"], "format": "pack-quantized",
    "weights": {"num_bits": 4, "type": "int", "strategy": "group", "group_size": 64,
                "symmetric": False}}}}


@pytest.mark.parametrize("quantization_config, quantization, bytes_per_linear_weight", [
    (None, "fp8", 1.0), (GPTQ, None, 0.5), ({**GPTQ, "desc_act": True, "bits": 8}, None, 1.0),
    (AWQ, "awq_marlin", 0.5), ({"quant_method": "fp8", "activation_scheme": "static"}, None, 1.0),
    (CT_W8A8_INT8, None, 1.0), (CT_W4A16_ASYM, None, 0.5),
    ({**CT_W8A8_INT8, "config_groups": {"g": {**CT_W8A8_INT8["config_groups"]["g"],
      "input_activations": {"num_bits": 8, "type": "int", "strategy": "tensor",
                            "dynamic": False}}}}, None, 1.0)])
def test_dummy_load_creates_quantized_weights(tmp_path, quantization_config, quantization,
                                              bytes_per_linear_weight):
    model_dir = make_tiny_model_dir(tmp_path, "llama", **TINY_QUANT_SHAPES)
    if quantization_config:
        config = json.loads((model_dir / "config.json").read_text())
        (model_dir / "config.json").write_text(json.dumps(
            {**config, "quantization_config": quantization_config}))
    hf_config = load_hf_config(str(model_dir))
    models = []
    for _ in range(2):
        stats = LoadStats()
        models.append(load_model(str(model_dir), hf_config, "dummy", torch.float32,
                                 torch.device("cpu"), seed=3, stats=stats,
                                 quantization=quantization))
    layer = models[0].model.layers[0].mlp.down_proj              # [128, 256]
    weight = layer.qweight if hasattr(layer, "qweight") else layer.weight
    assert weight.numel() * weight.element_size() == 128 * 256 * bytes_per_linear_weight
    second = dict(models[1].named_parameters())
    assert all(torch.equal(p.float(), second[n].float()) for n, p in models[0].named_parameters())
    out = models[0].model.layers[0].mlp(torch.randn(2, 128))
    assert out.shape == (2, 128) and torch.isfinite(out).all() and out.abs().max() > 0


@pytest.mark.parametrize("sym", [True, False])
def test_symmetric_gptq_drops_its_stored_zero_points(tmp_path, sym):
    """A symmetric GPTQ checkpoint stores qzeros that are all 2**(bits - 1) (v1: minus one);
    the loaded layer drops them (the kernels' path without zero points) and computes the same
    product as with them; an asymmetric one keeps its zero points."""
    from pagellm.layers.quantization.wna16 import repeated_int32, symmetric_zeros
    from pagellm.ops.quant import wna16_linear_torch

    assert repeated_int32(8, 4) == 0x88888888 - (1 << 32)
    assert repeated_int32(128, 8) == 0x80808080 - (1 << 32)
    assert symmetric_zeros(torch.full((2, 3), repeated_int32(8, 4), dtype=torch.int32), 4)
    assert not symmetric_zeros(torch.full((2, 3), repeated_int32(7, 4), dtype=torch.int32), 4)
    model_dir = make_tiny_model_dir(tmp_path, "llama", **TINY_QUANT_SHAPES)
    config = json.loads((model_dir / "config.json").read_text())
    (model_dir / "config.json").write_text(json.dumps(
        {**config, "quantization_config": {**GPTQ, "sym": sym}}))
    model = load_model(str(model_dir), load_hf_config(str(model_dir)), "dummy", torch.float32,
                       torch.device("cpu"), seed=3, stats=LoadStats())
    layer = model.model.layers[0].mlp.down_proj
    assert (layer.qzeros is None) == sym
    x = torch.randn(3, 256)
    eights = torch.full((layer.scales.shape[0], 128 // 8), repeated_int32(8, 4),
                        dtype=torch.int32)
    reference = wna16_linear_torch(x, layer.qweight, layer.scales,
                                   eights if sym else layer.qzeros, None, 4)
    torch.testing.assert_close(layer.quant_method.apply(layer, x), reference)


def test_gguf_checkpoints_keep_their_quantization_and_names_are_checked_early(tmp_path):
    """A .gguf model takes no other quantization (fp8 would requantize its dequantized blocks:
    a tester found it silently accepted); ``gguf`` is accepted for it and refused elsewhere;
    an unknown name fails when the config is built, before any process starts."""
    from pagellm.config.model import QUANTIZATION_NAMES, ModelConfig
    from pagellm.layers.quantization import GGUF

    assert set(QUANTIZATION_NAMES) == set(QUANTIZATION_METHODS) | {GGUF}
    gguf = str(tmp_path / "model.Q4_1.gguf")
    assert get_quantization_config(gguf, None, None) is None
    assert get_quantization_config(gguf, None, "gguf") is None
    for name in ("fp8", "gptq_marlin"):
        with pytest.raises(ClientError, match="does not apply to a GGUF checkpoint"):
            get_quantization_config(gguf, None, name)
    model_dir = make_tiny_model_dir(tmp_path, "llama", **TINY_QUANT_SHAPES)
    with pytest.raises(ClientError, match="needs a .gguf model file"):
        get_quantization_config(str(model_dir), load_hf_config(str(model_dir)), "gguf")
    with pytest.raises(ClientError, match="quantization must be one of"):
        ModelConfig(quantization="GPTQ")
    assert ModelConfig(quantization="gguf").quantization == "gguf"
