"""``LoRARequest``: which adapter a request runs with (vLLM's ``vllm.lora.request.LoRARequest``)."""

from __future__ import annotations

from dataclasses import dataclass

from pagellm.errors import ClientError


@dataclass(frozen=True, slots=True)
class LoRARequest:
    """An adapter by name, a positive integer id unique per adapter, and the directory of its
    PEFT files (``adapter_config.json`` + ``adapter_model.safetensors``). Two requests with
    the same ``lora_int_id`` must name the same adapter: the id keys the host cache, the
    device slots and the prefix-cache hash."""
    lora_name: str
    lora_int_id: int
    lora_path: str
    base_model_name: str | None = None

    def __post_init__(self) -> None:
        if type(self.lora_int_id) is not int or self.lora_int_id < 1:
            raise ClientError(f"lora_int_id must be an integer >= 1, got {self.lora_int_id!r}",
                              param="lora_int_id")
        if not self.lora_name:
            raise ClientError("lora_name must not be empty", param="lora_name")
