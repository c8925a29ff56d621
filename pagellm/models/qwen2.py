"""Qwen2 / Qwen2.5: the Llama decoder with q/k/v biases (and no o_proj bias)."""

from __future__ import annotations

from pagellm.models.llama import LlamaForCausalLM


class Qwen2ForCausalLM(LlamaForCausalLM):
    qkv_bias = True
