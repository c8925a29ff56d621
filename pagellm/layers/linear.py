"""Linear layers, replicated or sharded over the tensor-parallel group (vLLM's names):

- ``ReplicatedLinear``: every rank holds the whole weight.
- ``ColumnParallelLinear``: output features split across ranks (optionally gathered).
- ``MergedColumnParallelLinear``: several column-parallel projections of one input in one GEMM
  (gate|up); each checkpoint piece is sharded on its own.
- ``QKVParallelLinear``: q|k|v; query heads split across ranks, KV heads split too, or
  replicated when tensor_parallel_size > num_kv_heads (each rank holds the KV head its query
  heads use).
- ``RowParallelLinear``: input features split across ranks; partial products all-reduced.

Weights are created and multiplied by the layer's ``quant_method`` (``UnquantizedLinearMethod``
here; the methods of ``pagellm.layers.quantization`` plug into the same slot, chosen by the
model's ``quant_config`` for the layer's checkpoint name ``prefix``). Every parameter carries a
``weight_loader(param, loaded_weight, shard_id=None)`` that narrows the full checkpoint tensor
to this rank's shard before reading it, and ``loaded_shapes``: the full checkpoint shape of
each shard it is loaded from (the dummy loader generates those and narrows them the same way,
so a dummy model is the same model at any tensor-parallel size). A quantized parameter whose
size along ``output_dim`` / ``input_dim`` is the logical size divided by a packing factor or
a group size says so in ``size_divisors`` ({dim: divisor}); the loaders shard it by the
divided sizes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F
from torch import nn

from pagellm.distributed.parallel_state import (get_tensor_model_parallel_rank,
                                                get_tensor_model_parallel_world_size,
                                                tensor_model_parallel_all_gather,
                                                tensor_model_parallel_all_reduce)
from pagellm.layers.weight_utils import check_shape, copy_into, divide, set_weight_attrs
from pagellm.ops.batch_invariant import batch_invariant, invariant_linear
from pagellm.platforms import use_triton_kernels

CPU_SWAPPED_GEMM_MAX_ROWS = 128
"""On CPU, fp32 products of at most this many rows are computed as ``(W @ x.T).T``.

MKL's ``x @ W.T`` with few rows (decode batches) is slow on the CI machine's AMD EPYC: for
Qwen3-0.6B and SmolLM2 shapes the swapped order is 1.3-3.7x faster at 4-16 rows, 1.1-1.3x at
64, and no faster from 256 rows (benchmarks/RESULTS.md, "CPU GEMM order")."""


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
           ) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` for x [M, in], weight [out, in] -> [M, out] (contiguous);
    few-row fp32 products on CPU take the faster operand order (see CPU_SWAPPED_GEMM_MAX_ROWS);
    ``PAGELLM_BATCH_INVARIANT=1``: fixed-size row blocks (``invariant_linear``)."""
    if x.dim() == 2 and batch_invariant():
        return invariant_linear(x, weight, bias)
    if (x.dim() == 2 and x.shape[0] <= CPU_SWAPPED_GEMM_MAX_ROWS and x.device.type == "cpu"
            and x.dtype == torch.float32):
        out = torch.mm(weight, x.t()) if bias is None \
            else torch.addmm(bias.unsqueeze(1), weight, x.t())
        return out.t().contiguous()
    return F.linear(x, weight, bias)


class LinearMethodBase(ABC):
    """How a linear layer stores its weight and multiplies by it (vLLM's LinearMethodBase)."""

    @abstractmethod
    def create_weights(self, layer: nn.Module, input_size_per_partition: int,
                       output_partition_sizes: list[int], input_size: int, output_size: int,
                       params_dtype: torch.dtype | None, **extra_weight_attrs) -> None:
        """Register this rank's weight parameter(s) on ``layer``; ``extra_weight_attrs``
        (``weight_loader``, ``loaded_shapes``) go onto every parameter created."""

    @abstractmethod
    def apply(self, layer: nn.Module, x: torch.Tensor,
              bias: torch.Tensor | None = None) -> torch.Tensor:
        """x: [num_tokens, input_size_per_partition] -> [num_tokens, sum(output_partition_sizes)]."""

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        """Called once every parameter is loaded: repack, quantize or drop what ``apply``
        does not need (the loader counts the parameters' bytes after this). No-op here."""


class UnquantizedLinearMethod(LinearMethodBase):
    """A dense ``weight`` [output, input] in the layer's dtype; pagellm's CPU GEMM order; on
    CUDA the Triton decode GEMV at the shapes where it was measured faster than cuBLAS."""

    def create_weights(self, layer, input_size_per_partition, output_partition_sizes,
                       input_size, output_size, params_dtype, **extra_weight_attrs):
        weight = nn.Parameter(torch.empty(sum(output_partition_sizes), input_size_per_partition,
                                          dtype=params_dtype), requires_grad=False)
        set_weight_attrs(weight, {"input_dim": 1, "output_dim": 0, **extra_weight_attrs})
        layer.register_parameter("weight", weight)

    def apply(self, layer, x, bias=None):
        """x [T, input] -> [T, output]: ``dense_gemv_triton`` when T <= DENSE_GEMV_MAX_ROWS
        and the measured table lists this shape on this GPU model (``pagellm.ops.triton.
        dense_gemv``; never under PAGELLM_BATCH_INVARIANT), else ``linear``."""
        if use_triton_kernels(x) and not batch_invariant():
            from pagellm.ops.triton.dense_gemv import dense_gemv_triton, tuned_dense_gemv_config
            config = tuned_dense_gemv_config(x, layer.weight)
            if config is not None:
                return dense_gemv_triton(x, layer.weight, bias, config)
        return linear(x, layer.weight, bias)


class LinearBase(nn.Module):
    """What every linear layer has: sizes, the TP rank/size it was built for, quant_method."""

    def __init__(self, input_size: int, output_size: int, params_dtype: torch.dtype | None,
                 quant_method: LinearMethodBase | None, quant_config=None, prefix: str = ""):
        super().__init__()
        self.input_size = input_size
        """Full (unsharded) input features."""
        self.output_size = output_size
        """Full (unsharded) output features."""
        self.params_dtype = params_dtype or torch.get_default_dtype()
        self.tp_rank = get_tensor_model_parallel_rank()
        self.tp_size = get_tensor_model_parallel_world_size()
        self.prefix = prefix
        """The layer's checkpoint module name (e.g. model.layers.0.self_attn.qkv_proj)."""
        if quant_method is None and quant_config is not None:
            quant_method = quant_config.get_quant_method(self, prefix)
        self.quant_method = quant_method or UnquantizedLinearMethod()
        """Owns the weight layout and the matmul (the quantization slot); from
        ``quant_config.get_quant_method`` (None there: this layer is not quantized)."""

    def _create_bias(self, enabled: bool, size: int, attrs: dict) -> None:
        """Register ``bias`` [size] with the loader ``attrs``, or None when not enabled."""
        if not enabled:
            self.register_parameter("bias", None)
            return
        bias = nn.Parameter(torch.empty(size, dtype=self.params_dtype), requires_grad=False)
        set_weight_attrs(bias, attrs)
        self.register_parameter("bias", bias)


class ReplicatedLinear(LinearBase):
    """The whole weight on every rank (no communication)."""

    def __init__(self, input_size: int, output_size: int, bias: bool = True,
                 params_dtype: torch.dtype | None = None,
                 quant_method: LinearMethodBase | None = None, quant_config=None,
                 prefix: str = ""):
        super().__init__(input_size, output_size, params_dtype, quant_method, quant_config,
                         prefix)
        self.quant_method.create_weights(
            self, input_size, [output_size], input_size, output_size, self.params_dtype,
            weight_loader=self.weight_loader, loaded_shapes=[(None, (output_size, input_size))])
        self._create_bias(bias, output_size, {"output_dim": 0, "weight_loader": self.weight_loader,
                                              "loaded_shapes": [(None, (output_size,))]})

    def weight_loader(self, param: nn.Parameter, loaded_weight, shard_id=None) -> None:
        copy_into(param.data, loaded_weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[T, input_size] -> [T, output_size]."""
        return self.quant_method.apply(self, x, self.bias)


class ColumnParallelLinear(LinearBase):
    """Y = X A with A's output columns split across ranks: rank r computes Y[:, r-th part].

    ``gather_output`` all-gathers the parts so every rank has the whole Y; otherwise the
    output stays sharded (the usual input of a RowParallelLinear).
    """

    def __init__(self, input_size: int, output_size: int, bias: bool = True,
                 gather_output: bool = False, params_dtype: torch.dtype | None = None,
                 quant_method: LinearMethodBase | None = None,
                 output_partition_sizes: list[int] | None = None, quant_config=None,
                 prefix: str = ""):
        super().__init__(input_size, output_size, params_dtype, quant_method, quant_config,
                         prefix)
        self.gather_output = gather_output
        self.output_partition_sizes = output_partition_sizes or [divide(output_size, self.tp_size,
                                                                        "output_size")]
        """This rank's width of each merged piece (one piece unless merged)."""
        self.output_size_per_partition = sum(self.output_partition_sizes)
        self.quant_method.create_weights(
            self, input_size, self.output_partition_sizes, input_size, output_size,
            self.params_dtype, weight_loader=self.weight_loader,
            loaded_shapes=self._loaded_shapes((input_size,)))
        self._create_bias(bias, self.output_size_per_partition,
                          {"output_dim": 0, "weight_loader": self.weight_loader,
                           "loaded_shapes": self._loaded_shapes(())})

    def _loaded_shapes(self, trailing: tuple[int, ...]) -> list:
        """(shard id, full checkpoint shape) of each tensor a parameter is loaded from."""
        return [(None, (self.output_size, *trailing))]

    def weight_loader(self, param: nn.Parameter, loaded_weight, shard_id=None) -> None:
        """Copy rows [rank * n, (rank + 1) * n) of the full tensor [output_size, ...]."""
        output_dim = param.output_dim
        shard_size = param.data.shape[output_dim]
        check_shape(loaded_weight, _full_shape(param, output_dim, self.output_size))
        copy_into(param.data, loaded_weight.narrow(output_dim, self.tp_rank * shard_size,
                                                   shard_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[T, input_size] -> [T, output_size_per_partition], or [T, output_size] gathered."""
        out = self.quant_method.apply(self, x, self.bias)
        return tensor_model_parallel_all_gather(out, dim=-1) if self.gather_output else out


class MergedColumnParallelLinear(ColumnParallelLinear):
    """Several column-parallel outputs of one input (gate|up); each is sharded by itself, so a
    rank's weight is [gate part r; up part r]. Checkpoint piece i loads with shard_id=i."""

    def __init__(self, input_size: int, output_sizes: list[int], bias: bool = True,
                 gather_output: bool = False, params_dtype: torch.dtype | None = None,
                 quant_method: LinearMethodBase | None = None, quant_config=None,
                 prefix: str = ""):
        self.output_sizes = list(output_sizes)
        """Full width of each piece, in order."""
        tp_size = get_tensor_model_parallel_world_size()
        super().__init__(input_size, sum(output_sizes), bias, gather_output, params_dtype,
                         quant_method, [divide(s, tp_size, "output size") for s in output_sizes],
                         quant_config, prefix)

    def _loaded_shapes(self, trailing):
        return [(i, (size, *trailing)) for i, size in enumerate(self.output_sizes)]

    def weight_loader(self, param: nn.Parameter, loaded_weight, shard_id: int | None = None):
        """Piece ``shard_id`` ([output_sizes[i], ...]) into its rows; None = all pieces
        fused in one checkpoint tensor."""
        output_dim = param.output_dim
        if shard_id is None:
            check_shape(loaded_weight, _full_shape(param, output_dim, self.output_size))
            start = 0
            for index, size in enumerate(self.output_sizes):
                self.weight_loader(param, loaded_weight.narrow(output_dim, start, size), index)
                start += size
            return
        shard_size = _param_size(param, output_dim, self.output_partition_sizes[shard_id])
        offset = _param_size(param, output_dim, sum(self.output_partition_sizes[:shard_id]))
        check_shape(loaded_weight, _full_shape(param, output_dim, self.output_sizes[shard_id]))
        copy_into(param.data.narrow(output_dim, offset, shard_size),
                  loaded_weight.narrow(output_dim, self.tp_rank * shard_size, shard_size))

    def forward_silu_and_mul(self, x: torch.Tensor) -> torch.Tensor | None:
        """``silu_and_mul(self(x))``: [T, input_size] -> [T, output_size_per_partition / 2]
        in one launch (``dense_gemv_silu_mul_triton``) where the measured table lists this
        shape on this GPU model (gate|up of equal widths, unquantized weight without LoRA, not
        gathered, on CUDA, T <= DENSE_GEMV_MAX_ROWS); None otherwise: the caller runs the
        layer and the activation."""
        if (type(self.quant_method) is not UnquantizedLinearMethod or self.gather_output
                or len(set(self.output_sizes)) != 1 or len(self.output_sizes) != 2
                or not use_triton_kernels(x) or batch_invariant()):
            return None
        from pagellm.ops.triton.dense_gemv import (dense_gemv_silu_mul_triton,
                                                   tuned_dense_gemv_config)
        config = tuned_dense_gemv_config(x, self.weight, silu_mul=True)
        if config is None:
            return None
        return dense_gemv_silu_mul_triton(x, self.weight, self.bias, config)


class QKVParallelLinear(ColumnParallelLinear):
    """q|k|v projections. Rank r holds query heads [r * h, (r + 1) * h) and the KV heads they
    attend with: KV heads split across ranks when tp <= num_kv_heads, otherwise each KV head
    replicated on tp / num_kv_heads consecutive ranks. Shards load with shard_id q, k or v."""

    def __init__(self, hidden_size: int, head_size: int, total_num_heads: int,
                 total_num_kv_heads: int, bias: bool = True,
                 params_dtype: torch.dtype | None = None,
                 quant_method: LinearMethodBase | None = None, quant_config=None,
                 prefix: str = ""):
        tp_size = get_tensor_model_parallel_world_size()
        self.head_size = head_size
        self.total_num_heads = total_num_heads
        self.total_num_kv_heads = total_num_kv_heads
        self.num_heads = divide(total_num_heads, tp_size, "num_attention_heads")
        if tp_size >= total_num_kv_heads:
            divide(tp_size, total_num_kv_heads, "tensor_parallel_size (over num_key_value_heads)")
            self.num_kv_heads, self.num_kv_head_replicas = 1, tp_size // total_num_kv_heads
        else:
            self.num_kv_heads = divide(total_num_kv_heads, tp_size, "num_key_value_heads")
            self.num_kv_head_replicas = 1
        q_size, kv_size = self.num_heads * head_size, self.num_kv_heads * head_size
        super().__init__(hidden_size, (total_num_heads + 2 * total_num_kv_heads) * head_size,
                         bias, False, params_dtype, quant_method, [q_size, kv_size, kv_size],
                         quant_config, prefix)

    def _full_sizes(self) -> dict[str, int]:
        kv = self.total_num_kv_heads * self.head_size
        return {"q": self.total_num_heads * self.head_size, "k": kv, "v": kv}

    def _loaded_shapes(self, trailing):
        return [(shard_id, (size, *trailing)) for shard_id, size in self._full_sizes().items()]

    def weight_loader(self, param: nn.Parameter, loaded_weight, shard_id: str | None = None):
        """Checkpoint q_proj / k_proj / v_proj (shard_id q, k, v) into this rank's rows;
        None = q|k|v fused in one tensor."""
        output_dim = param.output_dim
        full_sizes = self._full_sizes()
        if shard_id is None:
            check_shape(loaded_weight, _full_shape(param, output_dim, self.output_size))
            start = 0
            for name, size in full_sizes.items():
                self.weight_loader(param, loaded_weight.narrow(output_dim, start, size), name)
                start += size
            return
        index = "qkv".index(shard_id)
        shard_size = _param_size(param, output_dim, self.output_partition_sizes[index])
        offset = _param_size(param, output_dim, sum(self.output_partition_sizes[:index]))
        head_rank = self.tp_rank if shard_id == "q" else self.tp_rank // self.num_kv_head_replicas
        check_shape(loaded_weight, _full_shape(param, output_dim, full_sizes[shard_id]))
        copy_into(param.data.narrow(output_dim, offset, shard_size),
                  loaded_weight.narrow(output_dim, head_rank * shard_size, shard_size))


class RowParallelLinear(LinearBase):
    """Y = X A with A's input rows split across ranks: rank r computes X_r A_r, and the
    partial sums are all-reduced (``reduce_results``). The bias is added once (rank 0)."""

    def __init__(self, input_size: int, output_size: int, bias: bool = True,
                 input_is_parallel: bool = True, reduce_results: bool = True,
                 params_dtype: torch.dtype | None = None,
                 quant_method: LinearMethodBase | None = None, quant_config=None,
                 prefix: str = ""):
        super().__init__(input_size, output_size, params_dtype, quant_method, quant_config,
                         prefix)
        if bias and not reduce_results and self.tp_size > 1:
            raise ValueError("a RowParallelLinear with a bias must reduce its results")
        self.input_is_parallel = input_is_parallel
        self.reduce_results = reduce_results
        self.input_size_per_partition = divide(input_size, self.tp_size, "input_size")
        self.quant_method.create_weights(
            self, self.input_size_per_partition, [output_size], input_size, output_size,
            self.params_dtype, weight_loader=self.weight_loader,
            loaded_shapes=[(None, (output_size, input_size))])
        self._create_bias(bias, output_size, {"weight_loader": self.weight_loader,
                                              "loaded_shapes": [(None, (output_size,))]})

    def weight_loader(self, param: nn.Parameter, loaded_weight, shard_id=None) -> None:
        """Weight: columns [rank * n, (rank + 1) * n) of [output_size, input_size]; bias:
        whole."""
        input_dim = getattr(param, "input_dim", None)
        if input_dim is None:
            copy_into(param.data, loaded_weight)
            return
        shard_size = param.data.shape[input_dim]
        check_shape(loaded_weight, _full_shape(param, input_dim, self.input_size))
        copy_into(param.data, loaded_weight.narrow(input_dim, self.tp_rank * shard_size,
                                                   shard_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[T, input_size_per_partition] (or [T, input_size] when not input_is_parallel)
        -> [T, output_size], summed over ranks when reduce_results."""
        if not self.input_is_parallel and self.tp_size > 1:
            x = x.narrow(-1, self.tp_rank * self.input_size_per_partition,
                         self.input_size_per_partition)
        bias = self.bias if self.tp_rank == 0 else None
        out = self.quant_method.apply(self, x, bias)
        return tensor_model_parallel_all_reduce(out) if self.reduce_results else out


def _param_size(param: torch.Tensor, dim: int, logical_size: int) -> int:
    """How many entries of ``param`` along ``dim`` hold ``logical_size`` features (fewer for
    packed or per-group quantized parameters: ``size_divisors``)."""
    divisor = getattr(param, "size_divisors", {}).get(dim, 1)
    return logical_size // divisor


def _full_shape(param: torch.Tensor, dim: int, full_size: int) -> tuple[int, ...]:
    """The parameter's shape with ``dim`` at its full (unsharded) size, ``full_size``
    logical features."""
    shape = list(param.data.shape)
    shape[dim] = _param_size(param, dim, full_size)
    return tuple(shape)
