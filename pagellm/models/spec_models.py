"""The proposer models of speculative decoding: a draft model or an EAGLE / EAGLE-3 head.

``check_speculative_model`` runs once, before the engine core starts (``resolve_config`` in
``pagellm.engine.llm_engine`` calls it), and turns a bad ``speculative_config`` into a
ClientError naming the problem: a path that does not exist, no config.json or no weights, a
vocabulary other than the target's (vocab_size, and the tokenizer.json vocabularies when
both directories have one), an EAGLE head whose hidden size or layer ids do not fit the
target.

``load_draft_model`` loads a draft model with the target's loader (safetensors, GGUF, or
dummy when the target is dummy); ``load_eagle_head`` builds an EAGLE head and fills it from
its safetensors or pytorch_model.bin (or randomly when the target is dummy), sharing the
target's embedding and LM head when the checkpoint has none, and switches the target's
auxiliary hidden states on for EAGLE-3.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Iterator

import torch
from torch import nn

from pagellm.config.model import is_gguf_path
from pagellm.errors import ClientError
from pagellm.layers.attention import get_attn_backend
from pagellm.models.default_model import resolve_model_path
from pagellm.models.hf_config import load_hf_config
from pagellm.models.llama import LlamaForCausalLM
from pagellm.models.llama_eagle import Eagle3LlamaHead, EagleLlamaHead
from pagellm.models.loader import (LoadStats, init_dummy_weights, load_model, load_weights,
                                   resolve_load_format)
from pagellm.models.safetensors_loader import has_safetensors, iter_safetensors_weights
from pagellm.platforms import Platform

PARAM = "speculative_config"
TORCH_CHECKPOINT = "pytorch_model.bin"


def eagle3_aux_layer_ids(head_config, num_target_layers: int) -> tuple[int, ...]:
    """The target layers whose inputs feed an EAGLE-3 head: the head config's
    ``eagle_config["eagle_aux_hidden_state_layer_ids"]``, else vLLM's default
    (2, num_layers // 2, num_layers - 3)."""
    eagle_config = getattr(head_config, "eagle_config", None) or {}
    ids = eagle_config.get("eagle_aux_hidden_state_layer_ids")
    if ids is None:
        ids = (2, num_target_layers // 2, num_target_layers - 3)
    return tuple(int(i) for i in ids)


def check_speculative_model(spec, target_config, target_tokenizer: str,
                            load_format: str) -> str | None:
    """Check a draft model / EAGLE head against the target (``target_tokenizer``: the
    target's tokenizer directory or file) before anything loads; returns its resolved local
    path (None for n-gram or no speculation). ClientError otherwise."""
    if not spec.uses_model:
        return None
    try:
        path = resolve_model_path(spec.model)
        config = load_hf_config(path) if spec.method == "draft_model" else None
    except ClientError as error:
        raise ClientError(f"speculative_config: {spec.method} model: {error}",
                          param=PARAM) from None
    if spec.method == "draft_model":
        if load_format != "dummy":
            resolve_load_format(path, "auto")
    else:
        config = _head_config(path)
        _check_head(spec.method, config, target_config)
        if load_format != "dummy":
            _head_weight_names(path)
    if config.vocab_size != target_config.vocab_size:
        raise ClientError(f"speculative_config: {spec.method} {spec.model!r} has vocab_size "
                          f"{config.vocab_size}, the target model {target_config.vocab_size}; "
                          "the proposer must share the target's tokenizer", param=PARAM)
    _check_same_tokenizer(path, target_tokenizer, spec.model)
    return path


def _head_config(path: str):
    from transformers import AutoConfig

    if is_gguf_path(path) or not (Path(path) / "config.json").is_file():
        raise ClientError(f"speculative_config: EAGLE head {path!r} has no config.json (a head "
                          "is a Hugging Face directory)", param=PARAM)
    try:
        return AutoConfig.from_pretrained(path, trust_remote_code=False)
    except (ValueError, KeyError, OSError) as error:
        raise ClientError(f"speculative_config: cannot read {path}/config.json: {error}",
                          param=PARAM) from error


def _check_head(method: str, config, target_config) -> None:
    target_hidden = target_config.hidden_size
    hidden = config.hidden_size
    if method == "eagle3":
        hidden = getattr(config, "target_hidden_size", None) or hidden
        if config.num_hidden_layers != 1:
            raise ClientError("speculative_config: an EAGLE-3 head has one decoder layer "
                              f"(midlayer), this one {config.num_hidden_layers}", param=PARAM)
        num_layers = target_config.num_hidden_layers
        ids = eagle3_aux_layer_ids(config, num_layers)
        if len(ids) != 3 or any(not 0 <= i < num_layers for i in ids):
            raise ClientError(f"speculative_config: EAGLE-3 auxiliary layer ids {list(ids)} "
                              f"must be 3 layers of the target's {num_layers}", param=PARAM)
    if hidden != target_hidden or config.hidden_size != target_hidden:
        raise ClientError(f"speculative_config: {method} head hidden_size {config.hidden_size} "
                          f"does not match the target's {target_hidden}", param=PARAM)


def _check_same_tokenizer(path: str, target_path: str, name: str) -> None:
    """Both directories have a tokenizer.json: their vocabularies must be the same."""
    vocabs = []
    for directory in (path, target_path):
        file = Path(directory) / "tokenizer.json"
        if not file.is_file():
            return
        vocabs.append(json.loads(file.read_text()).get("model", {}).get("vocab"))
    if vocabs[0] != vocabs[1]:
        raise ClientError(f"speculative_config: {name!r} has another tokenizer vocabulary than "
                          "the target model; the proposer must share the target's tokenizer",
                          param=PARAM)


def _head_weight_names(path: str) -> set[str]:
    """The checkpoint tensor names of an EAGLE head. ClientError when there are no weights."""
    return {name for name, _ in _iter_head_weights(path, names_only=True)}


def _iter_head_weights(path: str, names_only: bool = False) -> Iterator[tuple[str, object]]:
    """(name, tensor or LazySlice) of a head's safetensors, else of its pytorch_model.bin
    (torch.load with weights_only, memory-mapped)."""
    if has_safetensors(path):
        yield from iter_safetensors_weights(path)
        return
    checkpoint = Path(path) / TORCH_CHECKPOINT
    if not checkpoint.is_file():
        raise ClientError(f"speculative_config: EAGLE head {path!r} has no weights (*.safetensors "
                          f"or {TORCH_CHECKPOINT})", param=PARAM)
    state = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
    yield from state.items()


def load_draft_model(path: str, load_format: str, dtype: torch.dtype, device: torch.device,
                     seed: int, stats: LoadStats) -> nn.Module:
    """The draft model, with the target's loader: dummy when the target is dummy, else the
    format its path has (safetensors directory or .gguf)."""
    return load_model(path, load_hf_config(path), "dummy" if load_format == "dummy" else "auto",
                      dtype, device, seed=seed, stats=stats)


def load_eagle_head(method: str, path: str, target: nn.Module, load_format: str,
                    dtype: torch.dtype, device: torch.device, seed: int,
                    stats: LoadStats) -> nn.Module:
    """An EAGLE (method "eagle") or EAGLE-3 ("eagle3") head on ``device`` in eval mode. For
    EAGLE-3 the target's ``aux_hidden_state_layers`` are set. ClientError for a missing or
    misshapen weight."""
    if not isinstance(target, LlamaForCausalLM):
        raise ClientError(f"speculative_config: EAGLE heads need a Llama-family target, not "
                          f"{type(target).__name__}", param=PARAM)
    config = _head_config(path)
    dummy = load_format == "dummy"
    names = set() if dummy else {_strip(n) for n in _head_weight_names(path)}
    backend = get_attn_backend(Platform("cuda" if device.type == "cuda" else "cpu", device))
    own = dict(own_embed="embed_tokens.weight" in names, own_lm_head="lm_head.weight" in names)
    with torch.device(device):
        if method == "eagle3":
            head = Eagle3LlamaHead(config, target, dtype, backend, **own)
        else:
            head = EagleLlamaHead(config, target, dtype, backend, fc_bias="fc.bias" in names, **own)
    head.to(device)
    if dummy:
        init_dummy_weights(head, seed, stats)
    else:
        _load_head_weights(head, path, stats)
    if method == "eagle3":
        target.model.aux_hidden_state_layers = eagle3_aux_layer_ids(config, target.num_layers)
    stats.param_bytes = sum(p.numel() * p.element_size() for p in head.parameters())
    return head.eval().requires_grad_(False)


def _load_head_weights(head: nn.Module, path: str, stats: LoadStats) -> None:
    weights = ((_strip(name), tensor) for name, tensor in _iter_head_weights(path))
    loaded = load_weights(head, _take_d2t(head, weights))
    missing = sorted(set(dict(head.named_parameters())) - loaded)
    if missing:
        raise ClientError(f"speculative_config: EAGLE head {path} lacks weights for "
                          f"{missing[:8]}", param=PARAM)


def _take_d2t(head: nn.Module, weights: Iterable[tuple[str, object]]):
    """Pass the weights on, copying ``d2t`` into the head's buffer (``t2d`` is dropped)."""
    from pagellm.layers.weight_utils import copy_into

    for name, tensor in weights:
        if name == "d2t" and hasattr(head, "d2t"):
            copy_into(head.d2t, tensor)
        elif name != "t2d":
            yield name, tensor


def _strip(name: str) -> str:
    """Some head checkpoints prefix the layer names with "model."."""
    return name[len("model."):] if name.startswith("model.") else name
