"""Keep a GGUF model's quantized weights quantized (CPU): swap the quant method of every
linear layer (and the embedding / tied LM head) whose checkpoint tensors are of a type in
``pagellm.layers.gguf_linear.CODE_BITS`` for a ``GGUFLinearMethod`` filled from the file's
blocks. The rest (norms, float tensors, other types, shapes the kernel cannot take) loads
dequantized as before, through ``iter_gguf_weights``.

Used on CPU without tensor parallelism (a rank would need its shard of the blocks); elsewhere,
or with ``PAGELLM_GGUF_DEQUANTIZE=1``, GGUF weights are dequantized at load (the loader logs
which). On CUDA there are no GGUF kernels yet: dequantized at load.
"""

from __future__ import annotations

import logging
import os

import torch
from torch import nn

from pagellm.layers.gguf_linear import (CODE_BITS, GGUFLinearMethod, can_embed, can_pack,
                                        gguf_codes)
from pagellm.layers.linear import LinearBase, UnquantizedLinearMethod
from pagellm.layers.vocab_parallel_embedding import VocabParallelEmbedding
from pagellm.models.gguf_loader import gguf_arch, hf_name, open_gguf, unpermute_rotary_rows

logger = logging.getLogger(__name__)

GGUF_DEQUANTIZE_ENV = "PAGELLM_GGUF_DEQUANTIZE"
"""``1``: dequantize GGUF weights at load even where they could stay quantized (opt-out)."""


def keep_gguf_quantized_enabled(device: torch.device) -> bool:
    """CPU, unless ``PAGELLM_GGUF_DEQUANTIZE=1``; on CUDA GGUF is dequantized at load."""
    if os.environ.get(GGUF_DEQUANTIZE_ENV, "").strip() in ("1", "true", "yes"):
        logger.info("%s=1: GGUF weights are dequantized at load", GGUF_DEQUANTIZE_ENV)
        return False
    if device.type != "cpu":
        logger.info("GGUF on %s: weights are dequantized at load (quantized GGUF kernels run "
                    "on CPU only)", device.type)
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


def _quantizable(module: nn.Module) -> bool:
    return (isinstance(module, (LinearBase, VocabParallelEmbedding)) and module.tp_size == 1
            and isinstance(module.quant_method, UnquantizedLinearMethod)
            and isinstance(getattr(module, "weight", None), nn.Parameter))


def keep_gguf_quantized(model: nn.Module, path: str, hf_config) -> set[str]:
    """Swap in ``GGUFLinearMethod`` wherever the file's tensors allow; returns the names of
    the parameters it filled (the dense ``weight`` of those modules is gone)."""
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
        if any(s is None or s.tensor_type not in CODE_BITS for s in sources):
            continue
        num_rows, num_cols = module.weight.shape
        embedding = isinstance(module, VocabParallelEmbedding)
        if not (can_embed if embedding else can_pack)(num_rows, num_cols):
            logger.info("GGUF %s [%d, %d]: shape not supported by the int4 kernel; dequantized",
                        module_name, num_rows, num_cols)
            continue
        method = GGUFLinearMethod(max(CODE_BITS[s.tensor_type] for s in sources))
        codes, scale, offset = (torch.cat(parts) for parts in zip(*(
            _read_codes(s, n, hf_config, permuted) for s, n in zip(sources, names))))
        del module._parameters["weight"]
        method.create_weights(module, num_cols, [num_rows], num_cols, num_rows,
                              getattr(model, "dtype", torch.float32))
        method.set_quantized(module, codes, scale, offset)
        module.quant_method = method
        filled.update(f"{module_name}.{p}" for p, _ in module.named_parameters(recurse=False)
                      if p != "bias")
        for source in sources:
            kept[source.tensor_type.name] = kept.get(source.tensor_type.name, 0) + 1
    logger.info("GGUF weights kept quantized (repacked for the CPU int4 kernel): %s",
                ", ".join(f"{count} {name}" for name, count in sorted(kept.items())) or "none")
    return filled
