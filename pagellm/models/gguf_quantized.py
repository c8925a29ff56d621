"""Keep a GGUF model's quantized weights quantized: swap the quant method of every linear
layer (and the embedding / tied LM head) whose checkpoint tensors are of a kept type for a
GGUF method filled from the file's blocks. The rest (norms, float tensors, other types,
shapes a kernel cannot take) loads dequantized as before, through ``iter_gguf_weights``.

- CPU: ``GGUFLinearMethod`` (nibble planes for torch's int4 matmul) for the types of
  ``CPU_TYPES``;
- CUDA: ``GGUFTritonLinearMethod`` (the dequantizing Triton GEMM) for every type of
  ``CODE_BITS`` (Q4_0, Q4_1, Q8_0, Q4_K, Q5_K, Q6_K).

Used without tensor parallelism (a rank would need its shard of the blocks); elsewhere, or
with ``PAGELLM_GGUF_DEQUANTIZE=1``, GGUF weights are dequantized at load (the loader logs
which).
"""

from __future__ import annotations

import logging
import os

import torch
from torch import nn

from pagellm.layers.gguf_linear import (CODE_BITS, CPU_TYPES, GGUFLinearMethod,
                                        GGUFTritonLinearMethod, can_embed, can_pack, gguf_codes,
                                        group_size)
from pagellm.layers.linear import LinearBase, UnquantizedLinearMethod
from pagellm.layers.vocab_parallel_embedding import VocabParallelEmbedding
from pagellm.models.gguf_loader import gguf_arch, hf_name, open_gguf, unpermute_rotary_rows

logger = logging.getLogger(__name__)

GGUF_DEQUANTIZE_ENV = "PAGELLM_GGUF_DEQUANTIZE"
"""``1``: dequantize GGUF weights at load even where they could stay quantized (opt-out)."""


def keep_gguf_quantized_enabled(device: torch.device) -> bool:
    """CPU and CUDA, unless ``PAGELLM_GGUF_DEQUANTIZE=1``; other devices dequantize."""
    if os.environ.get(GGUF_DEQUANTIZE_ENV, "").strip() in ("1", "true", "yes"):
        logger.info("%s=1: GGUF weights are dequantized at load", GGUF_DEQUANTIZE_ENV)
        return False
    if device.type not in ("cpu", "cuda"):
        logger.info("GGUF on %s: weights are dequantized at load (quantized GGUF kernels run "
                    "on CPU and CUDA)", device.type)
        return False
    return True


def _pieces(model: nn.Module, module_name: str) -> list[str]:
    """HF checkpoint weight names stacked into a module, in row order."""
    prefix, _, leaf = module_name.rpartition(".")
    parts = getattr(model, "packed_modules_mapping", {}).get(leaf, [leaf])
    return [f"{prefix}.{part}.weight" if prefix else f"{part}.weight" for part in parts]


def _read_codes(tensor, name: str, hf_config, permuted: bool):
    """(codes, scale, offset) torch tensors of one GGUF tensor, q/k rows in HF order."""
    num_cols = int(tensor.shape[0])           # GGUF shapes are (columns, rows)
    codes, scale, offset = (torch.from_numpy(array) for array in
                            gguf_codes(tensor.data, tensor.tensor_type, num_cols))
    heads = (hf_config.num_attention_heads if ".q_proj." in name
             else hf_config.num_key_value_heads if ".k_proj." in name else None)
    if permuted and heads is not None:
        codes, scale, offset = (unpermute_rotary_rows(t, heads) for t in (codes, scale, offset))
    return codes, scale, offset


def _stack(parts: list[tuple]) -> tuple:
    """Row-stack (codes, scale, offset) of a fused module's pieces; pieces with 32-weight
    groups next to a Q6_K piece (16) get each scale/offset repeated (exact)."""
    num_cols = parts[0][0].shape[1]
    group = min(num_cols // scale.shape[1] for _, scale, _ in parts)     # weights per group
    def regroup(t: torch.Tensor) -> torch.Tensor:
        return t.repeat_interleave(num_cols // group // t.shape[1], dim=1)   # [rows, K / group]
    return (torch.cat([codes for codes, _, _ in parts]),
            torch.cat([regroup(scale) for _, scale, _ in parts]),
            torch.cat([regroup(offset) for _, _, offset in parts]))


def _quantizable(module: nn.Module) -> bool:
    return (isinstance(module, (LinearBase, VocabParallelEmbedding)) and module.tp_size == 1
            and isinstance(module.quant_method, UnquantizedLinearMethod)
            and isinstance(getattr(module, "weight", None), nn.Parameter))


def _method_for(module: nn.Module, module_name: str, types: list, cuda: bool):
    """The GGUF method for a module whose checkpoint tensors have ``types``, or None (logged
    when only the shape stands in the way)."""
    kept = CODE_BITS if cuda else CPU_TYPES
    if any(t not in kept for t in types):
        return None
    bits = max(CODE_BITS[t] for t in types)
    num_rows, num_cols = module.weight.shape
    if cuda:
        return GGUFTritonLinearMethod(bits) if num_cols % 32 == 0 else None
    embedding = isinstance(module, VocabParallelEmbedding)
    if not (can_embed if embedding else can_pack)(num_rows, num_cols):
        logger.info("GGUF %s [%d, %d]: shape not supported by the int4 kernel; dequantized",
                    module_name, num_rows, num_cols)
        return None
    group = min(group_size(t) for t in types)
    if group == 16 and bits > 6:           # a Q8_0 piece next to a Q6_K one: cannot fold
        return None
    return GGUFLinearMethod(bits, group)


def keep_gguf_quantized(model: nn.Module, path: str, hf_config) -> set[str]:
    """Swap in a GGUF method (module docstring) wherever the file's tensors allow; returns
    the names of the parameters it filled (the dense ``weight`` of those modules is gone)."""
    reader = open_gguf(path)
    tensors = {hf_name(t.name): t for t in reader.tensors if hf_name(t.name) is not None}
    permuted = gguf_arch(reader) == "llama"
    filled: set[str] = set()
    kept: dict[str, int] = {}
    for module_name, module in list(model.named_modules()):
        if not _quantizable(module):
            continue
        names = _pieces(model, module_name)
        sources = [tensors.get(name) for name in names]
        if any(s is None for s in sources):
            continue
        device = module.weight.device
        method = _method_for(module, module_name, [s.tensor_type for s in sources],
                             device.type == "cuda")
        if method is None:
            continue
        num_rows, num_cols = module.weight.shape
        codes, scale, offset = (t.to(device) for t in _stack([
            _read_codes(s, n, hf_config, permuted) for s, n in zip(sources, names)]))
        del module._parameters["weight"]
        method.create_weights(module, num_cols, [num_rows], num_cols, num_rows,
                              getattr(model, "dtype", torch.float32))
        method.set_quantized(module, codes, scale, offset)
        module.quant_method = method
        filled.update(f"{module_name}.{p}" for p, _ in module.named_parameters(recurse=False)
                      if p != "bias")
        for source in sources:
            kept[source.tensor_type.name] = kept.get(source.tensor_type.name, 0) + 1
    logger.info("GGUF weights kept quantized (%s): %s",
                "Triton GEMM" if next(model.parameters()).is_cuda else "CPU int4 kernel",
                ", ".join(f"{count} {name}" for name, count in sorted(kept.items())) or "none")
    return filled
