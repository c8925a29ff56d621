"""LoRA on the parallel linear layers: device slots per layer and the wrapped linear method.

A LoRA layer wraps a fused projection (``qkv_proj`` packs q/k/v, ``gate_up_proj`` packs
gate/up, ``o_proj`` / ``down_proj`` one piece each). With P pieces and max rank R, unsharded,
piece i uses A rows and B columns [i * R, i * R + r) of a [P * R, in] A and an [out, P * R] B
(zero elsewhere, so B is block-diagonal). Slots: ``a_slots`` [max_loras, A rows, A columns]
and ``b_slots`` [max_loras, B rows, B columns] of this rank's shares below (tp = tensor
parallel size, t = this rank).

Tensor parallelism reuses the layer's own ``weight_loader`` for the base weight's dimension
(the same narrowing as the base weight, q/k/v and gate/up each by its own rule). Default:

- column-parallel: A whole [P * R, in]; B by output rows [out / tp, P * R].
- row-parallel: A by input columns [P * R, in / tp]; B whole [out, P * R]; the partial
  deltas are summed by the layer's all-reduce with the base output.

``fully_sharded_loras`` (vLLM's option; S-LoRA's scheme) also shards the other factor, so a
rank's slots shrink by tp for A of column-parallel and B of row-parallel layers:

- column-parallel: A by rank rows, R / tp of each piece's block ([P * R / tp, in]: rank t
  holds rows [t * R / tp, (t + 1) * R / tp) of every piece); the partial shrink h
  [T, P, R / tp] is all-gathered over the TP group to [T, P, R], then expanded with the B
  shard as above (vLLM's ``*ColumnParallelLinearWithShardedLoRA``).
- row-parallel: A by input columns as above; B by output rows [out / tp, P * R]; the partial
  shrinks h [T, P * R] are all-reduced, each rank expands into its own output columns
  [t * out / tp, (t + 1) * out / tp) of its partial output, so the layer's all-reduce adds
  every column's delta exactly once (vLLM's ``RowParallelLinearWithShardedLoRA``).

R must then be divisible by tp (``LoRAConfig.check_tensor_parallel``); the gathered or reduced
h is [T, P * R] float32, small next to the activations.
"""

from __future__ import annotations

import torch
from torch import nn

from pagellm.distributed.parallel_state import (tensor_model_parallel_all_gather,
                                                tensor_model_parallel_all_reduce)
from pagellm.layers.linear import LinearMethodBase, RowParallelLinear
from pagellm.layers.weight_utils import divide
from pagellm.lora.ops import LoRABatchMapping, apply_lora, lora_expand_, lora_shrink


class LoRAContext:
    """The current step's mapping, shared by every LoRA layer of a model. ``mapping`` is
    None when no token of the step uses an adapter (the layers then do no LoRA work).
    ``num_slots``: the device slots per layer (``max_loras``)."""

    def __init__(self, num_slots: int = 0):
        self.mapping: LoRABatchMapping | None = None
        self.num_slots = num_slots


class LoRALinearMethod(LinearMethodBase):
    """The base method's product, plus this rank's share of each adapter token's delta
    (before the layer's all-reduce, if any)."""

    def __init__(self, base: LinearMethodBase, lora_layer: "LoRALayer"):
        self.base = base
        self.lora_layer = lora_layer

    def create_weights(self, *args, **kwargs):
        return self.base.create_weights(*args, **kwargs)

    def apply(self, layer, x, bias=None):
        out = self.base.apply(layer, x, bias)                 # [T, out_local]
        mapping = self.lora_layer.context.mapping
        if mapping is not None:
            self.lora_layer.add_delta(x, mapping, out)
        return out

    def __getattr__(self, name):
        return getattr(self.__dict__["base"], name)


class LoRALayer:
    """Slots of one fused projection. ``pieces``: (checkpoint module, shard id) in the order
    the layer packs them. ``fully_sharded``: the fully sharded scheme (module docstring);
    ValueError when ``max_rank`` (column-parallel) or the output size (row-parallel) is not
    divisible by the layer's tensor-parallel size."""

    def __init__(self, layer: nn.Module, pieces: list[tuple[str, object]], max_loras: int,
                 max_rank: int, dtype: torch.dtype, device: torch.device, context: LoRAContext,
                 fully_sharded: bool = False):
        self.layer = layer
        self.pieces = pieces
        self.max_rank = max_rank
        self.context = context
        self.fully_sharded = fully_sharded
        self.row_parallel = isinstance(layer, RowParallelLinear)
        width = len(pieces) * max_rank
        if self.row_parallel:
            a_shape = (width, layer.input_size_per_partition)
            out_local = (divide(layer.output_size, layer.tp_size, "output_size")
                         if fully_sharded else layer.output_size)
        else:
            a_rows = (len(pieces) * divide(max_rank, layer.tp_size, "max_lora_rank")
                      if fully_sharded else width)
            a_shape = (a_rows, layer.input_size)
            out_local = layer.output_size_per_partition
        self.a_slots = torch.zeros((max_loras, *a_shape), dtype=dtype, device=device)
        self.b_slots = torch.zeros((max_loras, out_local, width), dtype=dtype, device=device)
        layer.quant_method = LoRALinearMethod(layer.quant_method, self)

    def add_delta(self, x: torch.Tensor, mapping: LoRABatchMapping, out: torch.Tensor) -> None:
        """out [T, out_local] += this rank's share of every adapter token's delta, in place
        (a collective over the TP group when fully sharded: every rank must call it)."""
        if not self.fully_sharded:
            apply_lora(x, self.a_slots, self.b_slots, mapping, out)
            return
        h = lora_shrink(x, self.a_slots, mapping)                   # [T, A rows] float32
        if h.dim() == 3:                                            # Triton split-K partials
            h = h.sum(0)
        if self.row_parallel:
            h = tensor_model_parallel_all_reduce(h)                 # [T, P * R]
            columns = self.b_slots.shape[1]
            out = out.narrow(-1, self.layer.tp_rank * columns, columns)   # [T, out / tp]
        else:
            num_tokens, num_pieces = h.shape[0], len(self.pieces)
            h = tensor_model_parallel_all_gather(h.view(num_tokens, num_pieces, -1), dim=-1)
            h = h.reshape(num_tokens, num_pieces * self.max_rank)    # [T, P * R]
        lora_expand_(h, self.b_slots, mapping, out)

    def set_slot(self, slot: int, modules: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Write one adapter's pieces (module -> full A [r, in], B [out, r]) into ``slot``,
        this rank's shard; pieces it lacks become zero."""
        a_slot, b_slot = self._shard(modules)
        self.a_slots[slot].copy_(a_slot, non_blocking=True)
        self.b_slots[slot].copy_(b_slot, non_blocking=True)

    def _shard(self, modules) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's (A, B) of one adapter, float32 on the host, in the slots' shapes."""
        layer, rank = self.layer, self.max_rank
        width = len(self.pieces) * rank
        a_full = torch.zeros((width, layer.input_size))                # [P * R, in]
        b_rows = layer.output_size if self.row_parallel else self.b_slots.shape[1]
        b = torch.zeros((b_rows, width))  # row-parallel [out, P * R]; column [out_local, P * R]
        b.output_dim = 0
        for index, (module, shard_id) in enumerate(self.pieces):
            if module not in modules:
                continue
            a_piece, b_piece = modules[module]
            block = slice(index * rank, index * rank + a_piece.shape[0])
            a_full[block] = a_piece
            if self.row_parallel:
                b[:, block] = b_piece
                continue
            b_padded = torch.zeros((b_piece.shape[0], width))             # [out_piece, P * R]
            b_padded[:, block] = b_piece
            layer.weight_loader(b, b_padded, shard_id)
        if not self.row_parallel:
            return self._column_a(a_full), b
        return self._row_a(a_full), self._row_b(b)

    def _column_a(self, a_full: torch.Tensor) -> torch.Tensor:
        """Column-parallel A: whole, or (fully sharded) this rank's R / tp rows of each
        piece's block: [P * R, in] -> [P * R / tp, in]."""
        if not self.fully_sharded:
            return a_full
        num_pieces, share = len(self.pieces), self.a_slots.shape[1] // len(self.pieces)
        blocks = a_full.view(num_pieces, self.max_rank, -1)            # [P, R, in]
        return blocks.narrow(1, self.layer.tp_rank * share, share).reshape(num_pieces * share, -1)

    def _row_a(self, a_full: torch.Tensor) -> torch.Tensor:
        """Row-parallel A by input columns (the layer's loader): [P * R, in / tp]."""
        a_local = torch.zeros(self.a_slots.shape[1:])                   # [P * R, in_local]
        a_local.input_dim = 1
        self.layer.weight_loader(a_local, a_full)
        return a_local

    def _row_b(self, b_full: torch.Tensor) -> torch.Tensor:
        """Row-parallel B: whole [out, P * R], or (fully sharded) this rank's output rows
        [out / tp, P * R]."""
        rows = self.b_slots.shape[1]
        return b_full.narrow(0, self.layer.tp_rank * rows, rows) if self.fully_sharded else b_full


def lora_pieces(model: nn.Module) -> dict[str, list[tuple[str, object]]]:
    """Fused module name -> its (checkpoint module, shard id) pieces, from the model's
    ``stacked_params_mapping``; o_proj and down_proj are their own single piece."""
    pieces: dict[str, list] = {"o_proj": [("o_proj", None)], "down_proj": [("down_proj", None)]}
    for param_fragment, checkpoint_fragment, shard_id in model.stacked_params_mapping:
        pieces.setdefault(param_fragment.strip("."), []).append(
            (checkpoint_fragment.strip("."), shard_id))
    return pieces


def attach_lora_layers(model: nn.Module, max_loras: int, max_rank: int, dtype: torch.dtype,
                       device: torch.device, context: LoRAContext, fully_sharded: bool = False
                       ) -> dict[tuple[int, str], LoRALayer]:
    """Wrap every adaptable projection of this rank's layers; (layer index, fused name) ->
    its LoRALayer (``fully_sharded``: ``fully_sharded_loras``). Layer indices are the
    checkpoint's (pipeline stages hold a subset)."""
    pieces = lora_pieces(model)
    result = {}
    for name, module in model.named_modules():
        parts = name.split(".")
        if len(parts) < 4 or parts[-4] != "layers" or parts[-1] not in pieces:
            continue
        result[(int(parts[-3]), parts[-1])] = LoRALayer(module, pieces[parts[-1]], max_loras,
                                                        max_rank, dtype, device, context,
                                                        fully_sharded)
    return result
