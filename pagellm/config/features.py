"""Features of later issues: the options exist and are rejected until they are built."""

from __future__ import annotations

from dataclasses import dataclass

from pagellm.config.speculative import SpeculativeConfig  # noqa: F401  (re-exported)


@dataclass(frozen=True)
class LoRAConfig:
    enable_lora: bool = False
    """Serve LoRA adapters (not supported yet)."""
    max_loras: int = 1
    """Adapters in one batch."""
    max_lora_rank: int = 16
    """Largest adapter rank."""

    def __post_init__(self) -> None:
        from pagellm.config.checks import not_supported_yet

        if self.enable_lora:
            not_supported_yet("enable_lora", True)


@dataclass(frozen=True)
class CompilationConfig:
    compilation_config: dict | None = None
    """CUDA graph settings, e.g. {"cudagraph_capture_sizes": [1, 2, 4, 8]} (CUDA only)."""
