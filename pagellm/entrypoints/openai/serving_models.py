"""The models a server answers to: the base model and its LoRA adapters (vLLM's
``OpenAIServingModels``).

- ``--lora-modules name=path`` or the JSON form ``{"name": .., "path": .., "base_model_name": ..}``
  (``parse_lora_modules``); each adapter is validated when the server starts.
- A request's ``model`` selects the base (its served name, or empty) or an adapter by name;
  any other name is a 404 ``The model `x` does not exist.``
- ``/v1/models`` lists the base and every adapter with ``parent`` = the base model's id.
- Runtime ``load_lora_adapter`` / ``unload_lora_adapter`` (the routes exist only when
  ``VLLM_ALLOW_RUNTIME_LORA_UPDATING`` or ``PAGELLM_ALLOW_RUNTIME_LORA_UPDATING`` is true).
"""

from __future__ import annotations

import itertools
import json
import os
from dataclasses import dataclass

from pagellm.entrypoints.openai.errors import ModelNotFoundError, check_model
from pagellm.errors import ClientError
from pagellm.lora.request import LoRARequest

RUNTIME_LORA_ENV = ("VLLM_ALLOW_RUNTIME_LORA_UPDATING", "PAGELLM_ALLOW_RUNTIME_LORA_UPDATING")


@dataclass(frozen=True)
class LoRAModulePath:
    name: str
    path: str
    base_model_name: str | None = None


def parse_lora_modules(values: list[str] | None) -> tuple[LoRAModulePath, ...]:
    """``name=path`` or a JSON object per value; ClientError (param lora_modules) otherwise."""
    modules = []
    for value in values or ():
        value = value.strip()
        if value.startswith("{"):
            try:
                data = json.loads(value)
            except ValueError as error:
                raise ClientError(f"--lora-modules {value!r}: not valid JSON ({error})",
                                  param="lora_modules") from None
            fields = (data.get("name"), data.get("path")) if isinstance(data, dict) else ()
            if not (len(fields) == 2 and all(isinstance(f, str) and f for f in fields)):
                raise ClientError(f"--lora-modules {value!r}: a JSON entry needs 'name' and "
                                  f"'path' as strings (and may have 'base_model_name')",
                                  param="lora_modules")
            unknown = sorted(set(data) - {"name", "path", "base_model_name"})
            if unknown:
                raise ClientError(f"--lora-modules {value!r}: unknown key(s) {unknown}; allowed: "
                                  "'name', 'path', 'base_model_name'", param="lora_modules")
            modules.append(LoRAModulePath(data["name"], data["path"], data.get("base_model_name")))
            continue
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            raise ClientError(f"--lora-modules {value!r}: expected name=path or JSON",
                              param="lora_modules")
        modules.append(LoRAModulePath(name, path))
    return tuple(modules)


def runtime_lora_updating_allowed() -> bool:
    return any(os.environ.get(name, "").lower() in ("1", "true") for name in RUNTIME_LORA_ENV)


class OpenAIServingModels:
    """Name -> adapter for one server. Adapter ids are handed out once (never reused), so a
    reloaded name never meets the KV or slots of its former weights."""

    def __init__(self, engine, lora_modules: tuple[LoRAModulePath, ...] = ()):
        self.engine = engine
        self.base_model_name = engine.served_model_name
        self.lora_requests: dict[str, LoRARequest] = {}
        self._ids = itertools.count(1)
        for module in lora_modules:
            self.add_adapter(module.name, module.path, module.base_model_name)

    def resolve(self, requested: str | None) -> LoRARequest | None:
        """The adapter a request's ``model`` names (None: the base model); 404 otherwise."""
        if requested in self.lora_requests:
            return self.lora_requests[requested]
        check_model(requested, self.base_model_name)
        return None

    def add_adapter(self, name: str, path: str, base_model_name: str | None = None
                    ) -> LoRARequest:
        """Validate and register an adapter (ClientError when it cannot load or the name is
        taken)."""
        if not name or not path:
            raise ClientError("both lora_name and lora_path must be given", param="lora_name")
        if name == self.base_model_name:
            raise ClientError(f"'{name}' is the base model's name: give the adapter another "
                              "lora_name", param="lora_name")
        if name in self.lora_requests:
            raise ClientError(f"The lora adapter '{name}' has already been loaded.",
                              param="lora_name")
        request = LoRARequest(name, next(self._ids), path, base_model_name)
        self.engine.input_processor.check_lora_request(request)
        self.lora_requests[name] = request
        return request

    def remove_adapter(self, name: str) -> None:
        """Unregister an adapter; 404 when no adapter has that name."""
        request = self.lora_requests.pop(name, None)
        if request is None:
            raise ModelNotFoundError(f"The lora adapter '{name}' cannot be found.",
                                     param="lora_name")
        registry = self.engine.input_processor.lora_registry
        if registry is not None:
            registry.forget(request.lora_int_id)

    def model_cards(self, card_type, root: str, max_model_len: int) -> list:
        cards = [card_type(id=self.base_model_name, root=root, max_model_len=max_model_len)]
        cards += [card_type(id=name, root=request.lora_path,
                            parent=request.base_model_name or self.base_model_name,
                            max_model_len=max_model_len)
                  for name, request in self.lora_requests.items()]
        return cards
