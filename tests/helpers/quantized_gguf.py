"""A tiny llama-arch GGUF whose tensors are of every kept quantized type (random blocks), and
a helper that loads it kept quantized and dequantized and returns both logits.

Layer 0: q/k Q4_K with v Q6_K (a fused qkv of mixed groups), o Q4_0, gate/up Q5_K, down
Q6_K; layer 1: q/k/v Q4_1, o Q8_0, gate/up Q4_K, down Q5_K; tied Q8_0 embedding of 320 rows.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from gguf import GGMLQuantizationType as T
from gguf import GGUFWriter

from tests.helpers.gguf_blocks import raw_blocks

HIDDEN, INTER, HEADS, KV_HEADS, HEAD_DIM, VOCAB = 256, 512, 4, 2, 64, 320
LAYER_TYPES = [
    {"attn_q": T.Q4_K, "attn_k": T.Q4_K, "attn_v": T.Q6_K, "attn_output": T.Q4_0,
     "ffn_gate": T.Q5_K, "ffn_up": T.Q5_K, "ffn_down": T.Q6_K},
    {"attn_q": T.Q4_1, "attn_k": T.Q4_1, "attn_v": T.Q4_1, "attn_output": T.Q8_0,
     "ffn_gate": T.Q4_K, "ffn_up": T.Q4_K, "ffn_down": T.Q5_K},
]
SHAPES = {"attn_q": (HEADS * HEAD_DIM, HIDDEN), "attn_k": (KV_HEADS * HEAD_DIM, HIDDEN),
          "attn_v": (KV_HEADS * HEAD_DIM, HIDDEN), "attn_output": (HIDDEN, HEADS * HEAD_DIM),
          "ffn_gate": (INTER, HIDDEN), "ffn_up": (INTER, HIDDEN), "ffn_down": (HIDDEN, INTER)}


def small_blocks(qtype: T, rows: int, cols: int, seed: int) -> np.ndarray:
    """``raw_blocks`` with K-quant super-block scales small enough for a stable model."""
    raw = raw_blocks(qtype, rows, cols, seed)
    if qtype in (T.Q4_K, T.Q5_K, T.Q6_K):
        blocks = raw.reshape(-1, raw.shape[1] * 256 // cols)
        where = slice(208, 210) if qtype == T.Q6_K else slice(0, 4)
        d = [2e-4] if qtype == T.Q6_K else [2e-3, 1e-3]
        blocks[:, where] = np.array(d, dtype=np.float16).view(np.uint8)
    return raw


def write_quantized_gguf(path: Path) -> Path:
    writer = GGUFWriter(str(path), "llama")
    writer.add_block_count(len(LAYER_TYPES))
    writer.add_context_length(256)
    writer.add_embedding_length(HIDDEN)
    writer.add_feed_forward_length(INTER)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(VOCAB)
    writer.add_tensor("token_embd.weight", small_blocks(T.Q8_0, VOCAB, HIDDEN, 0), raw_dtype=T.Q8_0)
    writer.add_tensor("output_norm.weight", np.ones(HIDDEN, dtype=np.float32))
    for layer, types in enumerate(LAYER_TYPES):
        for i, (part, qtype) in enumerate(types.items()):
            writer.add_tensor(f"blk.{layer}.{part}.weight",
                              small_blocks(qtype, *SHAPES[part], seed=10 * layer + i + 1),
                              raw_dtype=qtype)
        for norm in ("attn_norm", "ffn_norm"):
            writer.add_tensor(f"blk.{layer}.{norm}.weight", np.ones(HIDDEN, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def load_both_ways(tmp_path: Path, monkeypatch, device: str, dtype=torch.float32):
    """(model kept quantized, model dequantized at load, their logits [8, VOCAB] for one
    cache-less 8-token prompt) on ``device``."""
    from pagellm.models.hf_config import load_hf_config
    from pagellm.models.loader import load_model
    from tests.helpers.paged import build_attn_metadata

    path = str(write_quantized_gguf(tmp_path / "mixed.gguf"))
    config = load_hf_config(path)
    ids = torch.tensor([3, 17, 250, 319, 0, 64, 5, 5], device=device)
    meta = build_attn_metadata([8], [8], [[0, 1]], 16, device=device)
    results = []
    for dequantize in ("0", "1"):
        monkeypatch.setenv("PAGELLM_GGUF_DEQUANTIZE", dequantize)
        model = load_model(path, config, "gguf", dtype, torch.device(device))
        with torch.no_grad():
            hidden = model(ids, torch.arange(8, device=device), None, meta)
            results.append((model, model.compute_logits(hidden)))
    (quantized, logits_q), (dense, logits_d) = results
    return quantized, dense, logits_q, logits_d
