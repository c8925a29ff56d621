"""Linear layers whose weight is several checkpoint tensors stacked on the output dim."""

from __future__ import annotations

import torch
from torch import nn

from pagellm.errors import ClientError


class MergedLinear(nn.Linear):
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
