"""HF architecture name -> pagellm model class."""

from __future__ import annotations

from pagellm.errors import ClientError
from pagellm.models.llama import LlamaForCausalLM, MistralForCausalLM
from pagellm.models.qwen2 import Qwen2ForCausalLM
from pagellm.models.qwen3 import Qwen3ForCausalLM

MODEL_REGISTRY: dict[str, type] = {
    "LlamaForCausalLM": LlamaForCausalLM,
    "MistralForCausalLM": MistralForCausalLM,
    "Qwen2ForCausalLM": Qwen2ForCausalLM,
    "Qwen3ForCausalLM": Qwen3ForCausalLM,
}


def supported_architectures() -> list[str]:
    return sorted(MODEL_REGISTRY)


def get_model_class(architectures: list[str] | None) -> type:
    """The class for the first supported name in ``architectures`` (from config.json)."""
    for name in architectures or []:
        if name in MODEL_REGISTRY:
            return MODEL_REGISTRY[name]
    raise ClientError(f"model architecture {architectures} is not supported; supported: "
                      f"{', '.join(supported_architectures())}", param="model")
