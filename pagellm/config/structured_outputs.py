"""Structured outputs (constrained decoding): which grammar engine compiles the constraints."""

from __future__ import annotations

from dataclasses import dataclass

STRUCTURED_OUTPUTS_BACKENDS = ("auto", "xgrammar", "guidance", "outlines")


@dataclass(frozen=True)
class StructuredOutputsConfig:
    structured_outputs_backend: str = "auto"
    """Grammar engine for response_format / structured_outputs / guided_* requests: auto,
    xgrammar, guidance, outlines (vLLM's names; only xgrammar is built in, and auto picks it;
    guidance and outlines are refused at start-up)."""
    disable_any_whitespace: bool = False
    """JSON constraints allow no whitespace between JSON tokens, for every request (vLLM's
    StructuredOutputsConfig.disable_any_whitespace): small models stop looping on spaces and
    newlines."""

    def __post_init__(self) -> None:
        from pagellm.config.checks import check_choice, not_supported_yet

        check_choice("structured_outputs_backend", self.structured_outputs_backend,
                     STRUCTURED_OUTPUTS_BACKENDS)
        if self.structured_outputs_backend in ("guidance", "outlines"):
            not_supported_yet("structured_outputs_backend", self.structured_outputs_backend,
                              hint=" (xgrammar; llguidance and outlines-core are not installed)")
