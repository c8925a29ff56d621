"""Front-end adapter checks: every ``LoRARequest`` is validated here before it is queued.

The API process (or ``LLM``) reads each adapter's header once (``read_adapter_header``), so
a bad adapter is a ClientError (400) for its request and never reaches the engine core.
"""

from __future__ import annotations

from pagellm.errors import ClientError
from pagellm.lora.peft import AdapterHeader, read_adapter_header
from pagellm.lora.request import LoRARequest


class LoRARegistry:
    """Adapters accepted so far, by id. Not thread-safe (one per engine front end)."""

    def __init__(self, lora_config, hf_config):
        self.enable_lora = lora_config.enable_lora
        self.max_lora_rank = lora_config.max_lora_rank
        self.hf_config = hf_config
        self.accepted: dict[int, tuple[LoRARequest, AdapterHeader]] = {}

    def check(self, lora_request: LoRARequest | None) -> None:
        """ClientError when LoRA is off, the request is not a LoRARequest, its id names
        another adapter already, or the adapter fails ``read_adapter_header``."""
        if lora_request is None:
            return
        if not self.enable_lora:
            raise ClientError("LoRA adapters need enable_lora=True (--enable-lora)",
                              param="lora_request")
        if not isinstance(lora_request, LoRARequest):
            raise ClientError(f"lora_request must be a LoRARequest, got "
                              f"{type(lora_request).__name__}", param="lora_request")
        known = self.accepted.get(lora_request.lora_int_id)
        if known is not None:
            if known[0].lora_path != lora_request.lora_path:
                raise ClientError(f"lora_int_id {lora_request.lora_int_id} is already used by "
                                  f"adapter {known[0].lora_name!r} at {known[0].lora_path!r}",
                                  param="lora_request")
            return
        header = read_adapter_header(lora_request.lora_path, self.hf_config, self.max_lora_rank)
        self.accepted[lora_request.lora_int_id] = (lora_request, header)

    def forget(self, lora_int_id: int) -> None:
        self.accepted.pop(lora_int_id, None)
