"""Load a model's transformers config from an HF directory or a GGUF file."""

from __future__ import annotations

from pathlib import Path

from transformers import AutoConfig, LlamaConfig, PretrainedConfig, Qwen2Config, Qwen3Config

from pagellm.config.model import is_gguf_path
from pagellm.errors import ClientError
from pagellm.models.gguf_loader import gguf_arch, gguf_config_kwargs, open_gguf
from pagellm.models.registry import get_model_class

_GGUF_CONFIG_CLASSES = {"llama": LlamaConfig, "qwen2": Qwen2Config, "qwen3": Qwen3Config}


def load_hf_config(model_path: str) -> PretrainedConfig:
    """The config of an HF model directory (its config.json) or of a .gguf file (built from
    its metadata). ``architectures``, ``max_position_embeddings`` and ``tie_word_embeddings``
    are always set. ClientError if the path is missing or the architecture unsupported."""
    path = Path(model_path)
    if is_gguf_path(path):
        config = _gguf_config(path)
    elif path.is_dir():
        config = _directory_config(path)
    else:
        raise ClientError(f"model path {model_path!r} is neither a model directory nor a .gguf "
                          "file", param="model")
    get_model_class(config.architectures)  # fail early on an unsupported architecture
    if getattr(config, "max_position_embeddings", None) is None:
        raise ClientError(f"{model_path}: config has no max_position_embeddings", param="model")
    return config


def _directory_config(path: Path) -> PretrainedConfig:
    if not (path / "config.json").is_file():
        raise ClientError(f"{path} has no config.json", param="model")
    try:
        return AutoConfig.from_pretrained(str(path), trust_remote_code=False)
    except (ValueError, KeyError, OSError) as e:
        raise ClientError(f"cannot read {path / 'config.json'}: {e}", param="model") from e


def _gguf_config(path: Path) -> PretrainedConfig:
    reader = open_gguf(path)
    return _GGUF_CONFIG_CLASSES[gguf_arch(reader)](**gguf_config_kwargs(reader))
