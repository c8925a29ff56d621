"""FP8 W8A8 (vLLM's ``fp8``): float8_e4m3fn weights with float32 scales, activations
quantized to fp8 per token (dynamic) or with a static per-tensor scale.

Three sources, one layout after loading (weight fp8 [N, K], ``weight_scale`` float32 [N]):
- online: a bf16/fp16/fp32 checkpoint with ``quantization="fp8"`` is quantized at load, one
  scale per output channel; activations dynamic per token;
- vLLM's fp8 checkpoints (``quant_method: fp8``): per-tensor ``weight_scale`` (and
  ``input_scale`` with ``activation_scheme: static``) per checkpoint module; the scales of
  the pieces of a fused layer become per-channel scales (no requantization);
- compressed-tensors FP8 / FP8_DYNAMIC (``pagellm.layers.quantization.compressed_tensors``):
  per-tensor or per-channel weight scales.
The GEMM is ``torch._scaled_mm`` on fp8 tensor cores (CUDA, compute capability 8.9+), else
the float32 emulation of the same function (``pagellm.ops.quant.fp8_linear_torch``). Decode
(at most ``quant_gemv.FP8_GEMV_MAX_ROWS`` rows on such a GPU) is weight-only instead: a Triton
GEMV reads the fp8 weight once and multiplies the unquantized activations (twin:
``pagellm.ops.quant.fp8_weight_only_linear_torch``), which saves the activation-quantizer
launch and beats cuBLAS's fp8 GEMM at one and two rows (the constant's docstring).
"""

from __future__ import annotations

import torch
from torch import nn

from pagellm.errors import ClientError
from pagellm.layers.linear import LinearMethodBase, UnquantizedLinearMethod
from pagellm.layers.quantization.base_config import (QuantizationConfig, all_or_none,
                                                     create_per_shard_scalar, create_quant_param,
                                                     matches_module, replace_param)
from pagellm.ops.quant import (FP8_DTYPE, FP8_MAX, fp8_linear, quantize_fp8_per_channel,
                               quantize_fp8_per_token, quantize_fp8_static, fp8_tensor_cores,
                               scaled_mm_shape_ok)
from pagellm.platforms import use_triton_kernels

ACTIVATION_SCHEMES = ("static", "dynamic")
DUMMY_FP8_STD = 64.0
"""Dummy fp8 weights are normal(0, 64) in fp8 units with scale 0.02 / 64 (std 0.02)."""


class Fp8Config(QuantizationConfig):
    def __init__(self, is_checkpoint_fp8_serialized: bool = False,
                 activation_scheme: str = "dynamic", ignored_layers: list[str] | None = None):
        if activation_scheme not in ACTIVATION_SCHEMES:
            raise ClientError(f"fp8 activation_scheme {activation_scheme!r} is not supported; "
                              f"supported: {list(ACTIVATION_SCHEMES)}", param="quantization")
        if activation_scheme == "static" and not is_checkpoint_fp8_serialized:
            raise ClientError("static fp8 activation scales need an fp8 checkpoint",
                              param="quantization")
        self.is_checkpoint_fp8_serialized = is_checkpoint_fp8_serialized
        """Weights are fp8 in the checkpoint (else quantized at load)."""
        self.activation_scheme = activation_scheme
        self.ignored_layers = ignored_layers or []

    @classmethod
    def get_name(cls) -> str:
        return "fp8"

    @classmethod
    def from_config(cls, config: dict) -> "Fp8Config":
        if config.get("weight_block_size"):
            raise ClientError(f"block-wise fp8 (weight_block_size={config['weight_block_size']})"
                              " is not supported; supported: per-tensor and per-channel fp8",
                              param="quantization")
        return cls(is_checkpoint_fp8_serialized=True,
                   activation_scheme=config.get("activation_scheme", "dynamic"),
                   ignored_layers=config.get("ignored_layers")
                   or config.get("modules_to_not_convert"))

    def get_quant_method(self, layer, prefix):
        names = self.checkpoint_names(prefix)
        if all_or_none(names, lambda n: matches_module(n, self.ignored_layers), "fp8 ignore"):
            return None
        if not self.is_checkpoint_fp8_serialized:
            return Fp8LinearMethod(serialized=False)
        return Fp8LinearMethod(serialized=True, weight_per_channel=False,
                               static_input=self.activation_scheme == "static")


class Fp8LinearMethod(LinearMethodBase):
    """fp8 weights and GEMM; see the module docstring for the three sources."""

    def __init__(self, serialized: bool, weight_per_channel: bool = True,
                 static_input: bool = False):
        self.serialized = serialized
        self.weight_per_channel = weight_per_channel
        """Checkpoint weight_scale per output channel [N, 1] (else one per module)."""
        self.static_input = static_input
        """Checkpoint input_scale per module (else dynamic per-token activation scales)."""

    def create_weights(self, layer, input_size_per_partition, output_partition_sizes,
                       input_size, output_size, params_dtype, **extra_weight_attrs):
        layer.logical_widths = list(output_partition_sizes)
        if not self.serialized:
            UnquantizedLinearMethod().create_weights(
                layer, input_size_per_partition, output_partition_sizes, input_size,
                output_size, params_dtype, **extra_weight_attrs)
            return
        out_features = sum(output_partition_sizes)
        create_quant_param(layer, "weight", (out_features, input_size_per_partition), FP8_DTYPE,
                           extra_weight_attrs, output_dim=0, input_dim=1, dummy_fill=_dummy_fp8)
        if self.weight_per_channel:
            create_quant_param(layer, "weight_scale", (out_features, 1), torch.float32,
                               extra_weight_attrs, output_dim=0,
                               dummy_fill=lambda full, g: full.fill_(0.02 / DUMMY_FP8_STD))
        else:
            create_per_shard_scalar(layer, "weight_scale", extra_weight_attrs,
                                    0.02 / DUMMY_FP8_STD)
        if self.static_input:
            create_per_shard_scalar(layer, "input_scale", extra_weight_attrs, 1.0 / FP8_MAX)

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        """Online: quantize the dense weight per output channel. Checkpoint: per-module
        weight scales -> per-channel float32 [N]; input scales -> their max (one scalar)."""
        if not self.serialized:
            weight, scale = quantize_fp8_per_channel(layer.weight.data)
            replace_param(layer, "weight", weight)
        elif self.weight_per_channel:
            scale = layer.weight_scale.data.reshape(-1).float()
        else:
            widths = torch.tensor(layer.logical_widths, device=layer.weight.device)
            scale = layer.weight_scale.data.repeat_interleave(widths)
        replace_param(layer, "weight_scale", scale.contiguous())
        if self.static_input:
            replace_param(layer, "input_scale", layer.input_scale.data.max().reshape(()))
        layer.scaled_mm_shape_ok = scaled_mm_shape_ok(layer.weight)

    def apply(self, layer, x, bias=None):
        """x [T, K] -> [T, N] in x.dtype. On an fp8-capable GPU with T <= FP8_GEMV_MAX_ROWS:
        the weight-only decode GEMV (``pagellm.ops.triton.quant_gemv``; x is not quantized,
        a static input_scale is unused); else W8A8 through ``fp8_linear``."""
        if use_triton_kernels(x) and fp8_tensor_cores(x.device):
            from pagellm.ops.triton.quant_gemv import FP8_GEMV_MAX_ROWS, fp8_gemv_triton
            if x.shape[0] <= FP8_GEMV_MAX_ROWS:
                return fp8_gemv_triton(x, layer.weight, layer.weight_scale, bias)
        if self.static_input:
            x_q, x_scale = quantize_fp8_static(x, layer.input_scale)
        elif use_triton_kernels(x):
            from pagellm.ops.triton.fp8_quant import quantize_fp8_per_token_triton
            x_q, x_scale = quantize_fp8_per_token_triton(x)
        else:
            x_q, x_scale = quantize_fp8_per_token(x)
        use_scaled_mm = layer.scaled_mm_shape_ok and x.is_cuda and fp8_tensor_cores(x.device)
        return fp8_linear(x_q, x_scale, layer.weight, layer.weight_scale, x.dtype, bias,
                          use_scaled_mm)


def _dummy_fp8(full: torch.Tensor, generator: torch.Generator) -> None:
    values = torch.randn(full.shape, generator=generator, device=full.device) * DUMMY_FP8_STD
    full.copy_(values.clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE))
