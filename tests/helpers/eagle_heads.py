"""Random EAGLE-1 and EAGLE-3 heads written in their Hugging Face formats, for a tiny target.

``make_eagle_head_dir(root, "eagle", target_config)`` writes config.json and
model.safetensors the way yuhuili/EAGLE-LLaMA3-Instruct-8B lays them out (``fc.weight``
[hidden, 2 * hidden], ``layers.0.*`` without an input norm, no embedding or LM head: the
target's are shared); ``"eagle3"`` the way yuhuili/EAGLE3-LLaMA3.1-Instruct-8B does
(``fc.weight`` [hidden, 3 * hidden], ``midlayer.*`` with q/k/v over 2 * hidden,
``hidden_norm``, ``norm``, ``lm_head`` over ``draft_vocab_size`` tokens, ``d2t`` / ``t2d``).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

STD = 0.2


def _layer_weights(prefix: str, hidden: int, heads: int, kv_heads: int, head_dim: int,
                   inter: int, qkv_in: int, generator: torch.Generator) -> dict:
    def rand(*shape):
        return torch.randn(*shape, generator=generator) * STD

    return {f"{prefix}.self_attn.q_proj.weight": rand(heads * head_dim, qkv_in),
            f"{prefix}.self_attn.k_proj.weight": rand(kv_heads * head_dim, qkv_in),
            f"{prefix}.self_attn.v_proj.weight": rand(kv_heads * head_dim, qkv_in),
            f"{prefix}.self_attn.o_proj.weight": rand(hidden, heads * head_dim),
            f"{prefix}.mlp.gate_proj.weight": rand(inter, hidden),
            f"{prefix}.mlp.up_proj.weight": rand(inter, hidden),
            f"{prefix}.mlp.down_proj.weight": rand(hidden, inter),
            f"{prefix}.post_attention_layernorm.weight": torch.ones(hidden)}


def make_eagle_head_dir(root: str | Path, method: str, target_config, seed: int = 0,
                        draft_vocab_size: int | None = None, **config_overrides) -> Path:
    """Write a random ``method`` ("eagle" | "eagle3") head for ``target_config`` (an HF
    Llama config) into ``root / f"{method}-head"``; returns the directory."""
    generator = torch.Generator().manual_seed(seed)
    hidden, vocab = target_config.hidden_size, target_config.vocab_size
    heads, kv_heads = target_config.num_attention_heads, target_config.num_key_value_heads
    head_dim, inter = hidden // heads, target_config.intermediate_size
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama",
              "hidden_size": hidden, "intermediate_size": inter, "num_hidden_layers": 1,
              "num_attention_heads": heads, "num_key_value_heads": kv_heads,
              "max_position_embeddings": target_config.max_position_embeddings,
              "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "vocab_size": vocab,
              "hidden_act": "silu", "torch_dtype": "float32"}
    if method == "eagle":
        weights = _layer_weights("layers.0", hidden, heads, kv_heads, head_dim, inter, hidden,
                                 generator)
        weights["fc.weight"] = torch.randn(hidden, 2 * hidden, generator=generator) * STD
    else:
        draft_vocab = draft_vocab_size or vocab
        config.update(architectures=["LlamaForCausalLMEagle3"], draft_vocab_size=draft_vocab)
        weights = _layer_weights("midlayer", hidden, heads, kv_heads, head_dim, inter,
                                 2 * hidden, generator)
        weights.update({
            "fc.weight": torch.randn(hidden, 3 * hidden, generator=generator) * STD,
            "midlayer.input_layernorm.weight": torch.ones(hidden),
            "midlayer.hidden_norm.weight": torch.ones(hidden),
            "norm.weight": torch.ones(hidden),
            "lm_head.weight": torch.randn(draft_vocab, hidden, generator=generator) * STD})
        kept = torch.sort(torch.randperm(vocab, generator=generator)[:draft_vocab]).values
        weights["d2t"] = kept - torch.arange(draft_vocab)      # draft id d -> d + d2t[d]
        t2d = torch.zeros(vocab, dtype=torch.bool)
        t2d[kept] = True
        weights["t2d"] = t2d
    config.update(config_overrides)
    out = Path(root) / f"{method}-head"
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config))
    save_file({name: tensor.contiguous() for name, tensor in weights.items()},
              str(out / "model.safetensors"))
    return out
