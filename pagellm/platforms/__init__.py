"""Device choices live here: which device, which dtype, how much memory, which backends.

Nothing here touches CUDA at import time.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pagellm.errors import ClientError

_DTYPES = {"float32": torch.float32, "float": torch.float32, "bfloat16": torch.bfloat16,
           "float16": torch.float16, "half": torch.float16}


@dataclass(frozen=True)
class Platform:
    name: str                 # "cpu" | "cuda"
    device: torch.device

    @property
    def is_cuda(self) -> bool:
        return self.name == "cuda"

    def resolve_dtype(self, requested: str, checkpoint_dtype: torch.dtype | None) -> torch.dtype:
        """auto: float32 on CPU (no fast bf16 on most CPUs); the checkpoint's half dtype or
        bfloat16 on CUDA."""
        if requested != "auto":
            return _DTYPES[requested]
        if not self.is_cuda:
            return torch.float32
        if checkpoint_dtype in (torch.float16, torch.bfloat16):
            return checkpoint_dtype
        return torch.bfloat16

    def synchronize(self) -> None:
        if self.is_cuda:
            torch.cuda.synchronize(self.device)

    def pin_memory(self) -> bool:
        return self.is_cuda

    def dist_backend(self) -> str:
        return "nccl" if self.is_cuda else "gloo"


def current_platform(device: str = "auto") -> Platform:
    """The platform for an engine's ``device`` argument."""
    if device == "cuda" or (device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ClientError("device='cuda' was asked for but no CUDA device is visible; "
                              "use device='cpu' or 'auto'", param="device")
        return Platform("cuda", torch.device("cuda", torch.cuda.current_device()))
    return Platform("cpu", torch.device("cpu"))


_TRITON_OK: bool | None = None


def use_triton_kernels(tensor: torch.Tensor) -> bool:
    """Run a layer's Triton kernel for this tensor: on CUDA when triton imports, unless
    ``PAGELLM_TRITON_KERNELS=0`` (then the torch twins run everywhere)."""
    global _TRITON_OK
    if not tensor.is_cuda:
        return False
    if _TRITON_OK is None:
        import importlib.util
        import os
        _TRITON_OK = (os.environ.get("PAGELLM_TRITON_KERNELS", "1") != "0"
                      and importlib.util.find_spec("triton") is not None)
    return _TRITON_OK
