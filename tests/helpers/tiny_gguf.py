"""Write a tiny HF model directory out as a float32 GGUF file, the way llama.cpp's converter
lays it out (including its q/k row permutation for llama-arch files)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGUFWriter
from safetensors.numpy import load_file

_BLOCK_PARTS = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
                "self_attn.o_proj": "attn_output", "self_attn.q_norm": "attn_q_norm",
                "self_attn.k_norm": "attn_k_norm", "input_layernorm": "attn_norm",
                "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate",
                "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
_GLOBAL = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
           "lm_head.weight": "output.weight"}


def llama_cpp_permute(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """llama.cpp's converter: each head's rows go from rotate-half order to interleaved pairs."""
    head_dim = weight.shape[0] // num_heads
    return (weight.reshape(num_heads, 2, head_dim // 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


def gguf_name(hf_name: str) -> str:
    if hf_name in _GLOBAL:
        return _GLOBAL[hf_name]
    _, _, layer, rest = hf_name.split(".", 3)       # model.layers.N.<part>.<weight|bias>
    part, kind = rest.rsplit(".", 1)
    return f"blk.{layer}.{_BLOCK_PARTS[part]}.{kind}"


def write_tiny_gguf(model_dir: Path, config, arch: str, out_path: Path) -> Path:
    """``config`` is the model's HF config; ``arch`` the GGUF architecture name."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer = GGUFWriter(str(out_path), arch)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    writer.add_eos_token_id(config.eos_token_id)
    for name, tensor in sorted(load_file(str(Path(model_dir) / "model.safetensors")).items()):
        if arch == "llama" and ".q_proj." in name:
            tensor = llama_cpp_permute(tensor, config.num_attention_heads)
        elif arch == "llama" and ".k_proj." in name:
            tensor = llama_cpp_permute(tensor, config.num_key_value_heads)
        writer.add_tensor(gguf_name(name), np.ascontiguousarray(tensor, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out_path
