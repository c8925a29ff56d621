"""Parallelism and devices (only one device per engine is built yet)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ParallelConfig:
    tensor_parallel_size: int = 1
    """Shard every layer across this many GPUs (not supported yet beyond 1)."""
    pipeline_parallel_size: int = 1
    """Split the layers across this many stages (not supported yet beyond 1)."""
    data_parallel_size: int = 1
    """Independent engine replicas behind one server (not supported yet beyond 1)."""
    enable_expert_parallel: bool = False
    """Shard MoE experts instead of tensor-parallel slicing (not supported yet)."""
    distributed_executor_backend: str | None = None
    """uni, mp or ray; only the in-process executor exists yet."""
    device: str = "auto"
    """auto (CUDA when available, else CPU), cpu, or cuda."""

    def __post_init__(self) -> None:
        from pagellm.config.checks import check_choice, check_range, not_supported_yet

        for name in ("tensor_parallel_size", "pipeline_parallel_size", "data_parallel_size"):
            value = getattr(self, name)
            check_range(name, value, 1)
            if value != 1:
                not_supported_yet(name, value)
        if self.enable_expert_parallel:
            not_supported_yet("enable_expert_parallel", True)
        check_choice("distributed_executor_backend", self.distributed_executor_backend,
                     (None, "uni"))
        check_choice("device", self.device, ("auto", "cpu", "cuda"))
