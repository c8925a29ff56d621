"""Quantized checkpoints of the tiny random Llama, written by the real quantizers, and their
dequantized dense twins (the reference a quantized model must match).

- compressed-tensors (W4A16, W8A16, W8A8-INT8, FP8 per-tensor, FP8_DYNAMIC; GPTQ with
  act-order): llm-compressor's ``oneshot`` (QuantizationModifier / GPTQModifier).
- AWQ (GEMM packing): AutoAWQ's ``AutoAWQForCausalLM.quantize`` + ``save_quantized``.
- native GPTQ (``quant_method: gptq``): FALLBACK. No GPTQ-format writer installs here:
  gptqmodel 7.7.0 needs torch>=2.14.1 (this venv has 2.13) and auto-gptq 0.7.1 fails to
  import under transformers 5 (``no_init_weights`` moved). ``gptq_from_compressed_tensors``
  therefore re-packs a real llm-compressor GPTQ result (its integers, scales, zero points and
  g_idx unchanged) into the GPTQ format as published (AutoGPTQ ``QuantLinear.pack``:
  qweight int32 [K / pack, N] packed along K, qzeros int32 [G, N / pack] packed along N
  holding zero - 1, scales float16 [G, N], g_idx int32 [K]).

Dense twins: ``dequantized_copy`` writes the checkpoint's weights dequantized by the tools'
own code (compressed-tensors' compressors ``decompress``, AutoAWQ's ``dequantize_gemm``) as
a plain float32 checkpoint with no quantization_config.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

CALIBRATION_TEXTS = [f"The quick brown fox {i} jumps over the lazy dog." for i in range(64)]
TINY_QUANT_SHAPES = dict(hidden_size=128, intermediate_size=256)
"""Tiny-Llama overrides: K of every layer a multiple of 128 (group sizes up to 128)."""


def _calibration_dataset(model_dir: Path):
    from datasets import Dataset
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    return Dataset.from_dict({"input_ids": [tokenizer(text)["input_ids"]
                                            for text in CALIBRATION_TEXTS[:16]]})


def llmcompressor_checkpoint(base_dir: Path, out_dir: Path, scheme, gptq: bool = False,
                             calibrate: bool = False) -> Path:
    """Quantize ``base_dir`` with llm-compressor's oneshot: ``scheme`` is a preset name
    (FP8_DYNAMIC, FP8, W4A16, W8A16, W8A8) or a {group: {...}} config_groups dict; GPTQ
    (GPTQModifier) or round-to-nearest (QuantizationModifier). Saved compressed."""
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import GPTQModifier, QuantizationModifier
    from transformers import AutoModelForCausalLM

    kwargs = ({"config_groups": scheme} if isinstance(scheme, dict)
              else {"targets": "Linear", "scheme": scheme})
    modifier = (GPTQModifier if gptq else QuantizationModifier)(ignore=["lm_head"], **kwargs)
    model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    dataset = _calibration_dataset(base_dir) if (gptq or calibrate) else None
    oneshot(model=model, recipe=modifier, dataset=dataset, num_calibration_samples=16,
            max_seq_length=64, output_dir=str(out_dir))
    _copy_tokenizer(base_dir, out_dir)
    return out_dir


def autoawq_checkpoint(base_dir: Path, out_dir: Path, group_size: int = 64) -> Path:
    """AutoAWQ 4-bit GEMM checkpoint (zero point on) of ``base_dir``."""
    from awq import AutoAWQForCausalLM
    from transformers import AutoTokenizer

    model = AutoAWQForCausalLM.from_pretrained(str(base_dir), device_map="cpu")
    tokenizer = AutoTokenizer.from_pretrained(str(base_dir))
    model.quantize(tokenizer, quant_config={"zero_point": True, "q_group_size": group_size,
                                            "w_bit": 4, "version": "GEMM"},
                   calib_data=CALIBRATION_TEXTS[:16], max_calib_seq_len=64, max_calib_samples=16)
    model.save_quantized(str(out_dir))
    _copy_tokenizer(base_dir, out_dir)
    return out_dir


def _copy_tokenizer(base_dir: Path, out_dir: Path) -> None:
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                 "generation_config.json"):
        if (Path(base_dir) / name).is_file():
            shutil.copy(Path(base_dir) / name, Path(out_dir) / name)


def _config(model_dir: Path) -> dict:
    return json.loads((Path(model_dir) / "config.json").read_text())


def _module_tensors(state: dict) -> dict[str, dict]:
    """{module name: {local name: tensor}} for the quantized modules of a state dict."""
    modules: dict[str, dict] = {}
    for name, tensor in state.items():
        module, _, local = name.rpartition(".")
        modules.setdefault(module, {})[local] = tensor
    return {m: t for m, t in modules.items()
            if "qweight" in t or "weight_packed" in t or ("weight" in t and "weight_scale" in t)}


def _write_dense(quant_dir: Path, out_dir: Path, state: dict) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    config = _config(quant_dir)
    config.pop("quantization_config", None)
    config["dtype"] = config["torch_dtype"] = "float32"
    (out_dir / "config.json").write_text(json.dumps(config))
    save_file({k: v.contiguous() for k, v in state.items()}, str(out_dir / "model.safetensors"))
    _copy_tokenizer(quant_dir, out_dir)
    return out_dir


def _ct_scheme(config: dict, module: str):
    from compressed_tensors.quantization import QuantizationScheme

    group = next(iter(config["quantization_config"]["config_groups"].values()))
    return QuantizationScheme(**group), group.get("format") or config["quantization_config"]["format"]


def dequantized_copy(quant_dir: Path, out_dir: Path) -> Path:
    """A float32 dense checkpoint holding ``quant_dir``'s weights dequantized by the
    quantizer's own code (compressed-tensors or AutoAWQ)."""
    config = _config(quant_dir)
    method = config["quantization_config"]["quant_method"]
    state = load_file(str(Path(quant_dir) / "model.safetensors"))
    dense = {k: v.float() for k, v in state.items()
             if v.is_floating_point() and not any(s in k for s in (
                 "weight_scale", "input_scale", "weight_zero_point", ".scales", "weight_g_idx"))}
    for module, tensors in _module_tensors(state).items():
        for local in tensors:
            dense.pop(f"{module}.{local}", None)
        if method == "compressed-tensors":
            from compressed_tensors.compressors import BaseCompressor
            scheme, fmt = _ct_scheme(config, module)
            weight = BaseCompressor.load_from_registry(fmt).decompress(dict(tensors), scheme)["weight"]
        elif method == "awq":
            from awq.utils.packing_utils import dequantize_gemm
            quant = config["quantization_config"]
            weight = dequantize_gemm(tensors["qweight"], tensors["qzeros"], tensors["scales"].float(),
                                     quant["bits"], quant["group_size"]).t()
        elif method == "gptq":
            weight = _gptq_dequantize(tensors, config["quantization_config"]).t()
        else:
            raise ValueError(f"no dequantizer for {method}")
        dense[f"{module}.weight"] = weight.float()
    return _write_dense(Path(quant_dir), Path(out_dir), dense)


def gptq_from_compressed_tensors(ct_dir: Path, out_dir: Path, checkpoint_format: str = "gptq",
                                 desc_act: bool = False) -> Path:
    """FALLBACK native-GPTQ writer (module docstring): the pack-quantized integers of a
    llm-compressor GPTQ checkpoint re-packed into the published GPTQ format.

    ``desc_act``: llm-compressor 0.14 no longer writes act-order ``g_idx`` (actorder
    "group" was removed), so an act-order checkpoint is made by relabeling the groups: group
    g becomes ``(g * 7 + 3) % G`` (a fixed permutation) in ``g_idx`` and the rows of scales
    and zeros move with it. The dequantized weight is unchanged, but every row reaches its
    scale and zero through a non-trivial ``g_idx``."""
    from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32

    config = _config(ct_dir)
    group = next(iter(config["quantization_config"]["config_groups"].values()))
    weights = group["weights"]
    bits, sym = weights["num_bits"], weights["symmetric"]
    group_size = weights["group_size"] if weights["strategy"] == "group" else -1
    state = load_file(str(Path(ct_dir) / "model.safetensors"))
    out = {k: v for k, v in state.items() if not any(
        s in k for s in ("weight_packed", "weight_scale", "weight_zero_point", "weight_g_idx",
                         "weight_shape"))}
    offset = 1 << (bits - 1)
    for module, tensors in _module_tensors(state).items():
        shape = tuple(tensors["weight_shape"].tolist())                       # (N, K)
        q = unpack_from_int32(tensors["weight_packed"], bits, torch.Size(shape)).to(torch.int32)
        scales = tensors["weight_scale"]                                      # [N, G]
        if sym:
            zeros = torch.zeros_like(scales, dtype=torch.int32)
        else:
            zeros = unpack_from_int32(tensors["weight_zero_point"], bits,
                                      torch.Size(scales.shape), packed_dim=0).to(torch.int32)
        q_unsigned, z_unsigned = q + offset, zeros + offset                   # [N, K], [N, G]
        stored_zeros = z_unsigned - 1 if checkpoint_format == "gptq" else z_unsigned
        out[f"{module}.qweight"] = _gptq_pack(q_unsigned.t(), bits, dim=0)    # [K / pack, N]
        out[f"{module}.qzeros"] = _gptq_pack(stored_zeros.t() & ((1 << bits) - 1), bits, dim=1)
        out[f"{module}.scales"] = scales.t().to(torch.float16).contiguous()   # [G, N]
        k = shape[1]
        g_idx = torch.arange(k, dtype=torch.int32) // (group_size if group_size > 0 else k)
        if desc_act:
            num_groups = scales.shape[1]
            relabel = (torch.arange(num_groups) * 7 + 3) % num_groups
            assert len(set(relabel.tolist())) == num_groups
            g_idx = relabel[g_idx.long()].to(torch.int32)
            order = torch.argsort(relabel)                 # new group j holds old order[j]
            out[f"{module}.scales"] = out[f"{module}.scales"][order].contiguous()
            zeros_unpacked = stored_zeros.t()[order]                          # [G, N]
            out[f"{module}.qzeros"] = _gptq_pack(zeros_unpacked & ((1 << bits) - 1), bits, dim=1)
        out[f"{module}.g_idx"] = g_idx
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    config["quantization_config"] = {
        "quant_method": "gptq", "bits": bits, "group_size": group_size, "sym": sym,
        "desc_act": desc_act, "checkpoint_format": checkpoint_format}
    config["torch_dtype"] = "float16"
    (Path(out_dir) / "config.json").write_text(json.dumps(config))
    save_file(out, str(Path(out_dir) / "model.safetensors"))
    _copy_tokenizer(ct_dir, out_dir)
    return Path(out_dir)


def _gptq_dequantize(tensors: dict, quant: dict) -> torch.Tensor:
    """The dense [K, N] weight of a native GPTQ module by the published format (AutoGPTQ's
    dequantization: zero + 1 for checkpoint_format gptq), written independently of pagellm."""
    bits = quant["bits"]
    per_word, mask = 32 // bits, (1 << bits) - 1
    qweight = tensors["qweight"].to(torch.int64) & 0xFFFFFFFF                  # [K / pw, N]
    q = torch.stack([(qweight >> (bits * i)) & mask for i in range(per_word)], dim=1)
    q = q.reshape(-1, qweight.shape[1])                                        # [K, N]
    qzeros = tensors["qzeros"].to(torch.int64) & 0xFFFFFFFF                    # [G, N / pw]
    zeros = torch.stack([(qzeros >> (bits * i)) & mask for i in range(per_word)], dim=2)
    zeros = zeros.reshape(qzeros.shape[0], -1)                                 # [G, N]
    if quant.get("checkpoint_format", "gptq") == "gptq":
        zeros = (zeros + 1) & mask
    g_idx = tensors["g_idx"].long()
    return (q - zeros[g_idx]).float() * tensors["scales"].float()[g_idx]


def _gptq_pack(values: torch.Tensor, bits: int, dim: int) -> torch.Tensor:
    """GPTQ packing (AutoGPTQ QuantLinear.pack): 32 // bits unsigned values per int32 along
    ``dim``, the i-th in bits [i * bits, (i + 1) * bits); written independently of
    pagellm's packer."""
    per_word = 32 // bits
    moved = values.to(torch.int64).movedim(dim, 0)
    words = torch.zeros((moved.shape[0] // per_word, *moved.shape[1:]), dtype=torch.int64)
    for i in range(per_word):
        words |= moved[i::per_word] << (bits * i)
    words = torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)
    return words.movedim(0, dim).contiguous()
