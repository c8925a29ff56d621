"""AWQ checkpoints (vLLM's ``awq`` / ``awq_marlin``; AutoAWQ's GEMM format), 4-bit.

Per linear module: ``qweight`` int32 [K, N / 8] packed along N, ``qzeros`` int32
[G, N / 8] packed the same way, ``scales`` float16 [G, N]. AutoAWQ's GEMM packing
interleaves the eight columns of a word: word nibble i holds column ``AWQ_PACK_ORDER[i]`` of
its eight. Loaded as written, repacked at load into the GPTQ-style internal layout
(``pagellm.layers.quantization.wna16``); both names run pagellm's fastest W4A16 kernel.
"""

from __future__ import annotations

import torch

from pagellm.errors import ClientError
from pagellm.layers.quantization.base_config import (QuantizationConfig, all_or_none,
                                                     create_quant_param, matches_module)
from pagellm.layers.quantization.wna16 import WNA16LinearMethod, WNA16Spec, dummy_params
from pagellm.ops.quant import pack_int32, unpack_int32

AWQ_PACK_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
"""Column (within a group of eight) stored in nibble i of an AutoAWQ GEMM word."""
AWQ_UNPACK_ORDER = tuple(AWQ_PACK_ORDER.index(i) for i in range(8))
"""Nibble holding column i: (0, 4, 1, 5, 2, 6, 3, 7)."""


class AWQConfig(QuantizationConfig):
    def __init__(self, bits: int, group_size: int, zero_point: bool, version: str = "gemm",
                 modules_to_not_convert: list[str] | None = None):
        problems = []
        if bits != 4:
            problems.append(f"w_bit={bits} (supported: 4)")
        if group_size not in (-1, 32, 64, 128):
            problems.append(f"group_size={group_size} (supported: -1, 32, 64, 128)")
        if not zero_point:
            problems.append("zero_point=false (supported: true)")
        if version.lower() != "gemm":
            problems.append(f"version={version!r} (supported: 'gemm')")
        if problems:
            raise ClientError(f"awq checkpoint not supported: {'; '.join(problems)}",
                              param="quantization")
        self.spec = WNA16Spec(bits, group_size, has_zeros=True, has_g_idx=False)
        self.modules_to_not_convert = modules_to_not_convert or []

    @classmethod
    def get_name(cls) -> str:
        return "awq"

    @classmethod
    def from_config(cls, config: dict) -> "AWQConfig":
        return cls(bits=int(config.get("bits", config.get("w_bit", 4))),
                   group_size=int(config.get("group_size", config.get("q_group_size", 128))),
                   zero_point=bool(config.get("zero_point", True)),
                   version=str(config.get("version", "gemm")),
                   modules_to_not_convert=config.get("modules_to_not_convert"))

    def get_quant_method(self, layer, prefix):
        names = self.checkpoint_names(prefix)
        if all_or_none(names, lambda n: matches_module(n, self.modules_to_not_convert),
                       "awq modules_to_not_convert"):
            return None
        return AWQLinearMethod(self.spec)


class AWQLinearMethod(WNA16LinearMethod):
    method_name = "awq"

    def create_weights(self, layer, input_size_per_partition, output_partition_sizes,
                       input_size, output_size, params_dtype, **extra_weight_attrs):
        layout = self.layout(input_size_per_partition, input_size, output_partition_sizes)
        out_features = sum(output_partition_sizes)
        fills = dummy_params(self.spec)
        group_attrs = layout.group_attrs()
        create_quant_param(layer, "qweight", (input_size_per_partition, out_features // 8),
                           torch.int32, extra_weight_attrs, output_dim=1, input_dim=0,
                           size_divisors={1: 8}, dummy_fill=fills["packed"])
        create_quant_param(layer, "qzeros", (layout.num_groups, out_features // 8), torch.int32,
                           extra_weight_attrs, output_dim=1,
                           input_dim=group_attrs.get("input_dim"),
                           size_divisors={**group_attrs.get("size_divisors", {}), 1: 8},
                           dummy_fill=fills["zeros"])
        create_quant_param(layer, "scales", (layout.num_groups, out_features), params_dtype,
                           extra_weight_attrs, output_dim=1, dummy_fill=fills["scales"],
                           **group_attrs)

    def to_internal(self, layer):
        weight = awq_unpack(layer.qweight.data)                       # [K, N]
        zeros = awq_unpack(layer.qzeros.data)                         # [G, N]
        return pack_int32(weight, 4, dim=0), pack_int32(zeros, 4, dim=1), layer.scales.data, None


def awq_unpack(packed: torch.Tensor) -> torch.Tensor:
    """AutoAWQ GEMM words [R, N / 8] -> int32 values [R, N] in column order."""
    nibbles = unpack_int32(packed, 4, dim=1)                          # [R, N], AWQ order
    rows = nibbles.shape[0]
    order = torch.tensor(AWQ_UNPACK_ORDER, device=packed.device)
    return nibbles.view(rows, -1, 8)[:, :, order].reshape(rows, -1)
