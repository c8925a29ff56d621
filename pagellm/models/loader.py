"""Build a model and fill its weights: safetensors (mmap), GGUF (dequantized) or dummy.

Models are built on the meta device and materialised once on the target device, so no
weight is ever allocated twice (an 8B model in bf16 loads straight onto the GPU).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from pagellm.errors import ClientError
from pagellm.layers.attention import AttentionBackend, get_attn_backend
from pagellm.layers.norm import RMSNorm
from pagellm.models.gguf_loader import iter_gguf_weights
from pagellm.models.hf_config import is_gguf_path
from pagellm.models.registry import get_model_class
from pagellm.models.safetensors_loader import has_safetensors, iter_safetensors_weights
from pagellm.platforms import Platform

LOAD_FORMATS = ("auto", "safetensors", "gguf", "dummy")


def resolve_load_format(model_path: str, load_format: str) -> str:
    """'auto' -> gguf for a .gguf path, safetensors for a directory with *.safetensors."""
    if load_format not in LOAD_FORMATS:
        raise ClientError(f"load_format must be one of {LOAD_FORMATS}, got {load_format!r}",
                          param="load_format")
    if load_format != "auto":
        return load_format
    if is_gguf_path(model_path):
        return "gguf"
    if has_safetensors(model_path):
        return "safetensors"
    raise ClientError(f"cannot tell how to load {model_path!r}: expected a .gguf file or a "
                      "directory with *.safetensors files", param="model")


def load_model(model_path: str, hf_config, load_format: str, dtype: torch.dtype,
               device: torch.device, seed: int = 0,
               attn_backend: AttentionBackend | None = None) -> nn.Module:
    """A ready-to-run model in eval mode with every parameter on ``device`` in ``dtype``.

    attn_backend defaults to ``get_attn_backend`` for the device's platform.
    ClientError when the format does not fit the path or a weight is missing or misshapen.
    """
    device = torch.device(device)
    load_format = resolve_load_format(model_path, load_format)
    model_class = get_model_class(hf_config.architectures)
    if attn_backend is None:
        attn_backend = get_attn_backend(Platform("cuda" if device.type == "cuda" else "cpu", device))
    with torch.device("meta"):
        model = model_class(hf_config, dtype=dtype, attn_backend=attn_backend)
    model.to_empty(device=device)
    for module in model.modules():
        if hasattr(module, "init_buffers"):
            module.init_buffers()
    if load_format == "dummy":
        init_dummy_weights(model, seed)
    else:
        weights = (iter_gguf_weights(model_path, hf_config) if load_format == "gguf"
                   else iter_safetensors_weights(model_path))
        loaded = model.load_weights(weights)
        missing = sorted(set(dict(model.named_parameters())) - loaded)
        if missing:
            raise ClientError(f"{model_path} lacks weights for {missing[:8]}"
                              f"{' and more' if len(missing) > 8 else ''}", param="model")
    return model.eval().requires_grad_(False)


@torch.no_grad()
def init_dummy_weights(model: nn.Module, seed: int, std: float = 0.02) -> None:
    """Random weights, deterministic for a seed on a given device type: norms at 1, every
    other parameter normal(0, std). Generated on the parameters' own device."""
    norm_params = {id(m.weight) for m in model.modules() if isinstance(m, RMSNorm)}
    generators: dict[torch.device, torch.Generator] = {}
    for _, param in sorted(model.named_parameters()):
        if id(param) in norm_params:
            param.fill_(1.0)
            continue
        if param.device not in generators:
            generators[param.device] = torch.Generator(device=param.device).manual_seed(seed)
        param.normal_(0.0, std, generator=generators[param.device])
