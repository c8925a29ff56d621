"""What to load and how to run it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

QUANTIZATION_NAMES = ("fp8", "awq", "awq_marlin", "gptq", "gptq_marlin", "compressed-tensors",
                      "gguf")
"""``quantization`` values (vLLM's names; ``pagellm.layers.quantization.QUANTIZATION_METHODS``
plus gguf), checked when the config is built: a bad one fails before any process starts."""


def is_gguf_path(model_path: str | Path) -> bool:
    """Whether a model argument names a .gguf file (the GGUF loader's, and quantization's
    ``gguf``, checkpoints)."""
    return str(model_path).endswith(".gguf")


@dataclass(frozen=True)
class ModelConfig:
    model: str = "default"
    """A Hugging Face model directory, a .gguf file, or 'default' (SmolLM2-135M-Instruct, GGUF Q4_1)."""
    tokenizer: str | None = None
    """Tokenizer directory or .gguf file; defaults to the model."""
    dtype: str = "auto"
    """Weight and activation dtype: auto, float32, bfloat16, float16 (auto: float32 on CPU,
    the checkpoint's dtype or bfloat16 on CUDA)."""
    max_model_len: int | None = None
    """Longest prompt + output in tokens; defaults to the model's max_position_embeddings."""
    seed: int = 0
    """Seed for random weights (load_format=dummy) and for unseeded sampling."""
    served_model_name: str | None = None
    """Name reported by the API; defaults to the model argument."""
    max_logprobs: int = 20
    """Largest logprobs / prompt_logprobs a request may ask for."""
    enforce_eager: bool = False
    """Never use CUDA graphs (no effect on CPU)."""
    quantization: str | None = None
    """Weight quantization of the linear layers: fp8, awq, awq_marlin, gptq, gptq_marlin,
    compressed-tensors, gguf. None follows the checkpoint's quantization_config; a name must
    match the checkpoint's method (the *_marlin names run the same fastest kernel; gguf only a
    .gguf model, which keeps its blocks); fp8 on an unquantized checkpoint (or
    load_format=dummy) quantizes the weights at load."""
    trust_remote_code: bool = False
    """Accepted for compatibility; pagellm never runs code from a model directory."""
    tokenizer_pool_size: int = 2
    """Threads that tokenize prompts and render chat templates off the server's event loop
    (server only; at least 1: nothing is tokenized on the event loop)."""
    skip_tokenizer_init: bool = False
    """Load no tokenizer: prompts must be token ids and SamplingParams.detokenize must be False
    (EOS ids come from config.json). For random-weight benchmarks on a config-only directory."""

    def __post_init__(self) -> None:
        from pagellm.config.checks import check_choice, check_range

        check_choice("dtype", self.dtype, ("auto", "float32", "bfloat16", "float16", "half", "float"))
        if self.max_model_len is not None:
            check_range("max_model_len", self.max_model_len, 1)
        check_range("max_logprobs", self.max_logprobs, 0)
        check_range("tokenizer_pool_size", self.tokenizer_pool_size, 1)
        if self.quantization is not None:
            check_choice("quantization", self.quantization, QUANTIZATION_NAMES)
