"""GGUF files (llama.cpp): build the HF config from metadata and stream dequantized weights
under HF names.

Quantized tensors (Q4_0, Q4_1, Q8_0, K-quants, ...) are dequantized to float32 at load time
with the ``gguf`` package; the model then runs in its own dtype.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from gguf import GGUFReader
from gguf.quants import dequantize

from pagellm.errors import ClientError
from pagellm.ops.rotary import llama3_scale_inv_freq, rope_inv_freq

GGUF_ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM",
                      "qwen3": "Qwen3ForCausalLM"}

_GLOBAL_NAMES = {"token_embd.weight": "model.embed_tokens.weight",
                 "output_norm.weight": "model.norm.weight",
                 "output.weight": "lm_head.weight"}
_BLOCK_NAMES = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
                "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
                "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm",
                "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
                "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}
_BLOCK_RE = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")


def open_gguf(path: str | Path) -> GGUFReader:
    """A reader over the file's memory map. Readers are cached per (path, size, mtime): parsing
    the metadata (a large vocabulary, field by field in Python) takes seconds, and the config
    and the weights are read in turn."""
    path = Path(path).resolve()
    if not path.is_file():
        raise ClientError(f"GGUF file {path} does not exist", param="model")
    stat = path.stat()
    return _cached_reader(str(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=2)
def _cached_reader(path: str, size: int, mtime_ns: int) -> GGUFReader:
    try:
        return GGUFReader(path)
    except Exception as e:  # the reader raises plain ValueError/OSError on bad files
        raise ClientError(f"{path} is not a readable GGUF file: {e}", param="model") from e


def _field(reader: GGUFReader, key: str, default=None):
    field = reader.fields.get(key)
    return default if field is None else field.contents()


def gguf_arch(reader: GGUFReader) -> str:
    arch = _field(reader, "general.architecture")
    if arch not in GGUF_ARCHITECTURES:
        raise ClientError(f"GGUF architecture {arch!r} is not supported; supported: "
                          f"{', '.join(GGUF_ARCHITECTURES)}", param="model")
    return arch


def gguf_config_kwargs(reader: GGUFReader) -> dict:
    """Keyword arguments for the transformers config class of this file's architecture."""
    arch = gguf_arch(reader)
    get = lambda key, default=None: _field(reader, f"{arch}.{key}", default)  # noqa: E731
    tensor_names = {t.name for t in reader.tensors}
    num_heads = get("attention.head_count")
    hidden_size = get("embedding_length")
    head_dim = get("attention.key_length", hidden_size // num_heads)
    rotary_dim = get("rope.dimension_count", head_dim)
    if rotary_dim != head_dim:
        raise ClientError(f"GGUF rope.dimension_count {rotary_dim} != head_dim {head_dim}: partial "
                          "rotary embeddings are not supported", param="model")
    vocab_size = get("vocab_size") or len(reader.fields["tokenizer.ggml.tokens"].data)
    theta = float(get("rope.freq_base", 10000.0))
    kwargs = dict(
        architectures=[GGUF_ARCHITECTURES[arch]], vocab_size=int(vocab_size),
        hidden_size=hidden_size, intermediate_size=get("feed_forward_length"),
        num_hidden_layers=get("block_count"), num_attention_heads=num_heads,
        num_key_value_heads=get("attention.head_count_kv", num_heads), head_dim=head_dim,
        rms_norm_eps=float(get("attention.layer_norm_rms_epsilon", 1e-6)),
        max_position_embeddings=get("context_length"), rope_theta=theta,
        tie_word_embeddings="output.weight" not in tensor_names,
        bos_token_id=_field(reader, "tokenizer.ggml.bos_token_id"),
        eos_token_id=_field(reader, "tokenizer.ggml.eos_token_id"),
        pad_token_id=_field(reader, "tokenizer.ggml.padding_token_id"),
    )
    if arch == "llama" and "blk.0.attn_q.bias" in tensor_names:
        kwargs["attention_bias"] = True
    scaling_type = get("rope.scaling.type", "none")
    if scaling_type not in ("none", None):
        raise ClientError(f"GGUF rope scaling {scaling_type!r} is not supported", param="model")
    if "rope_freqs.weight" in tensor_names:
        factors = _tensor_by_name(reader, "rope_freqs.weight")
        kwargs["rope_scaling"] = infer_llama3_rope_scaling(factors, head_dim, theta)
    return kwargs


def infer_llama3_rope_scaling(factors: np.ndarray, head_dim: int, theta: float) -> dict:
    """llama.cpp stores Llama 3.1 rope scaling as per-frequency divisors (rope_freqs) rather
    than parameters. Recover the parameters, assuming the published Llama 3 low/high factors
    and original context, and check they reproduce the divisors exactly."""
    factors = torch.from_numpy(np.asarray(factors, dtype=np.float32))
    params = {"rope_type": "llama3", "factor": float(factors.max()), "low_freq_factor": 1.0,
              "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    inv_freq = rope_inv_freq(head_dim, theta)
    scaled = llama3_scale_inv_freq(inv_freq, params["factor"], 1.0, 4.0, 8192)
    if factors.shape != inv_freq.shape or not torch.allclose(inv_freq / scaled, factors, rtol=1e-3):
        raise ClientError("GGUF rope_freqs do not match llama3 rope scaling; not supported",
                          param="model")
    return params


def _tensor_by_name(reader: GGUFReader, name: str) -> np.ndarray:
    for tensor in reader.tensors:
        if tensor.name == name:
            return dequantize(tensor.data, tensor.tensor_type)
    raise KeyError(name)


def unpermute_rotary_rows(weight: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Undo llama.cpp's q/k row permutation for llama-arch files.

    Its converter reorders each head's rows from HF's rotate-half layout (first half, second
    half) to interleaved pairs (GPT-J layout). weight: [num_heads * head_dim, ...] (or a bias
    [num_heads * head_dim]); returns HF row order.
    """
    head_dim = weight.shape[0] // num_heads
    rest = weight.shape[1:]
    pairs = weight.reshape(num_heads, head_dim // 2, 2, *rest)      # [heads, head_dim/2, 2, ...]
    return pairs.transpose(1, 2).reshape(weight.shape)              # [heads * head_dim, ...]


def hf_name(gguf_name: str) -> str | None:
    """HF parameter name for a GGUF tensor name; None for tensors with no parameter."""
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    match = _BLOCK_RE.fullmatch(gguf_name)
    if match is None or match.group(2) not in _BLOCK_NAMES:
        return None
    layer, part, kind = match.groups()
    return f"model.layers.{layer}.{_BLOCK_NAMES[part]}.{kind}"


def iter_gguf_weights(path: str | Path, hf_config, wanted: Callable[[str], bool] = lambda n: True
                      ) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (HF name, float32 CPU tensor) for every weight in the file whose HF name is
    ``wanted`` (others are not dequantized: a pipeline stage skips other stages' layers),
    dequantized, with llama-arch q/k rows put back in HF order."""
    reader = open_gguf(path)
    permuted = gguf_arch(reader) == "llama"
    for tensor in reader.tensors:
        name = hf_name(tensor.name)
        if name is None or not wanted(name):
            continue
        array = np.ascontiguousarray(dequantize(tensor.data, tensor.tensor_type))
        if not array.flags.writeable:  # unquantized tensors come back as read-only memmaps
            array = array.copy()
        weight = torch.from_numpy(array)
        if permuted and ".q_proj." in name:
            weight = unpermute_rotary_rows(weight, hf_config.num_attention_heads)
        elif permuted and ".k_proj." in name:
            weight = unpermute_rotary_rows(weight, hf_config.num_key_value_heads)
        yield name, weight
