"""Build a model and fill its weights: safetensors (mmap, lazily sliced), GGUF (dequantized
tensor by tensor) or dummy (random).

The model is built directly on the target device with uninitialised parameters (each
parallel layer allocates only this rank's shard), then every checkpoint tensor goes through
its parameter's ``weight_loader``, which narrows it to the rank's shard before reading. Fused
parameters (q|k|v, gate|up) take their pieces through the model class's
``stacked_params_mapping``. With a quantization config (``quantization=`` or the checkpoint's
``quantization_config``) the linear layers create their checkpoint's quantized parameters and
repack or quantize them once loaded (``process_weights_after_loading``); a dummy load fills
them with random packed values of the right shapes. ``LoadStats`` counts what a rank read and
holds. Under pipeline
parallelism the layers of other stages have no parameters here, so their tensors are never
read (safetensors) or dequantized (GGUF).
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from typing import Iterable

import torch
from torch import nn

from pagellm.errors import ClientError
from pagellm.layers.attention import AttentionBackend, get_attn_backend
from pagellm.layers.quantization import QuantizationConfig, get_quantization_config
from pagellm.layers.weight_utils import default_weight_loader, materialize
from pagellm.models.gguf_loader import iter_gguf_weights
from pagellm.models.gguf_quantized import keep_gguf_quantized, keep_gguf_quantized_enabled
from pagellm.config.model import is_gguf_path
from pagellm.models.registry import get_model_class
from pagellm.models.safetensors_loader import has_safetensors, iter_safetensors_weights
from pagellm.platforms import Platform

LOAD_FORMATS = ("auto", "safetensors", "gguf", "dummy")


@dataclass
class LoadStats:
    """What one rank's load did, in bytes."""

    checkpoint_bytes_read: int = 0
    """Checkpoint data read into memory: only the rank's shards for safetensors; whole
    dequantized tensors (one at a time) for GGUF; whole generated tensors for dummy."""
    param_bytes: int = 0
    """Bytes of the rank's parameters once loaded (quantized parameters at their quantized
    size)."""

    def add_read(self, num_bytes: int) -> None:
        self.checkpoint_bytes_read += num_bytes


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
               attn_backend: AttentionBackend | None = None,
               stats: LoadStats | None = None, quantization: str | None = None) -> nn.Module:
    """A ready-to-run model in eval mode with this rank's parameters on ``device`` in
    ``dtype`` (the whole model outside a tensor-parallel group). ``stats`` (optional) is
    filled in. attn_backend defaults to ``get_attn_backend`` for the device's platform.
    ``quantization``: the engine argument (``get_quant_config``). ClientError when the
    format does not fit the path, a weight is missing or misshapen, or the quantization is
    unsupported or contradicts the checkpoint.
    """
    device = torch.device(device)
    stats = stats if stats is not None else LoadStats()
    load_format = resolve_load_format(model_path, load_format)
    model_class = get_model_class(hf_config.architectures)
    quant_config = get_quant_config(model_path, hf_config, quantization)
    if attn_backend is None:
        attn_backend = get_attn_backend(Platform("cuda" if device.type == "cuda" else "cpu", device))
    with torch.device(device):
        model = model_class(hf_config, dtype=dtype, attn_backend=attn_backend,
                            **({"quant_config": quant_config} if quant_config else {}))
    model.to(device)          # buffers built on the CPU (rotary tables)
    if load_format == "dummy":
        init_dummy_weights(model, seed, stats)
    else:
        filled = (keep_gguf_quantized(model, model_path, hf_config)
                  if load_format == "gguf" and keep_gguf_quantized_enabled(device) else set())
        params = dict(model.named_parameters())
        mapping = getattr(model, "stacked_params_mapping", [])
        wanted = lambda name: _param_for(name, mapping, params)[0] is not None  # noqa: E731
        weights = (_counted(iter_gguf_weights(model_path, hf_config, wanted), stats)
                   if load_format == "gguf" else iter_safetensors_weights(model_path, stats.add_read))
        loaded = load_weights(model, weights) | filled
        missing = sorted(set(dict(model.named_parameters())) - loaded)
        if missing:
            raise ClientError(f"{model_path} lacks weights for {missing[:8]}"
                              f"{' and more' if len(missing) > 8 else ''}", param="model")
    process_weights_after_loading(model)
    stats.param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    return model.eval().requires_grad_(False)


def get_quant_config(model_path: str, hf_config, quantization: str | None = None,
                     model_class: type | None = None) -> QuantizationConfig | None:
    """The model's quantization (``pagellm.layers.quantization.get_quantization_config``)
    with the model class's ``packed_modules_mapping``; None for dense weights. Called by the
    executor before any worker starts, so a bad combination fails early."""
    config = get_quantization_config(model_path, hf_config, quantization)
    model_class = model_class or get_model_class(hf_config.architectures)
    if config is not None and getattr(model_class, "packed_modules_mapping", None):
        config.packed_modules_mapping = model_class.packed_modules_mapping
    return config


@torch.no_grad()
def process_weights_after_loading(model: nn.Module) -> None:
    """Let every layer's quant_method repack or quantize its loaded parameters."""
    for module in model.modules():
        quant_method = getattr(module, "quant_method", None)
        if quant_method is not None and hasattr(quant_method, "process_weights_after_loading"):
            quant_method.process_weights_after_loading(module)


def _counted(weights: Iterable[tuple[str, torch.Tensor]], stats: LoadStats):
    for name, tensor in weights:
        stats.add_read(tensor.numel() * tensor.element_size())
        yield name, tensor


@torch.no_grad()
def load_weights(model: nn.Module, weights: Iterable[tuple[str, object]]) -> set[str]:
    """Hand every HF-named checkpoint tensor (a tensor or a LazySlice) to its parameter's
    ``weight_loader``; fused parameters get theirs with the shard id from the model class's
    ``stacked_params_mapping``. Returns the parameter names that received all their data.
    Unknown names are ignored; a misshapen tensor is a ClientError naming it."""
    params = dict(model.named_parameters())
    mapping = getattr(model, "stacked_params_mapping", [])
    shards_expected: dict[str, int] = {}
    for param_fragment, _, _ in mapping:
        for name in params:
            if param_fragment in name:
                shards_expected[name] = shards_expected.get(name, 0) + 1
    shards_seen: dict[str, int] = {}
    loaded = set()
    for name, loaded_weight in weights:
        if "rotary_emb.inv_freq" in name or _load_kv_scale(model, name, loaded_weight):
            continue
        target, shard_id = _param_for(name, mapping, params)
        if target is None:
            continue
        param = params[target]
        try:
            getattr(param, "weight_loader", default_weight_loader)(param, loaded_weight, *(
                () if shard_id is None else (shard_id,)))
        except ClientError as error:
            raise ClientError(f"checkpoint tensor {name}: {error}", param="model") from None
        shards_seen[target] = shards_seen.get(target, 0) + 1
        if shards_seen[target] >= shards_expected.get(target, 1):
            loaded.add(target)
    return loaded


_KV_SCALE_RE = re.compile(r"(.*\.self_attn)\.(?:attn\.)?(k_scale|v_scale|kv_scale)"
                          r"|(.*\.self_attn)\.(k|v)_proj\.output_scale")


def _load_kv_scale(model: nn.Module, name: str, loaded_weight) -> bool:
    """A checkpoint's fp8 KV cache scale (vLLM's names: ``<layer>.self_attn.k_scale`` /
    ``v_scale``, the older ``kv_scale`` for both, compressed-tensors'
    ``k_proj.output_scale``) becomes the layer's ``Attention.k_scale`` / ``v_scale`` (a float).
    Returns whether ``name`` was such a scale (a scale of another stage's layer is dropped)."""
    match = _KV_SCALE_RE.fullmatch(name)
    if match is None:
        return False
    prefix = match.group(1) or match.group(3)
    kind = match.group(2) or f"{match.group(4)}_scale"
    try:
        attn = model.get_submodule(f"{prefix}.attn")
    except AttributeError:
        return True
    value = float(materialize(loaded_weight).float().max())
    if not value > 0:
        raise ClientError(f"checkpoint tensor {name}: a KV cache scale must be > 0, got {value}",
                          param="model")
    for attribute in (("k_scale", "v_scale") if kind == "kv_scale" else (kind,)):
        setattr(attn, attribute, value)
    return True


def _param_for(name: str, mapping, params) -> tuple[str | None, object]:
    """(parameter name, shard id) a checkpoint tensor loads into; (None, None) if none."""
    for param_fragment, weight_fragment, shard_id in mapping:
        if weight_fragment in name:
            target = name.replace(weight_fragment, param_fragment)
            return (target, shard_id) if target in params else (None, None)
    return (name, None) if name in params else (None, None)


@torch.no_grad()
def init_dummy_weights(model: nn.Module, seed: int, stats: LoadStats | None = None,
                       std: float = 0.02) -> None:
    """Random weights, deterministic for a seed on a given device type: norms at 1, every
    other parameter normal(0, std). Each checkpoint tensor a parameter loads from
    (``loaded_shapes``) is generated whole on the parameter's device from a seed of its own
    (seed, name, shard), then goes through the parameter's weight_loader: a rank keeps its
    shard, so the model is the same at every tensor-parallel size."""
    for name, param in model.named_parameters():
        shapes = getattr(param, "loaded_shapes", None)
        if shapes is None:          # norms and other replicated parameters without a loader
            param.fill_(1.0)
            continue
        for shard_id, shape in shapes:
            key = f"{name}:{shard_id}".encode()
            generator = torch.Generator(device=param.device)
            generator.manual_seed((seed * 0x9E3779B1 + zlib.crc32(key)) % 2**63)
            full = torch.empty(shape, dtype=param.dtype, device=param.device)
            fill = getattr(param, "dummy_fill", None)     # quantized: packed ints, scales
            if fill is not None:
                fill(full, generator)
            else:
                full.normal_(0.0, std, generator=generator)
            if stats is not None:
                stats.add_read(full.numel() * full.element_size())
            param.weight_loader(param, full, *(() if shard_id is None else (shard_id,)))
