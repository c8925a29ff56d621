"""How weights are read."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LoadConfig:
    load_format: str = "auto"
    """auto (by what the path holds), safetensors, gguf, or dummy (random weights from config.json)."""
    download_dir: str | None = None
    """Cache directory for the default model (default $PAGELLM_CACHE or ~/.cache/pagellm)."""

    def __post_init__(self) -> None:
        from pagellm.config.checks import check_choice

        check_choice("load_format", self.load_format, ("auto", "safetensors", "gguf", "dummy"))
