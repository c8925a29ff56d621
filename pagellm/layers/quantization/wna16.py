"""Weight-only int4/int8 linear layers (W4A16, W8A16) in one internal layout.

Every format (GPTQ, AWQ, compressed-tensors pack-quantized) loads its checkpoint tensors as
they are written, sharded by the layers' loaders, then ``process_weights_after_loading``
repacks them into the layout of ``pagellm.ops.quant`` (GPTQ's: ``qweight`` int32 [K / pack,
N], ``qzeros`` int32 [G, N / pack] with real zero points, ``scales`` [G, N], optional
``g_idx`` [K]). The same bytes stay resident (int32 words, the checkpoint's zero points, the
scales in the model dtype): nothing dense is kept. ``apply`` runs on CUDA the Triton decode
GEMV for a few rows (``pagellm.ops.triton.quant_gemv``) or the Triton GEMM
(``pagellm.ops.triton.wna16_gemm``), and the dequantize-and-matmul twin elsewhere.

Tensor parallelism: column-parallel layers shard N (qweight columns, scale columns, packed
zero words); row-parallel layers shard K: the packed rows, ``g_idx`` and the groups of the
scales and zeros (K / tp must then be a multiple of the group size), except with ``g_idx``
(act-order) or one group per channel, where every rank keeps all groups.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pagellm.errors import ClientError
from pagellm.layers.linear import LinearMethodBase
from pagellm.layers.quantization.base_config import random_int32, random_scales, replace_param
from pagellm.layers.weight_utils import check_shape, materialize, set_weight_attrs
from pagellm.ops.quant import pack_factor, wna16_linear_torch
from pagellm.platforms import use_triton_kernels

DUMMY_SCALE = 0.02 / 4.6
"""Dummy scales: int4 values minus their zero have a std of about 4.6, so weights ~0.02."""


def repeated_int32(value: int, bits: int) -> int:
    """The int32 (signed) whose every ``bits``-wide field holds ``value``."""
    word = 0
    for i in range(32 // bits):
        word |= value << (bits * i)
    return word - (1 << 32) if word >= 1 << 31 else word


def symmetric_zeros(qzeros: torch.Tensor, bits: int) -> bool:
    """Whether packed zero points qzeros int32 [G, N / pack] are all 2**(bits - 1): a
    symmetric checkpoint that stores them anyway (GPTQ ``sym=True`` writes qzeros), which
    then takes the kernels' path without zero points (the W4A16 GEMV folds the constant zero
    into its per-value subtraction; ``quant_gemv``), with the same results."""
    return bool((qzeros == repeated_int32(1 << (bits - 1), bits)).all())


@dataclass(frozen=True)
class WNA16Spec:
    """How one layer's weight is quantized."""

    bits: int
    """4 or 8."""
    group_size: int
    """Input rows per scale; -1: one scale per output channel."""
    has_zeros: bool
    """Asymmetric (zero points in the checkpoint); else zero = 2**(bits - 1)."""
    has_g_idx: bool
    """Act-order: a group index per input row (GPTQ desc_act, compressed-tensors actorder
    group)."""


class GroupLayout:
    """The group geometry of one layer on one rank (module docstring, tensor parallelism)."""

    def __init__(self, spec: WNA16Spec, input_size_per_partition: int, input_size: int,
                 output_size_per_partition: int, method: str):
        pack = pack_factor(spec.bits)
        self.group_size = input_size if spec.group_size == -1 else spec.group_size
        row_sharded = input_size_per_partition != input_size
        self.groups_sharded = spec.group_size != -1 and not (spec.has_g_idx and row_sharded)
        """Each rank holds only the groups of its input rows."""
        problems = []
        if input_size_per_partition % pack:
            problems.append(f"input features per rank {input_size_per_partition} are not a "
                            f"multiple of {pack}")
        if output_size_per_partition % pack:
            problems.append(f"output features per rank {output_size_per_partition} are not a "
                            f"multiple of {pack}")
        if self.groups_sharded and input_size_per_partition % self.group_size:
            problems.append(f"input features per rank {input_size_per_partition} are not a "
                            f"multiple of group_size {self.group_size}")
        if problems:
            raise ClientError(f"{method}: {'; '.join(problems)} (tensor_parallel_size or "
                              "the checkpoint's group size do not fit this layer)",
                              param="quantization")
        if spec.group_size == -1:
            self.num_groups = 1
        else:
            rows = input_size_per_partition if self.groups_sharded else input_size
            self.num_groups = rows // self.group_size
        """Groups this rank holds: its own (sharded), all of them, or one per channel."""

    def group_attrs(self, dim: int = 0) -> dict:
        """Loader attributes of a parameter whose dim ``dim`` runs over the groups."""
        if not self.groups_sharded:
            return {}
        return {"input_dim": dim, "size_divisors": {dim: self.group_size}}


def dummy_g_idx(group_size: int):
    """Dummy fill of a full g_idx [K]: the identity order (row k in group k // group_size)."""
    def fill(full: torch.Tensor, generator: torch.Generator) -> None:
        full.copy_(torch.arange(full.shape[0], device=full.device) // group_size)
    return fill


def create_g_idx(layer, name: str, input_size_per_partition: int, input_size: int,
                 group_size: int, extra_weight_attrs: dict) -> None:
    """g_idx int32 [K / tp]: this rank's input rows of the checkpoint's [K]. Every piece of a
    fused layer has its own copy in the checkpoint (the same one: q/k/v, gate/up share their
    input, so act-order sorts their rows alike); the first loaded is kept, a different
    later one is a ClientError."""
    param = nn.Parameter(torch.empty(input_size_per_partition, dtype=torch.int32),
                         requires_grad=False)
    start = layer.tp_rank * input_size_per_partition if input_size_per_partition != input_size \
        else 0
    state = {"loaded": False}

    def load_g_idx(param: nn.Parameter, loaded_weight, shard_id=None) -> None:
        check_shape(loaded_weight, (input_size,))
        rows = materialize(loaded_weight.narrow(0, start, input_size_per_partition))
        if not state["loaded"]:
            param.data.copy_(rows)
            state["loaded"] = True
        elif not torch.equal(param.data, rows.to(param.device, torch.int32)):
            raise ClientError(f"the pieces fused into {layer.prefix or 'a layer'} have different "
                              "g_idx (act-order); pagellm needs them equal", param="model")

    set_weight_attrs(param, {"weight_loader": load_g_idx, "dummy_fill": dummy_g_idx(group_size),
                             "loaded_shapes": [(shard, (input_size,)) for shard, _
                                               in extra_weight_attrs["loaded_shapes"]]})
    layer.register_parameter(name, param)


class WNA16LinearMethod(LinearMethodBase):
    """Base of the GPTQ / AWQ / compressed-tensors weight-only methods: subclasses create
    the checkpoint's parameters and convert them (``to_internal``)."""

    method_name = "wna16"

    def __init__(self, spec: WNA16Spec):
        if spec.bits not in (4, 8):
            raise ClientError(f"{self.method_name}: {spec.bits}-bit weights are not supported; "
                              "supported: 4 and 8", param="quantization")
        self.spec = spec

    def layout(self, input_size_per_partition, input_size, output_partition_sizes):
        return GroupLayout(self.spec, input_size_per_partition, input_size,
                           sum(output_partition_sizes), self.method_name)

    def to_internal(self, layer: nn.Module):
        """(qweight [K/pack, N], qzeros [G, N/pack] | None, scales [G, N], g_idx [K] | None)
        in the internal layout, from the loaded checkpoint parameters."""
        raise NotImplementedError

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        qweight, qzeros, scales, g_idx = self.to_internal(layer)
        if qzeros is not None and symmetric_zeros(qzeros, self.spec.bits):
            qzeros = None       # the kernels' symmetric path (zero 2**(bits - 1) built in)
        for name in list(layer._parameters):        # the checkpoint's tensors, repacked below
            if name != "bias":
                del layer._parameters[name]
        replace_param(layer, "qweight", qweight.contiguous())
        replace_param(layer, "qzeros", None if qzeros is None else qzeros.contiguous())
        replace_param(layer, "scales", scales.contiguous())
        replace_param(layer, "g_idx", None if g_idx is None else g_idx.to(torch.int32).contiguous())

    def apply(self, layer, x, bias=None):
        """x [T, K] -> [T, N] in x.dtype: on CUDA the decode GEMV for T <=
        WNA16_GEMV_MAX_ROWS (``pagellm.ops.triton.quant_gemv``), the tile GEMM above."""
        if use_triton_kernels(x):
            from pagellm.ops.triton.quant_gemv import WNA16_GEMV_MAX_ROWS, wna16_gemv_triton
            if x.shape[0] <= WNA16_GEMV_MAX_ROWS:
                return wna16_gemv_triton(x, layer.qweight, layer.scales, layer.qzeros,
                                         layer.g_idx, self.spec.bits, bias)
            from pagellm.ops.triton.wna16_gemm import wna16_gemm_triton
            return wna16_gemm_triton(x, layer.qweight, layer.scales, layer.qzeros, layer.g_idx,
                                     self.spec.bits, bias)
        return wna16_linear_torch(x, layer.qweight, layer.scales, layer.qzeros, layer.g_idx,
                                  self.spec.bits, bias)


def dummy_params(spec: WNA16Spec) -> dict:
    """dummy_fill for the packed, zero and scale parameters of a W{bits}A16 layer."""
    return {"packed": random_int32, "zeros": random_int32,
            "scales": random_scales(DUMMY_SCALE if spec.bits == 4 else DUMMY_SCALE / 16)}
