"""Read and validate a PEFT LoRA adapter directory.

Files: ``adapter_config.json`` (``r``, ``lora_alpha``, ``use_rslora``, ``target_modules``)
and ``adapter_model.safetensors`` with tensors named
``base_model.model.model.layers.{i}.{self_attn|mlp}.{module}.lora_{A|B}.weight``:
A [r, in_features], B [out_features, r] (PEFT's layout). The delta of a module is
``x @ A^T @ B^T * scaling`` with ``scaling = lora_alpha / r`` (rsLoRA: ``lora_alpha / sqrt(r)``).

Every rule is checked when the adapter is loaded (``read_adapter_header``, from the header
only): a rank above ``max_lora_rank``, a target module the base model lacks (or that pagellm
cannot adapt: embeddings, lm_head), a layer index past the model, a tensor shape that does
not match the base, or a PEFT option that changes the math (DoRA, biases, per-module ranks)
is a ClientError (HTTP 400).
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass

import torch

from pagellm.errors import ClientError

LORA_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
"""Checkpoint module names pagellm can adapt (attention and MLP projections)."""

_KEY = re.compile(r"^(?:base_model\.model\.)?(?:model\.)?layers\.(\d+)\.(?:self_attn|mlp)\."
                  r"(\w+)\.lora_([AB])(?:\.default)?\.weight$")


@dataclass(frozen=True)
class AdapterHeader:
    """What an adapter directory declares, validated against the base model."""
    rank: int
    scaling: float
    modules: tuple[tuple[int, str], ...]       # (layer index, checkpoint module name)


@dataclass
class LoRAWeights:
    """One adapter's full (unsharded) weights on the host, float32: (layer index, module)
    -> (A [r, in], B [out, r] already multiplied by ``scaling``)."""
    lora_int_id: int
    rank: int
    modules: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]]


def lora_module_shapes(hf_config) -> dict[str, tuple[int, int]]:
    """Checkpoint module -> (in_features, out_features) of the base model."""
    hidden = hf_config.hidden_size
    head_dim = getattr(hf_config, "head_dim", None) or hidden // hf_config.num_attention_heads
    q = hf_config.num_attention_heads * head_dim
    kv = hf_config.num_key_value_heads * head_dim
    inter = hf_config.intermediate_size
    return {"q_proj": (hidden, q), "k_proj": (hidden, kv), "v_proj": (hidden, kv),
            "o_proj": (q, hidden), "gate_proj": (hidden, inter), "up_proj": (hidden, inter),
            "down_proj": (inter, hidden)}


def _read_config(lora_path: str) -> dict:
    if not isinstance(lora_path, str) or not lora_path:
        raise ClientError(f"a LoRA path must be a non-empty string, got {lora_path!r}",
                          param="lora_path")
    config_file = os.path.join(lora_path, "adapter_config.json")
    if not os.path.isfile(config_file):
        raise ClientError(f"no adapter_config.json in LoRA path {lora_path!r}", param="lora_path")
    try:
        with open(config_file) as f:
            config = json.load(f)
    except (OSError, ValueError) as error:
        raise ClientError(f"cannot read {config_file}: {error}", param="lora_path") from None
    if not isinstance(config, dict):
        raise ClientError(f"{config_file} is not a JSON object", param="lora_path")
    unsupported = [name for name in ("use_dora", "rank_pattern", "alpha_pattern",
                                     "modules_to_save") if config.get(name)]
    if config.get("bias", "none") != "none":
        unsupported.append("bias")
    if unsupported:
        raise ClientError(f"LoRA adapter {lora_path!r} uses PEFT options pagellm does not "
                          f"support: {unsupported}", param="lora_path")
    return config


def _check_targets(config: dict, lora_path: str) -> None:
    targets = config.get("target_modules") or []
    if isinstance(targets, str):
        return          # a regex: the tensor names are checked instead
    bad = sorted(set(targets) - set(LORA_TARGET_MODULES))
    if bad:
        raise ClientError(f"LoRA adapter {lora_path!r} targets modules the base model lacks or "
                          f"pagellm cannot adapt: {bad}; supported: {list(LORA_TARGET_MODULES)}",
                          param="lora_path")


def _scaling(config: dict, rank: int) -> float:
    alpha = float(config.get("lora_alpha", rank))
    return alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank


def _tensor_file(lora_path: str) -> str:
    path = os.path.join(lora_path, "adapter_model.safetensors")
    if not os.path.isfile(path):
        raise ClientError(f"no adapter_model.safetensors in LoRA path {lora_path!r}",
                          param="lora_path")
    return path


def _parse_key(key: str, lora_path: str, num_layers: int) -> tuple[int, str, str]:
    match = _KEY.match(key)
    if match is None or match.group(2) not in LORA_TARGET_MODULES:
        raise ClientError(f"LoRA adapter {lora_path!r}: tensor {key!r} targets a module the base "
                          f"model lacks or pagellm cannot adapt", param="lora_path")
    layer = int(match.group(1))
    if layer >= num_layers:
        raise ClientError(f"LoRA adapter {lora_path!r}: layer {layer} is past the base model's "
                          f"{num_layers} layers", param="lora_path")
    return layer, match.group(2), match.group(3)


def precheck_adapter(lora_path: str, max_lora_rank: int) -> None:
    """The checks that need no base model (files present, PEFT options, target modules, rank
    within ``max_lora_rank``): ``serve`` runs them on ``--lora-modules`` before the model
    loads. ClientError as ``read_adapter_header``."""
    config = _read_config(lora_path)
    _check_targets(config, lora_path)
    _check_rank(int(config.get("r", 0)), max_lora_rank, lora_path)
    _tensor_file(lora_path)


def _check_rank(rank: int, max_lora_rank: int, lora_path: str) -> None:
    if not 1 <= rank <= max_lora_rank:
        raise ClientError(f"LoRA adapter {lora_path!r} has rank {rank}, above max_lora_rank="
                          f"{max_lora_rank} (or below 1); raise max_lora_rank", param="lora_path")


def read_adapter_header(lora_path: str, hf_config, max_lora_rank: int) -> AdapterHeader:
    """Validate an adapter directory against the base model without reading its weights.
    ClientError for every rule in the module docstring."""
    from safetensors import safe_open

    config = _read_config(lora_path)
    _check_targets(config, lora_path)
    rank = int(config.get("r", 0))
    _check_rank(rank, max_lora_rank, lora_path)
    shapes = lora_module_shapes(hf_config)
    modules = set()
    with safe_open(_tensor_file(lora_path), framework="pt") as f:
        for key in f.keys():
            layer, module, which = _parse_key(key, lora_path, hf_config.num_hidden_layers)
            in_features, out_features = shapes[module]
            expected = (rank, in_features) if which == "A" else (out_features, rank)
            shape = tuple(f.get_slice(key).get_shape())
            if shape != expected:
                raise ClientError(f"LoRA adapter {lora_path!r}: {key} has shape {shape}, the "
                                  f"base model needs {expected}", param="lora_path")
            modules.add((layer, module))
    if not modules:
        raise ClientError(f"LoRA adapter {lora_path!r} has no LoRA tensors", param="lora_path")
    return AdapterHeader(rank, _scaling(config, rank), tuple(sorted(modules)))


def load_adapter_weights(lora_int_id: int, lora_path: str, hf_config,
                         max_lora_rank: int) -> LoRAWeights:
    """The adapter's full weights (float32, host) with the scaling folded into B; validated
    as ``read_adapter_header`` does (ClientError)."""
    from safetensors.torch import load_file

    header = read_adapter_header(lora_path, hf_config, max_lora_rank)
    tensors = load_file(_tensor_file(lora_path))
    parts: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        layer, module, which = _parse_key(key, lora_path, hf_config.num_hidden_layers)
        parts.setdefault((layer, module), {})[which] = tensor.float()
    modules = {}
    for name, pair in parts.items():
        if set(pair) != {"A", "B"}:
            raise ClientError(f"LoRA adapter {lora_path!r}: {name} lacks lora_A or lora_B",
                              param="lora_path")
        modules[name] = (pair["A"], pair["B"] * header.scaling)
    return LoRAWeights(lora_int_id, header.rank, modules)
