"""Model classes, the architecture registry and weight loading."""

from pagellm.models.hf_config import load_hf_config
from pagellm.models.loader import load_model
from pagellm.models.registry import get_model_class, supported_architectures

__all__ = ["get_model_class", "load_hf_config", "load_model", "supported_architectures"]
