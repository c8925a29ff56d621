"""Worker-side adapter placement: a host cache and the device slots.

- Host cache: adapters read from disk (``LoRAWeights``, full and float32), LRU up to
  ``max_cpu_loras``; an adapter evicted from it is read again from its path when needed.
- Device slots: ``max_loras`` per LoRA layer; an adapter the step needs and no slot holds is
  copied in, evicting the least recently used adapter that the step does not use. The
  scheduler never schedules more than ``max_loras`` distinct adapters in one step, so a slot
  is always found.

``prepare_step`` is the only entry point per step: it fills ``LoRAContext.mapping`` (None
when no token uses an adapter, so the base path does no LoRA work). Counters (tests assert
them): ``num_disk_loads``, ``num_slot_loads``, ``num_slot_evictions``.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch

from pagellm.lora.layers import LoRAContext, attach_lora_layers
from pagellm.lora.ops import make_mapping
from pagellm.lora.peft import LoRAWeights, load_adapter_weights
from pagellm.lora.request import LoRARequest


class LoRAModelManager:
    def __init__(self, model, hf_config, max_loras: int, max_lora_rank: int, max_cpu_loras: int,
                 dtype: torch.dtype, device: torch.device, fully_sharded: bool = False):
        self.hf_config = hf_config
        self.max_loras = max_loras
        self.max_lora_rank = max_lora_rank
        self.max_cpu_loras = max_cpu_loras
        self.device = device
        self.context = LoRAContext(max_loras)
        self.layers = attach_lora_layers(model, max_loras, max_lora_rank, dtype, device,
                                         self.context, fully_sharded)
        self.requests: dict[int, LoRARequest] = {}
        """Every adapter id seen (its path, to read it again after host eviction)."""
        self.host_cache: OrderedDict[int, LoRAWeights] = OrderedDict()
        self.slot_of: OrderedDict[int, int] = OrderedDict()      # adapter id -> slot, LRU first
        self.free_slots = list(range(max_loras - 1, -1, -1))
        self.num_disk_loads = 0
        self.num_slot_loads = 0
        self.num_slot_evictions = 0

    def add_request(self, lora_request: LoRARequest) -> None:
        self.requests[lora_request.lora_int_id] = lora_request

    def remove_adapter(self, lora_int_id: int) -> None:
        """Forget an adapter (runtime unload): its host copy and slot are freed."""
        self.requests.pop(lora_int_id, None)
        self.host_cache.pop(lora_int_id, None)
        slot = self.slot_of.pop(lora_int_id, None)
        if slot is not None:
            self.free_slots.append(slot)

    def prepare_step(self, token_lora_ids: np.ndarray) -> None:
        """token_lora_ids [T] int64 (0 = base): place the step's adapters in slots and set
        the context's mapping (None when every token is base)."""
        active = np.unique(token_lora_ids)
        active = active[active > 0].tolist()
        if not active:
            self.context.mapping = None
            return
        for lora_int_id in active:
            self._ensure_slot(lora_int_id, active)
        slot_of_id = np.full(max(active) + 1, -1, dtype=np.int64)
        for lora_int_id in active:
            slot_of_id[lora_int_id] = self.slot_of[lora_int_id]
        token_slots = np.where(token_lora_ids > 0, slot_of_id[np.maximum(token_lora_ids, 0)], -1)
        self.context.mapping = make_mapping(token_slots, self.max_loras, self.device)

    def _ensure_slot(self, lora_int_id: int, active: list[int]) -> None:
        if lora_int_id in self.slot_of:
            self.slot_of.move_to_end(lora_int_id)
            return
        if not self.free_slots:
            victim = next(i for i in self.slot_of if i not in active)
            self.free_slots.append(self.slot_of.pop(victim))
            self.num_slot_evictions += 1
        slot = self.free_slots.pop()
        weights = self._host_weights(lora_int_id)
        for (layer_index, fused), lora_layer in self.layers.items():
            lora_layer.set_slot(slot, {module: weights.modules[(layer_index, module)]
                                       for module, _ in lora_layer.pieces
                                       if (layer_index, module) in weights.modules})
        self.slot_of[lora_int_id] = slot
        self.num_slot_loads += 1

    def _host_weights(self, lora_int_id: int) -> LoRAWeights:
        weights = self.host_cache.get(lora_int_id)
        if weights is not None:
            self.host_cache.move_to_end(lora_int_id)
            return weights
        request = self.requests[lora_int_id]
        weights = load_adapter_weights(lora_int_id, request.lora_path, self.hf_config,
                                       self.max_lora_rank)
        self.num_disk_loads += 1
        self.host_cache[lora_int_id] = weights
        while len(self.host_cache) > self.max_cpu_loras:
            self.host_cache.popitem(last=False)
        return weights

