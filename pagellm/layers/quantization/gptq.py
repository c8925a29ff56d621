"""GPTQ checkpoints (vLLM's ``gptq`` / ``gptq_marlin``; written by AutoGPTQ / GPTQModel /
optimum) in their packed format, 4- and 8-bit.

Per linear module: ``qweight`` int32 [K / pack, N] (packed along K, element i of a word in
bits [i * bits, (i + 1) * bits)), ``qzeros`` int32 [G, N / pack] (packed along N), ``scales``
float16 [G, N], ``g_idx`` int32 [K] (used with ``desc_act``). Checkpoint format ``gptq``
(v1, the common one) stores each zero point minus one; ``gptq_v2`` stores it as is. Both
``gptq`` and ``gptq_marlin`` run pagellm's fastest W4A16 kernel
(``pagellm.ops.triton.wna16_gemm``).
"""

from __future__ import annotations

import torch

from pagellm.errors import ClientError
from pagellm.layers.quantization.base_config import (QuantizationConfig, all_or_none,
                                                     create_quant_param, matches_module)
from pagellm.layers.quantization.wna16 import (WNA16LinearMethod, WNA16Spec, create_g_idx,
                                               dummy_params, repeated_int32)
from pagellm.ops.quant import pack_factor, pack_int32, unpack_int32

GPTQ_GROUP_SIZES = (-1, 32, 64, 128)
CHECKPOINT_FORMATS = ("gptq", "gptq_v2")


class GPTQConfig(QuantizationConfig):
    def __init__(self, bits: int, group_size: int, desc_act: bool, sym: bool,
                 checkpoint_format: str = "gptq", modules_to_not_convert: list[str] | None = None):
        problems = []
        if bits not in (4, 8):
            problems.append(f"bits={bits} (supported: 4, 8)")
        if group_size not in GPTQ_GROUP_SIZES:
            problems.append(f"group_size={group_size} (supported: {list(GPTQ_GROUP_SIZES)})")
        if checkpoint_format not in CHECKPOINT_FORMATS:
            problems.append(f"checkpoint_format={checkpoint_format!r} (supported: "
                            f"{list(CHECKPOINT_FORMATS)})")
        if problems:
            raise ClientError(f"gptq checkpoint not supported: {'; '.join(problems)}",
                              param="quantization")
        self.spec = WNA16Spec(bits, group_size, has_zeros=True, has_g_idx=desc_act)
        self.sym = sym
        self.zeros_minus_one = checkpoint_format == "gptq"
        """v1 checkpoints store zero - 1."""
        self.modules_to_not_convert = modules_to_not_convert or []

    @classmethod
    def get_name(cls) -> str:
        return "gptq"

    @classmethod
    def from_config(cls, config: dict) -> "GPTQConfig":
        if config.get("lm_head"):
            raise ClientError("gptq with a quantized lm_head is not supported", param="quantization")
        if config.get("dynamic"):
            raise ClientError("gptq per-module 'dynamic' overrides are not supported",
                              param="quantization")
        return cls(bits=int(config.get("bits", 4)), group_size=int(config.get("group_size", 128)),
                   desc_act=bool(config.get("desc_act", False)), sym=bool(config.get("sym", True)),
                   checkpoint_format=config.get("checkpoint_format", "gptq"),
                   modules_to_not_convert=config.get("modules_to_not_convert"))

    def get_quant_method(self, layer, prefix):
        names = self.checkpoint_names(prefix)
        if all_or_none(names, lambda n: matches_module(n, self.modules_to_not_convert),
                       "gptq modules_to_not_convert"):
            return None
        return GPTQLinearMethod(self)


class GPTQLinearMethod(WNA16LinearMethod):
    method_name = "gptq"

    def __init__(self, config: GPTQConfig):
        super().__init__(config.spec)
        self.config = config

    def create_weights(self, layer, input_size_per_partition, output_partition_sizes,
                       input_size, output_size, params_dtype, **extra_weight_attrs):
        spec, pack = self.spec, pack_factor(self.spec.bits)
        layout = self.layout(input_size_per_partition, input_size, output_partition_sizes)
        out_features = sum(output_partition_sizes)
        fills = dummy_params(spec)
        if self.config.sym:     # what a symmetric checkpoint stores: 2**(bits - 1) (v1: less 1)
            stored = (1 << (spec.bits - 1)) - (1 if self.config.zeros_minus_one else 0)
            fills["zeros"] = lambda full, generator: full.fill_(
                repeated_int32(stored, spec.bits))
        create_quant_param(layer, "qweight", (input_size_per_partition // pack, out_features),
                           torch.int32, extra_weight_attrs, output_dim=1, input_dim=0,
                           size_divisors={0: pack}, dummy_fill=fills["packed"])
        group_attrs = layout.group_attrs()
        create_quant_param(layer, "qzeros", (layout.num_groups, out_features // pack), torch.int32,
                           extra_weight_attrs, output_dim=1,
                           input_dim=group_attrs.get("input_dim"),
                           size_divisors={**group_attrs.get("size_divisors", {}), 1: pack},
                           dummy_fill=fills["zeros"])
        create_quant_param(layer, "scales", (layout.num_groups, out_features), params_dtype,
                           extra_weight_attrs, output_dim=1, dummy_fill=fills["scales"],
                           **group_attrs)
        if spec.has_g_idx:
            create_g_idx(layer, "g_idx", input_size_per_partition, input_size,
                         layout.group_size, extra_weight_attrs)

    def to_internal(self, layer):
        bits = self.spec.bits
        qzeros = layer.qzeros.data
        if self.config.zeros_minus_one:
            zeros = (unpack_int32(qzeros, bits, dim=1) + 1) & ((1 << bits) - 1)
            qzeros = pack_int32(zeros, bits, dim=1)
        g_idx = layer.g_idx.data if self.spec.has_g_idx else None
        return layer.qweight.data, qzeros, layer.scales.data, g_idx
