"""Linear layers: ``Linear`` (nn.Linear with pagellm's CPU GEMM order) and ``MergedLinear``,
whose weight is several checkpoint tensors stacked on the output dim."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pagellm.errors import ClientError


CPU_SWAPPED_GEMM_MAX_ROWS = 128
"""On CPU, fp32 products of at most this many rows are computed as ``(W @ x.T).T``.

MKL's ``x @ W.T`` with few rows (decode batches) is slow on the CI machine's AMD EPYC: for
Qwen3-0.6B and SmolLM2 shapes the swapped order is 1.3-3.7x faster at 4-16 rows, 1.1-1.3x at
64, and no faster from 256 rows (benchmarks/RESULTS.md, "CPU GEMM order")."""


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
           ) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` for x [M, in], weight [out, in] -> [M, out] (contiguous);
    few-row fp32 products on CPU take the faster operand order (see CPU_SWAPPED_GEMM_MAX_ROWS)."""
    if (x.dim() == 2 and x.shape[0] <= CPU_SWAPPED_GEMM_MAX_ROWS and x.device.type == "cpu"
            and x.dtype == torch.float32):
        out = torch.mm(weight, x.t()) if bias is None \
            else torch.addmm(bias.unsqueeze(1), weight, x.t())
        return out.t().contiguous()
    return F.linear(x, weight, bias)


class Linear(nn.Linear):
    """nn.Linear whose forward is ``linear`` (same parameters, same state dict names)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


class MergedLinear(Linear):
    """One GEMM for several projections of the same input (q|k|v, or gate|up).

    The output is the concatenation of ``len(output_sizes)`` pieces; checkpoints store each
    piece as its own tensor, loaded with ``load_shard``.
    """

    def __init__(self, input_size: int, output_sizes: list[int], bias: bool,
                 dtype: torch.dtype | None = None):
        super().__init__(input_size, sum(output_sizes), bias=bias, dtype=dtype)
        self.output_sizes = list(output_sizes)
        """Output width of each piece, in order."""

    def load_shard(self, param_name: str, shard_index: int, tensor: torch.Tensor,
                   checkpoint_name: str) -> None:
        """Copy one piece (``weight`` [size, input] or ``bias`` [size]) into its rows.
        Mutates the parameter in place; a shape mismatch is a ClientError naming the tensor."""
        param = getattr(self, param_name)
        start = sum(self.output_sizes[:shard_index])
        rows = param.data.narrow(0, start, self.output_sizes[shard_index])
        if tuple(tensor.shape) != tuple(rows.shape):
            raise ClientError(f"checkpoint tensor {checkpoint_name} has shape {tuple(tensor.shape)}, "
                              f"the model expects {tuple(rows.shape)}", param="model")
        rows.copy_(tensor)
