"""Tiny random HF models on disk, for tests that compare pagellm with transformers.

``make_tiny_model_dir(tmp_path, arch)`` writes a complete model directory (config.json,
model.safetensors, tokenizer files, generation_config.json) that both
``AutoModelForCausalLM.from_pretrained`` and pagellm load. Weights are float32, random
from a fixed seed, and larger than HF's default init so greedy decoding has clear winners.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast,
                          Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM)

TINY_ARCHS = ("llama", "qwen2", "qwen3")
EOS_TOKEN = "<|endoftext|>"
SPECIAL_TOKENS = [EOS_TOKEN, "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
                 "{{ message['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")

# Shared shapes: GQA (4 query heads over 2 KV heads), two layers.
_COMMON = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-6,
               rope_theta=10000.0, initializer_range=0.2, bos_token_id=0, eos_token_id=0,
               pad_token_id=0)
# Per arch: config class, model class, what differs (tying, bias, explicit head_dim).
_ARCHS = {
    "llama": (LlamaConfig, LlamaForCausalLM, dict(tie_word_embeddings=False)),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM, dict(tie_word_embeddings=True)),
    "qwen3": (Qwen3Config, Qwen3ForCausalLM, dict(tie_word_embeddings=True, head_dim=32)),
}


def build_tiny_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level BPE with no merges: every byte is a token (ids 3..258) after the three
    special tokens (ids 0..2), so any text round-trips exactly."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    for char in sorted(alphabet):
        vocab[char] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(SPECIAL_TOKENS)
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=EOS_TOKEN,
                                   pad_token=EOS_TOKEN, bos_token=None,
                                   chat_template=CHAT_TEMPLATE)


def tiny_config(arch: str, **overrides):
    """The HF config of the tiny ``arch`` model; overrides replace any field."""
    if arch not in _ARCHS:
        raise ValueError(f"arch must be one of {TINY_ARCHS}, got {arch!r}")
    config_class, model_class, extra = _ARCHS[arch]
    vocab_size = len(SPECIAL_TOKENS) + 256
    config = config_class(**{**_COMMON, **extra, "vocab_size": vocab_size, **overrides})
    config.architectures = [model_class.__name__]
    return config


def make_tiny_model_dir(tmp_path: str | Path, arch: str, seed: int = 0,
                        max_shard_size: str | None = None, **config_overrides) -> Path:
    """Write a tiny random float32 ``arch`` model into ``tmp_path / f"tiny-{arch}"`` and
    return that directory. Same arguments, same weights. ``max_shard_size`` (e.g. "50KB")
    splits the weights into several safetensors shards with an index file."""
    config = tiny_config(arch, **config_overrides)
    model_class = _ARCHS[arch][1]
    torch.manual_seed(seed)
    model = model_class(config).to(torch.float32).eval()
    out_dir = Path(tmp_path) / f"tiny-{arch}"
    save_kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(out_dir, **save_kwargs)
    build_tiny_tokenizer().save_pretrained(out_dir)
    GenerationConfig(bos_token_id=0, eos_token_id=0, pad_token_id=0).save_pretrained(out_dir)
    return out_dir


def read_config_json(model_dir: Path) -> dict:
    return json.loads((Path(model_dir) / "config.json").read_text())
