"""Weight quantization of the linear layers (vLLM's names and checkpoint formats).

``QUANTIZATION_METHODS`` maps each ``quantization=`` name to its config class;
``get_quantization_config`` reads the checkpoint's ``quantization_config`` (config.json, or
``quantize_config.json`` of older GPTQ checkpoints) and reconciles it with the engine
argument: the argument confirms or overrides the method name within one family (``gptq`` /
``gptq_marlin``, ``awq`` / ``awq_marlin``: the ``*_marlin`` names run pagellm's fastest
kernel, the Triton W4A16 GEMM); ``fp8`` on an unquantized checkpoint quantizes it at load.
Anything else (a different family, an unknown name, an unsupported scheme) is a ClientError
listing what is supported. The returned config hands every linear layer its method
(``QuantizationConfig.get_quant_method``).
"""

from __future__ import annotations

import json
from pathlib import Path

from pagellm.config.model import is_gguf_path
from pagellm.errors import ClientError
from pagellm.layers.quantization.awq import AWQConfig
from pagellm.layers.quantization.base_config import QuantizationConfig
from pagellm.layers.quantization.compressed_tensors import CompressedTensorsConfig
from pagellm.layers.quantization.fp8 import Fp8Config
from pagellm.layers.quantization.gptq import GPTQConfig

QUANTIZATION_METHODS: dict[str, type[QuantizationConfig]] = {
    "fp8": Fp8Config,
    "awq": AWQConfig,
    "awq_marlin": AWQConfig,
    "gptq": GPTQConfig,
    "gptq_marlin": GPTQConfig,
    "compressed-tensors": CompressedTensorsConfig,
}
"""``quantization=`` name -> config class (other helpers register theirs, e.g. gguf)."""

GGUF = "gguf"
"""vLLM's name for a .gguf checkpoint's own quantization: accepted (and implied) for .gguf
models, whose blocks the GGUF loader keeps quantized; an error for anything else."""

ONLINE_METHODS = ("fp8",)
"""Methods that quantize an unquantized checkpoint at load."""


def method_family(name: str) -> str:
    """The checkpoint ``quant_method`` a name reads: awq_marlin -> awq, gptq_marlin -> gptq."""
    return name.removesuffix("_marlin")


def checkpoint_quant_config(model_path: str, hf_config) -> dict | None:
    """The checkpoint's quantization settings: config.json's ``quantization_config``, else a
    ``quantize_config.json`` beside it (older GPTQ checkpoints: quant_method gptq), else
    None."""
    config = getattr(hf_config, "quantization_config", None)
    if config is not None:
        config = config if isinstance(config, dict) else config.to_dict()
        return {**config, "quant_method": str(config.get("quant_method", "")).lower()}
    path = Path(model_path)
    legacy = path / "quantize_config.json" if path.is_dir() else None
    if legacy is not None and legacy.is_file():
        return {"quant_method": "gptq", **json.loads(legacy.read_text())}
    return None


def supported_text() -> str:
    return ", ".join([*QUANTIZATION_METHODS, GGUF])


def get_quantization_config(model_path: str, hf_config,
                            quantization: str | None) -> QuantizationConfig | None:
    """The quantization the model loads with, or None for dense weights. ``quantization``
    (the engine argument) may be None (follow the checkpoint), a name of the checkpoint's
    family, or ``fp8`` for an unquantized checkpoint. ClientError (param quantization) for
    an unknown name, a mismatch with the checkpoint, or an unsupported scheme."""
    if is_gguf_path(model_path):        # its blocks stay as they are (the GGUF loader's)
        if quantization not in (None, GGUF):
            raise ClientError(f"quantization={quantization!r} does not apply to a GGUF "
                              f"checkpoint ({model_path}), which keeps its own quantized "
                              f"blocks; leave quantization unset or use {GGUF!r}",
                              param="quantization")
        return None
    if quantization == GGUF:
        raise ClientError(f"quantization='gguf' needs a .gguf model file, got {model_path}",
                          param="quantization")
    if quantization is not None and quantization not in QUANTIZATION_METHODS:
        raise ClientError(f"quantization={quantization!r} is not supported; supported: "
                          f"{supported_text()}", param="quantization")
    checkpoint = checkpoint_quant_config(model_path, hf_config)
    if checkpoint is None:
        if quantization is None:
            return None
        if quantization in ONLINE_METHODS:
            return QUANTIZATION_METHODS[quantization]()
        raise ClientError(f"quantization={quantization!r} needs a checkpoint quantized with "
                          f"{method_family(quantization)} (a quantization_config in its "
                          f"config.json), but {model_path} has none; an unquantized checkpoint "
                          f"can be quantized at load with: {', '.join(ONLINE_METHODS)}",
                          param="quantization")
    method = checkpoint["quant_method"]
    if method not in QUANTIZATION_METHODS:
        raise ClientError(f"the checkpoint's quantization method {method!r} is not supported; "
                          f"supported: {supported_text()}", param="quantization")
    if quantization is not None and method_family(quantization) != method_family(method):
        raise ClientError(f"quantization={quantization!r} does not match the checkpoint's "
                          f"quantization method {method!r}; leave quantization unset or use "
                          f"{', '.join(n for n in QUANTIZATION_METHODS if method_family(n) == method_family(method))}",
                          param="quantization")
    return QUANTIZATION_METHODS[quantization or method].from_config(checkpoint)


__all__ = ["QUANTIZATION_METHODS", "QuantizationConfig", "get_quantization_config",
           "checkpoint_quant_config"]
