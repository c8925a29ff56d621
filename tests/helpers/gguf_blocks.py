"""Raw GGUF blocks of every kept type: gguf's own quantizer where it has one (Q4_0, Q4_1,
Q8_0), else random super-blocks (Q4_K, Q5_K, Q6_K: every bit pattern of the packed codes and
sub-block scales is a valid block; d / dmin are set to sane fp16 values)."""

from __future__ import annotations

import numpy as np
import torch
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize, quantize

from pagellm.layers.gguf_linear import CODE_BITS, gguf_codes

K_QUANT_BYTES = {T.Q4_K: 144, T.Q5_K: 176, T.Q6_K: 210}


def raw_blocks(qtype: T, rows: int, cols: int, seed: int = 0) -> np.ndarray:
    """[rows, row bytes] uint8 of ``qtype`` (cols a multiple of 256 for K-quants)."""
    rng = np.random.default_rng(seed)
    if qtype not in K_QUANT_BYTES:
        return quantize(rng.standard_normal((rows, cols)).astype(np.float32), qtype)
    blocks = rng.integers(0, 256, (rows * cols // 256, K_QUANT_BYTES[qtype]), dtype=np.uint8)
    if qtype == T.Q6_K:                                   # d is the last fp16 of the block
        blocks[:, 208:210] = np.array([0.001], dtype=np.float16).view(np.uint8)
    else:
        blocks[:, 0:4] = np.array([0.01, 0.02], dtype=np.float16).view(np.uint8)
    return blocks.reshape(rows, -1)


def random_gguf_weight(qtype: T, rows: int, cols: int, seed: int = 0):
    """(codes uint8 [rows, cols], scale, offset float32 [rows, cols / G], exact float32
    weight [rows, cols] from gguf's dequantizer) as torch tensors on the CPU."""
    raw = raw_blocks(qtype, rows, cols, seed)
    codes, scale, offset = (torch.from_numpy(a) for a in gguf_codes(raw, qtype, cols))
    assert int(codes.max()) < 2 ** CODE_BITS[qtype]
    return codes, scale, offset, torch.from_numpy(dequantize(raw, qtype).reshape(rows, cols))
