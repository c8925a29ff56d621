"""Rotary embedding module: a precomputed cos/sin table applied by token position."""

from __future__ import annotations

import torch
from torch import nn

from pagellm.errors import ClientError
from pagellm.ops.rotary import apply_rotary, llama3_scale_inv_freq, rope_cos_sin_cache, rope_inv_freq
from pagellm.platforms import use_triton_kernels


class RotaryEmbedding(nn.Module):
    """Neox-style rotary embedding over the first ``rotary_dim`` dims of each head.

    The table is a non-persistent buffer: after building a model on the meta device and
    materialising it, call ``init_buffers()`` to fill it.
    """

    def __init__(self, rotary_dim: int, max_position: int, base: float,
                 rope_scaling: dict | None = None):
        super().__init__()
        self.rotary_dim = rotary_dim
        """Rotated dims per head (the head_dim for every model we support)."""
        self.max_position = max_position
        """Positions the table covers: [0, max_position)."""
        self.base = base
        """rope_theta."""
        self.rope_scaling = check_rope_scaling(rope_scaling)
        """None for plain RoPE, or the llama3 parameters."""
        self.register_buffer("cos_sin_cache", self._compute_cache(), persistent=False)

    def _compute_cache(self) -> torch.Tensor:
        """[max_position, rotary_dim] float32 on CPU, whatever the ambient default device."""
        with torch.device("cpu"):
            inv_freq = rope_inv_freq(self.rotary_dim, self.base)
            if self.rope_scaling is not None:
                s = self.rope_scaling
                inv_freq = llama3_scale_inv_freq(inv_freq, s["factor"], s["low_freq_factor"],
                                                 s["high_freq_factor"],
                                                 s["original_max_position_embeddings"])
            return rope_cos_sin_cache(inv_freq, self.max_position)

    def init_buffers(self) -> None:
        """Recompute the table in place on the module's current device."""
        self.cos_sin_cache = self._compute_cache().to(self.cos_sin_cache.device)

    def forward(self, positions: torch.Tensor, query: torch.Tensor, key: torch.Tensor):
        """positions: [T]; query: [T, num_heads, head_dim]; key: [T, num_kv_heads, head_dim].
        Returns rotated (query, key): on CUDA the Triton kernel rotates the inputs in place
        (one launch), elsewhere the torch twin returns new tensors."""
        if use_triton_kernels(query) and query.stride(-1) == 1 and key.stride(-1) == 1:
            from pagellm.ops.triton.rotary import apply_rotary_triton_
            return apply_rotary_triton_(query, key, positions, self.cos_sin_cache)
        return apply_rotary(query, key, positions, self.cos_sin_cache)


_LLAMA3_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")


def check_rope_scaling(rope_scaling: dict | None) -> dict | None:
    """Normalise an HF ``rope_scaling`` / ``rope_parameters`` dict: None for plain RoPE, the
    llama3 parameters for llama3; anything else is a ClientError."""
    if not rope_scaling:
        return None
    rope_type = rope_scaling.get("rope_type", rope_scaling.get("type"))
    if rope_type in (None, "default"):
        return None
    if rope_type != "llama3":
        raise ClientError(f"rope_scaling type {rope_type!r} is not supported; "
                          "supported: default, llama3", param="model")
    missing = [k for k in _LLAMA3_KEYS if k not in rope_scaling]
    if missing:
        raise ClientError(f"llama3 rope_scaling lacks {missing}", param="model")
    return {"rope_type": "llama3", **{k: float(rope_scaling[k]) for k in _LLAMA3_KEYS}}


def rope_settings(hf_config) -> tuple[float, dict | None]:
    """``(rope_theta, rope_scaling)`` from an HF config, whichever transformers version wrote
    it (v5 keeps both in ``rope_parameters``; v4 has ``rope_theta`` and ``rope_scaling``)."""
    params = getattr(hf_config, "rope_parameters", None) or {}
    scaling = getattr(hf_config, "rope_scaling", None) or params
    theta = params.get("rope_theta", getattr(hf_config, "rope_theta", 10000.0))
    return float(theta), check_rope_scaling(scaling)
