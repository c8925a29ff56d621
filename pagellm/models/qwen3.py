"""Qwen3: the Llama decoder with a per-head RMSNorm on q and k before RoPE, an explicit
head_dim, and q/k/v/o biases only if config.attention_bias."""

from __future__ import annotations

from pagellm.models.llama import LlamaForCausalLM


class Qwen3ForCausalLM(LlamaForCausalLM):
    qk_norm = True
