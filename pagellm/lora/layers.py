"""LoRA on the parallel linear layers: device slots per layer and the wrapped linear method.

A LoRA layer wraps a fused projection (``qkv_proj`` packs q/k/v, ``gate_up_proj`` packs
gate/up, ``o_proj`` / ``down_proj`` one piece each). With P pieces and max rank R its slots are
``a_slots`` [max_loras, P * R, in_local] and ``b_slots`` [max_loras, out_local, P * R]; piece i
uses A rows and B columns [i * R, i * R + r) (zero elsewhere, so B is block-diagonal).

Tensor parallelism reuses the layer's own ``weight_loader`` (the same narrowing as the base
weight): column-parallel layers keep A whole and shard B by output rows (q/k/v and gate/up
each by its own rule); row-parallel layers shard A by input columns and keep B whole, and
their partial deltas are summed by the layer's all-reduce with the base output.
"""

from __future__ import annotations

import torch
from torch import nn

from pagellm.layers.linear import LinearMethodBase, RowParallelLinear
from pagellm.lora.ops import LoRABatchMapping, apply_lora


class LoRAContext:
    """The current step's mapping, shared by every LoRA layer of a model. ``mapping`` is
    None when no token of the step uses an adapter (the layers then do no LoRA work)."""

    def __init__(self):
        self.mapping: LoRABatchMapping | None = None


class LoRALinearMethod(LinearMethodBase):
    """The base method's product, plus each adapter token's delta (before any all-reduce)."""

    def __init__(self, base: LinearMethodBase, lora_layer: "LoRALayer"):
        self.base = base
        self.lora_layer = lora_layer

    def create_weights(self, *args, **kwargs):
        return self.base.create_weights(*args, **kwargs)

    def apply(self, layer, x, bias=None):
        out = self.base.apply(layer, x, bias)                 # [T, out_local]
        mapping = self.lora_layer.context.mapping
        if mapping is not None:
            apply_lora(x, self.lora_layer.a_slots, self.lora_layer.b_slots, mapping, out)
        return out

    def __getattr__(self, name):
        return getattr(self.__dict__["base"], name)


class LoRALayer:
    """Slots of one fused projection. ``pieces``: (checkpoint module, shard id) in the order
    the layer packs them."""

    def __init__(self, layer: nn.Module, pieces: list[tuple[str, object]], max_loras: int,
                 max_rank: int, dtype: torch.dtype, device: torch.device, context: LoRAContext):
        self.layer = layer
        self.pieces = pieces
        self.max_rank = max_rank
        self.context = context
        self.row_parallel = isinstance(layer, RowParallelLinear)
        in_local = layer.input_size_per_partition if self.row_parallel else layer.input_size
        out_local = layer.output_size if self.row_parallel else layer.output_size_per_partition
        width = len(pieces) * max_rank
        self.a_slots = torch.zeros((max_loras, width, in_local), dtype=dtype, device=device)
        self.b_slots = torch.zeros((max_loras, out_local, width), dtype=dtype, device=device)
        layer.quant_method = LoRALinearMethod(layer.quant_method, self)

    def set_slot(self, slot: int, modules: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Write one adapter's pieces (module -> full A [r, in], B [out, r]) into ``slot``,
        this rank's shard; pieces it lacks become zero."""
        a_slot, b_slot = self._shard(modules)
        self.a_slots[slot].copy_(a_slot, non_blocking=True)
        self.b_slots[slot].copy_(b_slot, non_blocking=True)

    def _shard(self, modules) -> tuple[torch.Tensor, torch.Tensor]:
        width = self.a_slots.shape[1]
        layer, rank = self.layer, self.max_rank
        a_full = torch.zeros((width, layer.input_size))                # [P * R, in]
        b_local = torch.zeros(self.b_slots.shape[1:])                   # [out_local, P * R]
        b_local.output_dim = 0
        for index, (module, shard_id) in enumerate(self.pieces):
            if module not in modules:
                continue
            a, b = modules[module]
            r = a.shape[0]
            a_full[index * rank:index * rank + r] = a
            if self.row_parallel:
                b_local[:, index * rank:index * rank + r] = b
                continue
            b_full = torch.zeros((b.shape[0], width))                    # [out_piece, P * R]
            b_full[:, index * rank:index * rank + r] = b
            layer.weight_loader(b_local, b_full, shard_id)
        if not self.row_parallel:
            return a_full, b_local
        a_local = torch.zeros(self.a_slots.shape[1:])                   # [P * R, in_local]
        a_local.input_dim = 1
        layer.weight_loader(a_local, a_full)
        return a_local, b_local


def lora_pieces(model: nn.Module) -> dict[str, list[tuple[str, object]]]:
    """Fused module name -> its (checkpoint module, shard id) pieces, from the model's
    ``stacked_params_mapping``; o_proj and down_proj are their own single piece."""
    pieces: dict[str, list] = {"o_proj": [("o_proj", None)], "down_proj": [("down_proj", None)]}
    for param_fragment, checkpoint_fragment, shard_id in model.stacked_params_mapping:
        pieces.setdefault(param_fragment.strip("."), []).append(
            (checkpoint_fragment.strip("."), shard_id))
    return pieces


def attach_lora_layers(model: nn.Module, max_loras: int, max_rank: int, dtype: torch.dtype,
                       device: torch.device, context: LoRAContext) -> dict[tuple[int, str], LoRALayer]:
    """Wrap every adaptable projection of this rank's layers; (layer index, fused name) ->
    its LoRALayer. Layer indices are the checkpoint's (pipeline stages hold a subset)."""
    pieces = lora_pieces(model)
    result = {}
    for name, module in model.named_modules():
        parts = name.split(".")
        if len(parts) < 4 or parts[-4] != "layers" or parts[-1] not in pieces:
            continue
        result[(int(parts[-3]), parts[-1])] = LoRALayer(module, pieces[parts[-1]], max_loras,
                                                        max_rank, dtype, device, context)
    return result
