"""compressed-tensors checkpoints (vLLM's ``compressed-tensors``), as llm-compressor writes
them: ``config_groups`` map module targets to a scheme; ``ignore`` lists modules left dense.

Supported schemes (anything else is a ClientError listing these):
- W4A16 / W8A16, ``pack-quantized``: ``weight_packed`` int32 [N, K / pack] (packed along K,
  values offset by 2**(bits - 1)), ``weight_scale`` [N, G], asymmetric ``weight_zero_point``
  int32 [N / pack, G] (packed along N), actorder-group ``weight_g_idx`` [K]; strategy group
  or channel -> the shared W4A16/W8A16 layout and kernel (``wna16``).
- W8A8-FP8, ``float-quantized``: fp8 ``weight`` [N, K], ``weight_scale`` per tensor [1] or
  per channel [N, 1]; activations dynamic per token or static ``input_scale`` -> ``fp8``.
- W8A8-INT8, ``int-quantized``: int8 ``weight`` [N, K] with symmetric per-channel (or
  per-tensor) scales; activations symmetric int8, dynamic per token or static per tensor;
  int32 accumulation through ``torch._int_mm``.
"""

from __future__ import annotations

import torch

from pagellm.errors import ClientError
from pagellm.layers.linear import LinearMethodBase
from pagellm.layers.quantization.base_config import (QuantizationConfig, all_or_none,
                                                     create_per_shard_scalar, create_quant_param,
                                                     matches_module, replace_param)
from pagellm.layers.quantization.fp8 import Fp8LinearMethod
from pagellm.layers.quantization.wna16 import (WNA16LinearMethod, WNA16Spec, create_g_idx,
                                               dummy_params)
from pagellm.ops.quant import (int8_linear, pack_factor, pack_int32, quantize_int8_per_token,
                               quantize_int8_static, unpack_int32)

SUPPORTED_SCHEMES = ("W4A16 / W8A16 (pack-quantized int weights, group or channel scales, "
                     "symmetric or asymmetric, actorder)",
                     "W8A8-FP8 (float-quantized, per-tensor or per-channel weight scales, "
                     "dynamic per-token or static activations)",
                     "W8A8-INT8 (int-quantized, symmetric per-channel weights, symmetric "
                     "dynamic per-token or static activations)")


class CompressedTensorsConfig(QuantizationConfig):
    def __init__(self, config_groups: dict, ignore: list[str], quant_format: str | None):
        self.config_groups = config_groups
        self.ignore = ignore
        self.quant_format = quant_format

    @classmethod
    def get_name(cls) -> str:
        return "compressed-tensors"

    @classmethod
    def from_config(cls, config: dict) -> "CompressedTensorsConfig":
        status = config.get("quantization_status", "compressed")
        if status != "compressed":
            raise ClientError(f"compressed-tensors quantization_status {status!r} is not "
                              "supported; supported: 'compressed' (save with "
                              "save_compressed=True)", param="quantization")
        if config.get("sparsity_config"):
            raise ClientError("compressed-tensors sparsity is not supported", param="quantization")
        groups = config.get("config_groups") or {}
        if not groups:
            raise ClientError("compressed-tensors config has no config_groups", param="quantization")
        parsed = cls(groups, list(config.get("ignore") or []), config.get("format"))
        for group in groups.values():       # fail at startup, not at the first layer
            parsed.method_for(group)
        return parsed

    def get_quant_method(self, layer, prefix):
        names = self.checkpoint_names(prefix)
        if all_or_none(names, lambda n: matches_module(n, self.ignore), "compressed-tensors ignore"):
            return None
        group_names = {name: self._group_of(name) for name in names}
        if len(set(group_names.values())) > 1:
            raise ClientError(f"the pieces {sorted(group_names)} fused into one pagellm layer "
                              f"use different compressed-tensors schemes {group_names}",
                              param="model")
        group = next(iter(group_names.values()))
        return None if group is None else self.method_for(self.config_groups[group])

    def _group_of(self, name: str) -> str | None:
        """The config group whose targets match checkpoint module ``name`` (a linear)."""
        for group_name, group in self.config_groups.items():
            targets = group.get("targets") or []
            if "Linear" in targets or matches_module(name, targets):
                return group_name
        return None

    def method_for(self, group: dict) -> LinearMethodBase:
        """The linear method of one config group's scheme; ClientError if unsupported."""
        weights = group.get("weights") or {}
        inputs = group.get("input_activations")
        fmt = group.get("format") or self.quant_format
        w_type, w_bits = weights.get("type"), weights.get("num_bits")
        w_strategy = weights.get("strategy")
        if group.get("output_activations"):
            return _unsupported(group)
        if w_type == "int" and inputs is None and fmt == "pack-quantized" \
                and w_strategy in ("group", "channel") and w_bits in (4, 8):
            actorder = weights.get("actorder")
            group_size = -1 if w_strategy == "channel" else int(weights.get("group_size") or 0)
            return CompressedTensorsWNA16(WNA16Spec(
                w_bits, group_size, has_zeros=not weights.get("symmetric", True),
                has_g_idx=actorder == "group"))
        if w_type == "float" and w_bits == 8 and fmt == "float-quantized" and inputs \
                and inputs.get("type") == "float" and inputs.get("num_bits") == 8 \
                and w_strategy in ("tensor", "channel") and _activation_ok(inputs):
            return Fp8LinearMethod(serialized=True, weight_per_channel=w_strategy == "channel",
                                   static_input=not inputs.get("dynamic"))
        if w_type == "int" and w_bits == 8 and fmt == "int-quantized" and inputs \
                and inputs.get("type") == "int" and inputs.get("num_bits") == 8 \
                and w_strategy in ("tensor", "channel") and weights.get("symmetric", True) \
                and inputs.get("symmetric", True) and _activation_ok(inputs):
            return CompressedTensorsW8A8Int8(per_channel=w_strategy == "channel",
                                             static_input=not inputs.get("dynamic"))
        return _unsupported(group)


def _activation_ok(inputs: dict) -> bool:
    """Dynamic per-token or static per-tensor activation quantization."""
    return (inputs.get("dynamic") and inputs.get("strategy") == "token") or \
        (not inputs.get("dynamic") and inputs.get("strategy") == "tensor")


def _unsupported(group: dict):
    raise ClientError(f"compressed-tensors scheme not supported: weights={group.get('weights')}, "
                      f"input_activations={group.get('input_activations')}, format="
                      f"{group.get('format')!r}; supported: {'; '.join(SUPPORTED_SCHEMES)}",
                      param="quantization")


class CompressedTensorsWNA16(WNA16LinearMethod):
    """pack-quantized W4A16 / W8A16 (module docstring)."""

    method_name = "compressed-tensors"

    def create_weights(self, layer, input_size_per_partition, output_partition_sizes,
                       input_size, output_size, params_dtype, **extra_weight_attrs):
        spec, pack = self.spec, pack_factor(self.spec.bits)
        layout = self.layout(input_size_per_partition, input_size, output_partition_sizes)
        out_features = sum(output_partition_sizes)
        fills = dummy_params(spec)
        group_attrs = layout.group_attrs(dim=1)
        create_quant_param(layer, "weight_packed", (out_features, input_size_per_partition // pack),
                           torch.int32, extra_weight_attrs, output_dim=0, input_dim=1,
                           size_divisors={1: pack}, dummy_fill=fills["packed"])
        create_quant_param(layer, "weight_scale", (out_features, layout.num_groups), params_dtype,
                           extra_weight_attrs, output_dim=0, dummy_fill=fills["scales"],
                           **group_attrs)
        if spec.has_zeros:
            create_quant_param(layer, "weight_zero_point", (out_features // pack, layout.num_groups),
                               torch.int32, extra_weight_attrs, output_dim=0,
                               input_dim=group_attrs.get("input_dim"),
                               size_divisors={**group_attrs.get("size_divisors", {}), 0: pack},
                               dummy_fill=fills["zeros"])
        if spec.has_g_idx:
            create_g_idx(layer, "weight_g_idx", input_size_per_partition, input_size,
                         layout.group_size, extra_weight_attrs)

    def to_internal(self, layer):
        bits = self.spec.bits
        values = unpack_int32(layer.weight_packed.data, bits, dim=1)         # [N, K]
        qweight = pack_int32(values.t(), bits, dim=0)                        # [K / pack, N]
        qzeros = None
        if self.spec.has_zeros:
            zeros = unpack_int32(layer.weight_zero_point.data, bits, dim=0)  # [N, G]
            qzeros = pack_int32(zeros.t(), bits, dim=1)                      # [G, N / pack]
        g_idx = layer.weight_g_idx.data if self.spec.has_g_idx else None
        return qweight, qzeros, layer.weight_scale.data.t(), g_idx


class CompressedTensorsW8A8Int8(LinearMethodBase):
    """int8 weights [N, K] with float32 per-channel scales; int8 activations."""

    def __init__(self, per_channel: bool, static_input: bool):
        self.per_channel = per_channel
        self.static_input = static_input

    def create_weights(self, layer, input_size_per_partition, output_partition_sizes,
                       input_size, output_size, params_dtype, **extra_weight_attrs):
        layer.logical_widths = list(output_partition_sizes)
        out_features = sum(output_partition_sizes)
        create_quant_param(layer, "weight", (out_features, input_size_per_partition), torch.int8,
                           extra_weight_attrs, output_dim=0, input_dim=1, dummy_fill=_dummy_int8)
        if self.per_channel:
            create_quant_param(layer, "weight_scale", (out_features, 1), torch.float32,
                               extra_weight_attrs, output_dim=0,
                               dummy_fill=lambda full, g: full.fill_(0.02 / 64))
        else:
            create_per_shard_scalar(layer, "weight_scale", extra_weight_attrs, 0.02 / 64)
        if self.static_input:
            create_per_shard_scalar(layer, "input_scale", extra_weight_attrs, 1.0 / 127)

    def process_weights_after_loading(self, layer) -> None:
        """Scales -> float32 [N] per channel; static input scales -> their max."""
        if self.per_channel:
            scale = layer.weight_scale.data.reshape(-1).float()
        else:
            widths = torch.tensor(layer.logical_widths, device=layer.weight.device)
            scale = layer.weight_scale.data.repeat_interleave(widths)
        replace_param(layer, "weight_scale", scale.contiguous())
        if self.static_input:
            replace_param(layer, "input_scale", layer.input_scale.data.max().reshape(()))

    def apply(self, layer, x, bias=None):
        """x [T, K] -> [T, N] in x.dtype."""
        if self.static_input:
            x_q, x_scale = quantize_int8_static(x, layer.input_scale)
        else:
            x_q, x_scale = quantize_int8_per_token(x)
        return int8_linear(x_q, x_scale, layer.weight, layer.weight_scale, x.dtype, bias)


def _dummy_int8(full: torch.Tensor, generator: torch.Generator) -> None:
    full.copy_(torch.randint(-127, 128, full.shape, generator=generator, device=full.device,
                             dtype=torch.int8))
