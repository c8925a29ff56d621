"""Features of later issues: the options exist and are rejected until they are built."""

from __future__ import annotations

from dataclasses import dataclass

from pagellm.config.compilation import CompilationConfig  # noqa: F401  (re-exported)
from pagellm.config.speculative import SpeculativeConfig  # noqa: F401  (re-exported)
from pagellm.errors import ClientError


@dataclass(frozen=True)
class LoRAConfig:
    enable_lora: bool = False
    """Serve LoRA adapters (PEFT format) next to the base model, mixed in one batch."""
    max_loras: int = 1
    """Distinct adapters in one batch (device slots per LoRA layer)."""
    max_lora_rank: int = 16
    """Largest adapter rank; an adapter of a higher rank is refused at load (400)."""
    max_cpu_loras: int | None = None
    """Adapters cached in host memory (LRU); None = max_loras. At least max_loras."""
    lora_dtype: str = "auto"
    """Dtype of the adapter weights on the device: auto (the model's dtype), float16,
    bfloat16 or float32."""
    fully_sharded_loras: bool = False
    """Under tensor parallelism also shard the adapter factor that the default keeps whole:
    the rank dimension of column-parallel A and the output rows of row-parallel B (vLLM's
    option, S-LoRA's scheme; adds one small all-gather or all-reduce per LoRA layer, saves
    slot memory, helps at high rank or many adapters). max_lora_rank must be divisible by
    tensor_parallel_size."""

    def __post_init__(self) -> None:
        from pagellm.config.checks import check_choice, check_range

        check_range("max_loras", self.max_loras, 1, 256)
        check_choice("max_lora_rank", self.max_lora_rank, (1, 8, 16, 32, 64, 128, 256, 320, 512))
        if self.max_cpu_loras is not None:
            check_range("max_cpu_loras", self.max_cpu_loras, self.max_loras, 4096)
        check_choice("lora_dtype", self.lora_dtype, ("auto", "float16", "bfloat16", "float32"))

    def check_tensor_parallel(self, tensor_parallel_size: int) -> None:
        """ClientError when fully sharded LoRA cannot split max_lora_rank over the ranks."""
        if (self.enable_lora and self.fully_sharded_loras
                and self.max_lora_rank % tensor_parallel_size != 0):
            raise ClientError(
                f"fully_sharded_loras splits max_lora_rank={self.max_lora_rank} over "
                f"tensor_parallel_size={tensor_parallel_size} ranks, but it is not divisible; "
                "raise max_lora_rank to a multiple of tensor_parallel_size or drop "
                "fully_sharded_loras", param="max_lora_rank")

    @property
    def cpu_loras(self) -> int:
        """Adapters kept in host memory."""
        return self.max_cpu_loras if self.max_cpu_loras is not None else self.max_loras
